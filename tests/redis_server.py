"""A real Redis for the tests: our own ``redis-server`` on a free loopback port.

One server per test session, started on first use and stopped at the end; it
keeps nothing on disk. Tests share it and keep apart by key prefix. The
fixture is a plugin of ``tests/conftest.py``: tests just name it.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

#: seconds the server gets to answer PING after it starts
START_TIMEOUT_S = 10.0


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _pong(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def _start(
    binary: str, workdir: Path, port: int | None = None
) -> tuple[subprocess.Popen[bytes], int]:
    """Start a server on ``port``, or on a free one (another process may take it first, so a few
    are tried)."""
    log = workdir / "redis.log"
    for _ in range(5 if port is None else 1):
        chosen = port or _free_port()
        proc = subprocess.Popen(
            [
                binary,
                "--port",
                str(chosen),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(workdir),
                "--logfile",
                str(log),
                "--daemonize",
                "no",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline and proc.poll() is None:
            if _pong(chosen):
                return proc, chosen
            time.sleep(0.05)
        _stop(proc)
    text = log.read_text(errors="replace")[-2000:] if log.exists() else "(no log)"
    pytest.fail(f"redis-server did not start:\n{text}", pytrace=False)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``redis://127.0.0.1:<port>/0`` of a redis-server that lives for the test session."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail(
            "redis-server is not installed: `make test` installs it "
            "(Debian package redis-server: apt-get install -y redis-server)",
            pytrace=False,
        )
    proc, port = _start(binary, tmp_path_factory.mktemp("redis"))
    try:
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        _stop(proc)


class RedisServer:
    """A redis-server of one test's own, which the test may stop and start again on the same port."""

    def __init__(self, workdir: Path) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail("redis-server is not installed: `make test` installs it", pytrace=False)
        workdir.mkdir(parents=True, exist_ok=True)
        self.binary, self.workdir = binary, workdir
        self.proc, self.port = _start(binary, workdir)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def stop(self) -> None:
        _stop(self.proc)

    def start(self) -> None:
        self.proc, _ = _start(self.binary, self.workdir, self.port)

"""The ``vcounter`` command in child processes: the operator's CLI, and a real ``vcounter serve``
for tests that kill it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp

from devservices import free_port

from .helpers import REPO, eventually


def vcounter_command() -> list[str]:
    """The installed ``vcounter`` console script (``python -m server.cli`` without one)."""
    exe = Path(sys.executable).with_name("vcounter")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "server.cli"]


def run_vcounter(
    *args: str,
    data_dir: Path | None = None,
    env: dict[str, str] | None = None,
    stdin: str | None = None,
    timeout: float = 120,
) -> subprocess.CompletedProcess[str]:
    """Run ``vcounter *args`` (``--data-dir`` appended if given) as an operator's shell would."""
    command = [
        *vcounter_command(),
        *args,
        *(["--data-dir", str(data_dir)] if data_dir is not None else []),
    ]
    return subprocess.run(
        command,
        capture_output=True,
        text=True,
        input=stdin,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        cwd=REPO,
    )


def server_cli(config: Any, *args: str) -> subprocess.CompletedProcess[str]:
    """``vcounter *args`` on a test server's data directory and keys (its ``Config``)."""
    return run_vcounter(
        *args,
        data_dir=config.data_dir,
        env={
            "VCOUNTER_MASTER_KEY_FILE": str(config.master_key_file),
            "VCOUNTER_SIGNING_KEY_FILE": str(config.signing_key_file),
        },
    )


class ServerProcess:
    def __init__(self, data_dir: Path, *, env: dict[str, str] | None = None) -> None:
        self.data_dir = data_dir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {
            **os.environ,
            "VCOUNTER_NODE_ID": "crash-test-node",
            "VCOUNTER_IDENTITY": "0",
            **(env or {}),
        }
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = data_dir.parent / f"server-{self.port}.log"

    def env_path(self, name: str) -> Path:
        """A key file configured through the environment (master.key, signing.pem)."""
        var = {
            "master.key": "VCOUNTER_MASTER_KEY_FILE",
            "signing.pem": "VCOUNTER_SIGNING_KEY_FILE",
        }[name]
        return Path(self.env[var])

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return run_vcounter(*args, data_dir=self.data_dir, env=self.env, timeout=60)

    def spawn(self) -> None:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [
                    *vcounter_command(),
                    "serve",
                    "--no-tls",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(self.port),
                    "--data-dir",
                    str(self.data_dir),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
                cwd=REPO,
            )

    async def start(self) -> None:
        """Spawn the server and wait until its ``/healthz`` answers."""
        self.spawn()
        proc = self.proc
        assert proc is not None
        async with aiohttp.ClientSession() as http:

            async def healthy() -> bool:
                if proc.poll() is not None:
                    raise RuntimeError(f"server exited: {self.log.read_text()[-2000:]}")
                try:
                    async with http.get(f"{self.url}/healthz") as r:
                        return r.status == 200
                except aiohttp.ClientError:
                    return False

            await eventually(
                healthy,
                timeout=30,
                interval=0.2,
                message=lambda: f"server did not start: {self.log.read_text()[-2000:]}",
            )

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

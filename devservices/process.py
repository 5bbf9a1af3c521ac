"""What every service's child process needs: a free loopback port, a start, a wait, a stop."""

from __future__ import annotations

import logging
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Self

logger = logging.getLogger(__name__)


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now; another process may take it before ours binds it, so
    every service tries a few."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def spawn(
    args: Sequence[str], *, log: Path | None = None, cwd: Path | None = None
) -> subprocess.Popen[bytes]:
    """``args`` in a session of its own (a Ctrl-C in the terminal does not reach it), with its
    output appended to ``log`` (or dropped)."""
    if log is None:
        return subprocess.Popen(
            list(args),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd=cwd,
            start_new_session=True,
        )
    with log.open("ab") as out:  # the child keeps its own descriptor
        return subprocess.Popen(
            list(args),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            start_new_session=True,
        )


def wait_until(
    ready: Callable[[], bool],
    proc: subprocess.Popen[bytes],
    timeout: float,
    interval: float = 0.05,
) -> bool:
    """Poll ``ready`` until it holds (True), or ``proc`` exits or ``timeout`` passes (False)."""
    deadline = time.monotonic() + timeout
    while proc.poll() is None:
        if ready():
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)
    return False


def stop_process(
    proc: subprocess.Popen[bytes] | None, what: str = "process", timeout: float = 10.0
) -> None:
    """SIGTERM, then SIGKILL after ``timeout``; nothing when it is not running."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        logger.warning("%s %d ignored SIGTERM: killing it", what, proc.pid)
        proc.kill()
        proc.wait(timeout)


def log_tail(path: Path, chars: int = 2000) -> str:
    """The end of a log file, or ``(no log)``."""
    return path.read_text(errors="replace")[-chars:] if path.exists() else "(no log)"


class Service:
    """A service started by :meth:`start` and stopped by :meth:`stop`; ``with`` does both."""

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

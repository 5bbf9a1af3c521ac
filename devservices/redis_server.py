"""A throwaway ``redis-server`` (Debian's ``redis-server`` package) on a free loopback port.

It keeps nothing on disk (no snapshots, no append-only file); its log is in the directory it is
given. Stopped, it can be started again on the same port, so that clients configured with its URL
find it back (a test of Redis going away and returning).
"""

from __future__ import annotations

import functools
import logging
import shutil
import socket
import subprocess
from pathlib import Path

from .exceptions import NotInstalled, ServiceError
from .process import Service, free_port, log_tail, spawn, stop_process, wait_until

logger = logging.getLogger(__name__)

#: seconds the server gets to answer PING after it starts
START_TIMEOUT_S = 10.0


def redis_binary() -> str | None:
    """``redis-server`` on the ``PATH`` or where Debian puts it, or None."""
    found = shutil.which("redis-server")
    if found:
        return found
    return "/usr/bin/redis-server" if Path("/usr/bin/redis-server").is_file() else None


def _pong(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer(Service):
    """``redis-server`` on ``127.0.0.1:port``, its files (the log only) in ``workdir``."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.log = workdir / "redis.log"
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        """Start on a free port (a few are tried: another process may take one first), or, once
        started before, on the same port again."""
        binary = redis_binary()
        if binary is None:
            raise NotInstalled.debian("redis-server", "redis-server")
        self.workdir.mkdir(parents=True, exist_ok=True)
        again = self.port != 0
        for _ in range(1 if again else 5):
            port = self.port if again else free_port()
            self.proc = spawn(
                [
                    binary,
                    "--port",
                    str(port),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--dir",
                    str(self.workdir),
                    "--logfile",
                    str(self.log),
                    "--daemonize",
                    "no",
                ]
            )
            if wait_until(functools.partial(_pong, port), self.proc, START_TIMEOUT_S):
                self.port = port
                logger.info("redis-server pid %d on 127.0.0.1:%d", self.proc.pid, port)
                return
            self.stop()
        raise ServiceError(f"redis-server did not start:\n{log_tail(self.log)}")

    def stop(self) -> None:
        """Stop the server (what it held is lost); safe to call twice."""
        proc, self.proc = self.proc, None
        stop_process(proc, "redis-server")

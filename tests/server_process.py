"""A real ``vcounter serve`` in a child process, for tests that kill it."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import aiohttp

REPO = Path(__file__).resolve().parent.parent


def vcounter_command() -> list[str]:
    exe = Path(sys.executable).with_name("vcounter")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "server.cli"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    def __init__(self, data_dir: Path, *, env: dict[str, str] | None = None) -> None:
        self.data_dir = data_dir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {**os.environ, "VCOUNTER_NODE_ID": "crash-test-node", "VCOUNTER_IDENTITY": "0",
                    **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = data_dir.parent / f"server-{self.port}.log"

    def env_path(self, name: str) -> Path:
        """A key file configured through the environment (master.key, signing.pem)."""
        var = {"master.key": "VCOUNTER_MASTER_KEY_FILE", "signing.pem": "VCOUNTER_SIGNING_KEY_FILE"}[name]
        return Path(self.env[var])

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*vcounter_command(), *args, "--data-dir", str(self.data_dir)],
                              capture_output=True, text=True, timeout=60, env=self.env, cwd=REPO)

    def spawn(self) -> None:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [*vcounter_command(), "serve", "--no-tls", "--host", "127.0.0.1", "--port",
                 str(self.port), "--data-dir", str(self.data_dir)],
                stdout=log, stderr=subprocess.STDOUT, env=self.env, cwd=REPO)

    async def start(self) -> None:
        self.spawn()
        assert self.proc is not None
        deadline = time.monotonic() + 30
        async with aiohttp.ClientSession() as http:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"server exited: {self.log.read_text()[-2000:]}")
                try:
                    async with http.get(f"{self.url}/healthz") as r:
                        if r.status == 200:
                            return
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.2)
        raise TimeoutError(f"server did not start: {self.log.read_text()[-2000:]}")

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

"""A throwaway S3-compatible server: moto's server mode (``moto[server]``, PyPI) on a free
loopback port.

It keeps its buckets and objects in memory (nothing on disk but its log); moto takes any
credentials: :data:`AWS_ENV` are the ones its clients are given.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

from .exceptions import NotInstalled, ServiceError
from .process import Service, free_port, log_tail, spawn, stop_process, wait_until

logger = logging.getLogger(__name__)

#: seconds the server gets to answer after it starts (moto imports a lot)
START_TIMEOUT_S = 30.0
#: what boto3 reads from the environment, for a client of this server (any value will do)
AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def moto_installed() -> bool:
    return importlib.util.find_spec("moto") is not None


def _answers(endpoint: str) -> bool:
    try:
        with urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=1) as r:
            return bool(r.status == 200)
    except OSError:
        return False


class S3Server(Service):
    """``python -m moto.server`` on ``127.0.0.1:port``, its log in ``workdir``."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.log = workdir / "moto.log"
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        """The S3 API's URL (``VCOUNTER_S3_ENDPOINT_URL``, boto3's ``endpoint_url``)."""
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        """Start on a free port (a few are tried: another process may take one first)."""
        if not moto_installed():
            raise NotInstalled(
                "moto", "Python package moto[server], in the test extras (`make install`)"
            )
        self.workdir.mkdir(parents=True, exist_ok=True)
        for _ in range(3):
            self.port = free_port()
            self.proc = spawn(
                [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                log=self.log,
            )
            if wait_until(
                functools.partial(_answers, self.endpoint), self.proc, START_TIMEOUT_S, 0.1
            ):
                logger.info("moto S3 server pid %d on %s", self.proc.pid, self.endpoint)
                return
            self.stop()
        raise ServiceError(f"moto server did not start:\n{log_tail(self.log)}")

    def stop(self) -> None:
        """Stop the server (everything it held is lost); safe to call twice."""
        proc, self.proc = self.proc, None
        stop_process(proc, "moto server")

    def client(self) -> Any:
        """A boto3 S3 client of this server."""
        import boto3

        return boto3.session.Session(
            aws_access_key_id=AWS_ENV["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=AWS_ENV["AWS_SECRET_ACCESS_KEY"],
            region_name=AWS_ENV["AWS_DEFAULT_REGION"],
        ).client("s3", endpoint_url=self.endpoint)

    def create_bucket(self, name: str) -> None:
        self.client().create_bucket(Bucket=name)

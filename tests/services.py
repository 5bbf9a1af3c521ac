"""Real services for tests: a throwaway PostgreSQL cluster (Debian's ``postgresql`` package).

The cluster is made once per test session with ``initdb`` in a temporary
directory, listens on a free loopback port only, and is stopped and removed at
the end. It has nothing to do with a system cluster the Debian package may
have started on port 5432. Each test gets a database of its own
(:func:`postgres_url`). ``initdb`` refuses to run as root: as root, the
cluster runs as the ``postgres`` user.

The cluster's TimeZone is Asia/Shanghai, a bank's local time, so that a
timestamp stored or read in the server's local time instead of UTC shows.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest


def _pg_bin() -> Path:
    """``$VCOUNTER_PG_BIN``, else the newest Debian PostgreSQL (15 on Debian 12)."""
    if "VCOUNTER_PG_BIN" in os.environ:
        return Path(os.environ["VCOUNTER_PG_BIN"])
    found = [
        p.parent
        for p in Path("/usr/lib/postgresql").glob("*/bin/initdb")
        if p.parent.parent.name.isdigit()
    ]
    return (
        max(found, key=lambda b: int(b.parent.name))
        if found
        else Path("/usr/lib/postgresql/15/bin")
    )


PG_BIN = _pg_bin()
SUPERUSER = "postgres"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PostgresCluster:
    """One ``initdb`` cluster on 127.0.0.1:``port``, password authentication over TCP."""

    def __init__(self) -> None:
        for tool in ("initdb", "pg_ctl"):
            if not (PG_BIN / tool).is_file():
                pytest.fail(
                    f"PostgreSQL server binaries not found ({PG_BIN / tool}): `make test` "
                    "installs them (Debian package postgresql), or apt-get install postgresql",
                    pytrace=False,
                )
        self.root = Path(tempfile.mkdtemp(prefix="vcounter-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self.password = secrets.token_urlsafe(12)
        self.port = 0
        self._as_owner: list[str] = []
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres", "postgres")
            self._as_owner = ["runuser", "-u", "postgres", "--"]

    def _run(self, *args: str) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [*self._as_owner, *args], capture_output=True, text=True, timeout=120, cwd=self.root
        )
        if done.returncode != 0:
            log = self.log.read_text()[-2000:] if self.log.exists() else ""
            raise RuntimeError(
                f"{' '.join(args[:2])} failed ({done.returncode}): "
                f"{done.stdout[-2000:]}{done.stderr[-2000:]}{log}"
            )
        return done

    def start(self) -> None:
        pwfile = self.root / "pw"
        pwfile.write_text(self.password + "\n")
        if self._as_owner:
            shutil.chown(pwfile, "postgres", "postgres")
        self._run(
            str(PG_BIN / "initdb"),
            "-D",
            str(self.data),
            "-U",
            SUPERUSER,
            f"--pwfile={pwfile}",
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
            "-E",
            "UTF8",
            "--no-sync",
        )
        pwfile.unlink()
        for attempt in range(3):  # a free port can be taken between choosing and binding it
            self.port = _free_port()
            options = (
                f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.root} -c fsync=off "
                "-c synchronous_commit=off -c full_page_writes=off -c max_connections=100 "
                "-c timezone=Asia/Shanghai"
            )
            try:
                self._run(
                    str(PG_BIN / "pg_ctl"),
                    "-D",
                    str(self.data),
                    "-l",
                    str(self.log),
                    "-w",
                    "-t",
                    "60",
                    "-o",
                    options,
                    "start",
                )
                return
            except RuntimeError:
                if attempt == 2:
                    raise
                time.sleep(0.5)

    def stop(self) -> None:
        if self.data.exists():
            subprocess.run(
                [
                    *self._as_owner,
                    str(PG_BIN / "pg_ctl"),
                    "-D",
                    str(self.data),
                    "-m",
                    "immediate",
                    "-w",
                    "stop",
                ],
                capture_output=True,
                timeout=60,
                cwd=self.root,
            )
        shutil.rmtree(self.root, ignore_errors=True)

    def url(self, database: str = "postgres") -> str:
        """A plain ``postgresql://`` URL, as an operator writes DATABASE_URL."""
        return f"postgresql://{SUPERUSER}:{self.password}@127.0.0.1:{self.port}/{database}"

    def _admin(self, sql: str) -> None:
        import psycopg

        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(sql)

    def create_database(self, name: str) -> str:
        self._admin(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def drop_database(self, name: str) -> None:
        self._admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[PostgresCluster]:
    cluster = PostgresCluster()
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def postgres_url(postgres_cluster: PostgresCluster) -> Iterator[str]:
    """A new, empty database on the throwaway cluster for one test (dropped after it)."""
    name = f"t_{secrets.token_hex(6)}"
    yield postgres_cluster.create_database(name)
    postgres_cluster.drop_database(name)

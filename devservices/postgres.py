"""A throwaway PostgreSQL cluster (Debian's ``postgresql`` package) on a free loopback port.

``initdb`` makes it in a temporary directory, ``pg_ctl`` runs it on 127.0.0.1 only, with password
authentication over TCP and durability off (``fsync``, ``synchronous_commit``: it is thrown
away); :meth:`PostgresCluster.stop` stops it and deletes the directory. It has nothing to do with
a system cluster the package may have started on port 5432. ``initdb`` refuses to run as root: as
root, the cluster runs as the ``postgres`` user (the directory is then not under a private
temporary directory of ours, which that user could not reach).
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import LiteralString

from .exceptions import NotInstalled, ServiceError
from .process import Service, free_port, log_tail

logger = logging.getLogger(__name__)

SUPERUSER = "postgres"


def pg_bin() -> Path | None:
    """``$VCOUNTER_PG_BIN``, else the newest Debian PostgreSQL's server binaries
    (``/usr/lib/postgresql/N/bin``, 15 on Debian 12), or None."""
    if "VCOUNTER_PG_BIN" in os.environ:
        return Path(os.environ["VCOUNTER_PG_BIN"])
    found = [
        p.parent
        for p in Path("/usr/lib/postgresql").glob("*/bin/initdb")
        if p.parent.parent.name.isdigit()
    ]
    return max(found, key=lambda b: int(b.parent.name)) if found else None


class PostgresCluster(Service):
    """One ``initdb`` cluster on ``127.0.0.1:port``, the superuser ``postgres`` with a random
    password."""

    def __init__(
        self,
        bin_dir: Path | None = None,
        *,
        timezone: str | None = None,
        max_connections: int = 100,
    ) -> None:
        """``bin_dir``: the server binaries (default :func:`pg_bin`); ``timezone``: the cluster's
        ``TimeZone`` (default the machine's); ``max_connections``: what every client's pools
        need together."""
        self.bin = bin_dir or pg_bin()
        self.timezone = timezone
        self.max_connections = max_connections
        self.password = secrets.token_urlsafe(12)
        self.port = 0
        self.root: Path | None = None
        self._as_owner: list[str] = []

    @property
    def data(self) -> Path:
        assert self.root is not None, "not started"
        return self.root / "data"

    @property
    def log(self) -> Path:
        assert self.root is not None, "not started"
        return self.root / "server.log"

    def _run(self, *args: str) -> None:
        assert self.root is not None
        done = subprocess.run(
            [*self._as_owner, *args],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=self.root,
            start_new_session=True,  # and so the server pg_ctl starts
        )
        if done.returncode != 0:
            raise ServiceError(
                f"{Path(args[0]).name} failed ({done.returncode}): "
                f"{done.stdout[-2000:]}{done.stderr[-2000:]}{log_tail(self.log)}"
            )

    def start(self) -> None:
        """``initdb``, then the server on a free port; on a failure nothing is left behind."""
        if self.bin is None or not all((self.bin / t).is_file() for t in ("initdb", "pg_ctl")):
            raise NotInstalled.debian(
                f"PostgreSQL server binaries ({self.bin or '/usr/lib/postgresql/*/bin'})",
                "postgresql",
            )
        self.root = Path(tempfile.mkdtemp(prefix="vcounter-pg-"))
        try:
            if os.geteuid() == 0:
                shutil.chown(self.root, SUPERUSER, SUPERUSER)
                self._as_owner = ["runuser", "-u", SUPERUSER, "--"]
            self._initdb()
            self._start_server()
        except BaseException:
            self.stop()
            raise
        logger.info("postgresql pid %d on 127.0.0.1:%d", self.pid(), self.port)

    def _initdb(self) -> None:
        assert self.root is not None and self.bin is not None
        pwfile = self.root / "pw"
        pwfile.write_text(self.password + "\n")
        if self._as_owner:
            shutil.chown(pwfile, SUPERUSER, SUPERUSER)
        self._run(
            str(self.bin / "initdb"),
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

    def _start_server(self) -> None:
        assert self.root is not None and self.bin is not None
        for attempt in range(3):  # a free port can be taken between choosing and binding it
            self.port = free_port()
            options = (
                f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.root} -c fsync=off "
                "-c synchronous_commit=off -c full_page_writes=off "
                f"-c max_connections={self.max_connections}"
            )
            if self.timezone:
                options += f" -c timezone={self.timezone}"
            try:
                self._run(
                    str(self.bin / "pg_ctl"),
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
            except ServiceError:
                if attempt == 2:
                    raise
                time.sleep(0.5)

    def stop(self) -> None:
        """Stop the server at once and delete the cluster; safe to call twice."""
        root, self.root = self.root, None
        if root is None:
            return
        if (root / "data" / "postmaster.pid").exists() and self.bin is not None:
            subprocess.run(
                [
                    *self._as_owner,
                    str(self.bin / "pg_ctl"),
                    "-D",
                    str(root / "data"),
                    "-m",
                    "immediate",
                    "-w",
                    "stop",
                ],
                capture_output=True,
                timeout=60,
                cwd=root,
            )
        shutil.rmtree(root, ignore_errors=True)

    def pid(self) -> int:
        """The postmaster's pid (its children are the backends serving the clients)."""
        return int((self.data / "postmaster.pid").read_text().split()[0])

    def url(self, database: str = "postgres") -> str:
        """A plain ``postgresql://`` URL, as an operator writes ``DATABASE_URL``."""
        return f"postgresql://{SUPERUSER}:{self.password}@127.0.0.1:{self.port}/{database}"

    def _admin(self, statement: LiteralString, *names: str) -> None:
        """``statement`` with each ``{}`` replaced by one of ``names``, quoted as an identifier."""
        import psycopg
        from psycopg import sql

        query = sql.SQL(statement).format(*map(sql.Identifier, names))
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(query)

    def create_database(self, name: str, template: str | None = None) -> str:
        """A new database (a copy of ``template``, else empty); its URL."""
        if template is None:
            self._admin("CREATE DATABASE {}", name)
        else:
            self._admin("CREATE DATABASE {} TEMPLATE {}", name, template)
        return self.url(name)

    def drop_database(self, name: str) -> None:
        self._admin("DROP DATABASE IF EXISTS {} WITH (FORCE)", name)

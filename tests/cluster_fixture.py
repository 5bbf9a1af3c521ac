"""A counter of two real nodes behind a real nginx, sharing a real PostgreSQL and Redis.

:class:`Cluster` starts, on free loopback ports, two ``vcounter serve --no-tls``
child processes (:class:`Node`, each with its own ``VCOUNTER_NODE_ID`` and data
directory, the same master and signing key files, the same database and Redis
prefix) and an nginx (:class:`devservices.Nginx`, Debian's package, rendered from
``devservices/nginx.conf.template``) that balances them round-robin with no session
affinity. Both nodes are spawned at once, so every cluster is also two nodes
first-starting together on its database; users are added afterwards with
``vcounter user add``, as an operator does.

Tests import the fixtures explicitly (``cluster`` and ``cluster_factory``, defined
under other names so that parameters do not shadow the imports), with the Redis
one they need (PostgreSQL's comes with ``conftest.py``)::

    from .cluster_fixture import cluster_maker, two_node_cluster  # noqa: F401

``cluster`` is a started cluster with the agents ``alice`` (every skill) and
``bob`` (account opening), an ``auditor`` and an ``admin``, all with the tests'
``PASSWORD``; ``cluster_factory(users=..., nginx=...)`` makes more. Everything
is stopped at the end of the test, passed or failed.

``python -m tests.cluster_fixture`` (``make cluster``) runs the same thing on
this machine for people to try: a throwaway PostgreSQL, Redis and S3-compatible
server (moto) holding the recordings, two nodes, nginx with TLS (the
development certificate) on port 8443, the demo logins; Ctrl-C stops it all.
The services themselves (PostgreSQL, Redis, S3, nginx) come from
``devservices/``, which the benchmarks use too; the nodes and the cluster made
of them are here, beside the tests that use them: ``server/`` ships in the
package, and ``bench/`` is for measurements.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from devservices import (
    AWS_ENV,
    Nginx,
    PostgresCluster,
    RedisServer,
    S3Server,
    moto_installed,
    nginx_binary,
    pg_bin,
    redis_binary,
)
from recorder import MasterKey, SigningKey
from server.db import CallSession, Database

from .helpers import PASSWORD, REPO
from .server_process import ServerProcess, vcounter_command
from .services import installed

NODE_IDS = ("node-a", "node-b")


@dataclass(frozen=True)
class Account:
    """A user the cluster creates with ``vcounter user add``."""

    username: str
    role: str
    password: str
    skills: tuple[str, ...] = ()
    display_name: str | None = None


#: the users of a test cluster
TEST_ACCOUNTS = (
    Account(
        "alice", "agent", PASSWORD, ("account_opening", "loan_signing", "wealth_product"), "Alice"
    ),
    Account("bob", "agent", PASSWORD, ("account_opening",), "Bob"),
    Account("auditor", "auditor", PASSWORD),
    Account("admin", "admin", PASSWORD),
)


class Node(ServerProcess):
    """One ``vcounter serve --no-tls`` of the cluster, on ``127.0.0.1:port``.

    It runs in a process group of its own, so that a Ctrl-C in the terminal
    reaches only ``make cluster``, which then stops the nodes before the
    database and Redis they shut down with.
    """

    def __init__(self, root: Path, node_id: str, env: dict[str, str]) -> None:
        (root / node_id).mkdir(parents=True, exist_ok=True)
        super().__init__(root / node_id / "data", env={**env, "VCOUNTER_NODE_ID": node_id})
        self.node_id = node_id
        # where the other nodes forward requests about its sessions (it listens on loopback only)
        self.env["VCOUNTER_ADVERTISE_URL"] = self.url

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
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
                cwd=REPO,
                start_new_session=True,
            )

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, chars: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else "(no log)"


class Cluster:
    """Nodes sharing one database and one Redis prefix, and nginx round-robin in front of them."""

    def __init__(
        self,
        root: Path,
        *,
        database_url: str,
        redis_url: str,
        redis_prefix: str | None = None,
        node_ids: Iterable[str] = NODE_IDS,
        lease_s: float = 3.0,
        identity: bool = False,
        listen_host: str = "127.0.0.1",
        listen_port: int | None = None,
        tls: tuple[Path, Path] | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.database_url = database_url
        self.redis_url = redis_url
        self.redis_prefix = redis_prefix or f"t{secrets.token_hex(4)}:"
        keys = root / "keys"
        keys.mkdir(mode=0o700, exist_ok=True)
        self.master_key_file, self.signing_key_file = keys / "master.key", keys / "signing.pem"
        # made before the nodes start: two first starts would each create a different key
        if not self.master_key_file.exists():
            MasterKey.create(self.master_key_file)
        if not self.signing_key_file.exists():
            SigningKey.create(self.signing_key_file)
        self.env = {
            "DATABASE_URL": database_url,
            "VCOUNTER_REDIS_URL": redis_url,
            "VCOUNTER_REDIS_PREFIX": self.redis_prefix,
            "VCOUNTER_MASTER_KEY_FILE": str(self.master_key_file),
            "VCOUNTER_SIGNING_KEY_FILE": str(self.signing_key_file),
            "VCOUNTER_NODE_LEASE_S": f"{lease_s:g}",
            "VCOUNTER_IDENTITY": "1" if identity else "0",
            "VCOUNTER_ICE_SERVERS": "[]",
            "VCOUNTER_TRUSTED_PROXIES": "127.0.0.1",  # nginx, on this host
            **(env or {}),
        }
        self.nodes = [Node(root, node_id, self.env) for node_id in node_ids]
        self.nginx = Nginx(
            root / "nginx",
            [f"127.0.0.1:{n.port}" for n in self.nodes],
            host=listen_host,
            port=listen_port,
            tls=tls,
        )
        self._db: Database | None = None

    @property
    def url(self) -> str:
        """The balancer's URL: what browsers are given."""
        return self.nginx.url

    def node(self, node_id: str) -> Node:
        return next(n for n in self.nodes if n.node_id == node_id)

    def node_at(self, port: int) -> Node:
        return next(n for n in self.nodes if n.port == port)

    async def start_nodes(self) -> None:
        """Spawn every node at once; wait until each answers ``/healthz``."""
        results = await asyncio.gather(*(n.start() for n in self.nodes), return_exceptions=True)
        failed = [r for r in results if isinstance(r, BaseException)]
        if failed:
            raise failed[0]

    async def start(
        self, *, users: Iterable[Account] | None = TEST_ACCOUNTS, nginx: bool = True
    ) -> None:
        """The nodes, then their users, then nginx; on any failure everything started is stopped."""
        try:
            await self.start_nodes()
            if users:
                await self.add_users(users)
            if nginx:
                await asyncio.to_thread(self.nginx.start)
                await self.healthz()  # through nginx: the cluster answers at its public URL
        except BaseException:
            await self.aclose()
            raise

    async def add_users(self, accounts: Iterable[Account]) -> None:
        """``vcounter user add`` for each (the password on standard input), a few at a time."""

        def add(a: Account) -> None:
            args = ["user", "add", "--role", a.role, "--username", a.username, "--password", "-"]
            if a.skills:
                args += ["--skills", ",".join(a.skills)]
            if a.display_name:
                args += ["--display-name", a.display_name]
            done = subprocess.run(
                [*vcounter_command(), *args, "--data-dir", str(self.nodes[0].data_dir)],
                input=a.password + "\n",
                capture_output=True,
                text=True,
                timeout=60,
                env=self.nodes[0].env,
                cwd=REPO,
            )
            if done.returncode != 0:
                raise RuntimeError(f"vcounter user add {a.username}: {done.stdout}{done.stderr}")

        await asyncio.gather(*(asyncio.to_thread(add, a) for a in accounts))

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        """``vcounter *args`` with the cluster's database, Redis and lease (as node A's operator)."""
        return self.nodes[0].cli(*args)

    def nodes_json(self) -> dict[str, dict[str, Any]]:
        """``vcounter nodes --json``, by node id."""
        done = self.cli("nodes", "--json")
        assert done.returncode in (0, 1), done.stderr
        return {n["id"]: n for n in json.loads(done.stdout)}

    @property
    def db(self) -> Database:
        """The shared database, for tests to read what the nodes wrote."""
        if self._db is None:
            self._db = Database(self.database_url)
        return self._db

    async def session_row(self, session_id: str) -> CallSession | None:
        return await self.db.run(lambda s: s.get(CallSession, session_id))

    async def healthz(self, url: str | None = None) -> dict[str, Any]:
        """``GET /healthz`` of ``url`` (default: through the balancer)."""
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"{url or self.url}/healthz", ssl=False) as r,
        ):
            assert r.status == 200, f"{url or self.url}/healthz: {r.status} {await r.text()}"
            return await r.json()

    def logs(self) -> str:
        """The tail of every node's log and of nginx's, for failure messages."""
        parts = [f"--- {n.node_id} ({n.log}):\n{n.log_tail()}" for n in self.nodes]
        parts.append(f"--- nginx:\n{self.nginx.log_tail()}")
        return "\n".join(parts)

    def stop(self) -> None:
        """Stop nginx, then the nodes, all at once; idempotent.

        Nodes get SIGINT, which stops a node at once (SIGTERM would drain it: no new sessions,
        and a stop only once its last session is over), and SIGKILL after 15 s.
        """
        self.nginx.stop()
        running = [n.proc for n in self.nodes if n.proc is not None and n.proc.poll() is None]
        for proc in running:
            proc.send_signal(signal.SIGINT)
        deadline = time.monotonic() + 15
        for proc in running:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        if self._db is not None:
            self._db.close()
            self._db = None

    async def aclose(self) -> None:
        await asyncio.to_thread(self.stop)


# -- pytest fixtures -------------------------------------------------------------------------


@pytest.fixture(name="cluster_factory")
async def cluster_maker(
    tmp_path: Path, postgres_url: str, redis_url: str
) -> AsyncIterator[Callable[..., Awaitable[Cluster]]]:
    """``await make(**start_options)``: a started cluster on this test's empty database; one per
    test, since they share it (stopped at the end, whatever the outcome)."""
    made: list[Cluster] = []

    async def make(
        *, users: Iterable[Account] | None = TEST_ACCOUNTS, nginx: bool = True, **options: Any
    ) -> Cluster:
        cluster = Cluster(
            tmp_path / f"cluster{len(made)}",
            database_url=postgres_url,
            redis_url=redis_url,
            **options,
        )
        made.append(cluster)
        with installed():
            await cluster.start(users=users, nginx=nginx)
        return cluster

    try:
        yield make
    finally:
        for cluster in made:
            await cluster.aclose()


@pytest.fixture(name="cluster")
async def two_node_cluster(cluster_factory: Callable[..., Awaitable[Cluster]]) -> Cluster:
    """Nodes ``node-a`` and ``node-b`` behind nginx, with :data:`TEST_ACCOUNTS`."""
    return await cluster_factory()


# -- make cluster ------------------------------------------------------------------------------


def _demo_accounts() -> list[Account]:
    from server.cli import DEMO_ACCOUNTS

    return [
        Account(username, role, secrets.token_urlsafe(9), tuple(skills), display)
        for username, role, display, skills in DEMO_ACCOUNTS
    ]


#: where ``make cluster`` keeps the recordings, on its S3 server
BUCKET, PREFIX = "vcounter", "recordings"


async def _serve(
    cluster: Cluster, accounts: list[Account], services: dict[str, subprocess.Popen[bytes] | None]
) -> None:
    """Start the cluster, print where it is, and wait: until Ctrl-C, or until a process exits."""
    await cluster.start(users=accounts)
    url = cluster.url
    print(f"vcounter cluster: nginx on {url} (TLS: self-signed development certificate)")
    for n in cluster.nodes:
        print(f"  {n.node_id}: {n.url} (log {n.log})")
    print(f"  customer page: {url}/")
    print(f"  agent page:    {url}/agent")
    print(f"  auditor page:  {url}/audit")
    print(f"  health:        {url}/healthz")
    print(
        f"  recordings:    {cluster.env['VCOUNTER_STORAGE_URL']} on the S3 server "
        f"{cluster.env['VCOUNTER_S3_ENDPOINT_URL']} (moto, in memory)"
    )
    print("  demo accounts (new passwords each run):")
    for a in accounts:
        print(f"    {a.role:8} {a.username:10} {a.password}")
    print(f"  files: {cluster.root} (removed at exit)")
    print("Ctrl-C stops everything.", flush=True)
    watched = [
        *((n.node_id, n.proc) for n in cluster.nodes),
        ("nginx", cluster.nginx.proc),
        *services.items(),
    ]
    while True:
        exited = [name for name, proc in watched if proc is None or proc.poll() is not None]
        if exited:
            raise SystemExit(
                f"vcounter cluster: {', '.join(exited)} exited; stopping.\n{cluster.logs()}"
            )
        await asyncio.sleep(1)


def main(argv: list[str] | None = None) -> int:
    """``make cluster``: PostgreSQL, Redis, an S3 server, two nodes and nginx (TLS) on this
    machine until Ctrl-C."""
    from certs.devcert import ensure_dev_certificate

    parser = argparse.ArgumentParser(
        prog="python -m tests.cluster_fixture", description=main.__doc__
    )
    parser.add_argument(
        "--host", default="0.0.0.0", help="address nginx listens on (default 0.0.0.0)"
    )
    parser.add_argument(
        "--port",
        type=int,
        default=int(os.environ.get("PORT") or 8443),
        help="nginx's HTTPS port (default 8443)",
    )
    parser.add_argument("--no-identity", action="store_true", help="no face checks (less CPU)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")

    missing = [
        package
        for package, there in (
            ("nginx", nginx_binary() is not None),
            ("redis-server", redis_binary() is not None),
            ("postgresql", pg_bin() is not None),
        )
        if not there
    ]
    if missing:
        print(
            f"vcounter cluster: not installed: {', '.join(missing)} (`make services` installs them: "
            f"apt-get install -y {' '.join(missing)})",
            file=sys.stderr,
        )
        return 1
    if not moto_installed():
        print(
            "vcounter cluster: moto is not installed (the S3 server; `make install` installs the "
            "test extras: pip install -e '.[test]')",
            file=sys.stderr,
        )
        return 1

    # Ctrl-C, also when started where SIGINT is ignored (in the background), and SIGTERM (`kill`,
    # a service manager) stop it the same way
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    root = Path(tempfile.mkdtemp(prefix="vcounter-cluster-"))
    postgres, redis, s3 = PostgresCluster(), RedisServer(root / "redis"), S3Server(root / "s3")
    cluster: Cluster | None = None
    try:
        print("starting PostgreSQL, Redis and an S3 server (moto)...", flush=True)
        postgres.start()
        database_url = postgres.create_database("vcounter")
        redis.start()
        s3.start()
        s3.create_bucket(BUCKET)
        tls = ensure_dev_certificate(root / "tls")
        cluster = Cluster(
            root,
            database_url=database_url,
            redis_url=redis.url,
            redis_prefix="vcounter:",
            lease_s=15.0,
            identity=not args.no_identity,
            listen_host=args.host,
            listen_port=args.port,
            tls=tls,
            env={
                **AWS_ENV,
                "VCOUNTER_STORAGE_URL": f"s3://{BUCKET}/{PREFIX}",
                "VCOUNTER_S3_ENDPOINT_URL": s3.endpoint,
            },
        )
        print("starting nodes node-a and node-b and nginx...", flush=True)
        services = {"redis-server": redis.proc, "moto": s3.proc}
        asyncio.run(_serve(cluster, _demo_accounts(), services))
    except KeyboardInterrupt:
        print("\nstopping...", flush=True)
    except (RuntimeError, AssertionError) as exc:
        print(f"vcounter cluster: {exc}", file=sys.stderr)
        return 1
    finally:
        # the nodes first, then what they use
        if cluster is not None:
            cluster.stop()
        s3.stop()
        redis.stop()
        postgres.stop()
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

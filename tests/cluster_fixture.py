"""A counter of two real nodes behind a real nginx, sharing a real PostgreSQL and Redis.

:class:`Cluster` starts, on free loopback ports, two ``vcounter serve --no-tls``
child processes (:class:`Node`, each with its own ``VCOUNTER_NODE_ID`` and data
directory, the same master and signing key files, the same database and Redis
prefix) and an nginx (:class:`Nginx`, Debian's package, rendered from
``tests/nginx.conf.template``) that balances them round-robin with no session
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
this machine for people to try: a throwaway PostgreSQL and Redis, two nodes,
nginx with TLS (the development certificate) on port 8443, the demo logins;
Ctrl-C stops it all. It lives here, beside the services the tests start,
because it is development tooling made of them: ``server/`` ships in the
package, and ``bench/`` is for measurements.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import re
import secrets
import shutil
import signal
import socket
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

from recorder import MasterKey, SigningKey
from server.db import CallSession, Database

from .helpers import PASSWORD, REPO, eventually
from .server_process import ServerProcess, free_port, vcounter_command

NGINX_TEMPLATE = Path(__file__).with_name("nginx.conf.template")
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


def nginx_binary() -> str | None:
    """Debian's nginx (in ``/usr/sbin``, which a non-root ``PATH`` may lack), or None."""
    found = shutil.which("nginx")
    if found:
        return found
    return "/usr/sbin/nginx" if Path("/usr/sbin/nginx").is_file() else None


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


def render_nginx_conf(
    prefix: Path,
    upstreams: Iterable[str],
    listen: str,
    *,
    tls: tuple[Path, Path] | None = None,
    max_fails: int = 1,
    fail_timeout_s: int = 10,
) -> str:
    """``tests/nginx.conf.template`` filled in: every path under ``prefix``, the given nodes."""
    servers = "\n".join(
        f"        server {u} max_fails={max_fails} fail_timeout={fail_timeout_s}s;"
        for u in upstreams
    )
    tls_lines = (
        ""
        if tls is None
        else (f"        ssl_certificate {tls[0]};\n        ssl_certificate_key {tls[1]};\n")
    )
    fields = {
        # as root the workers would run as nobody, who cannot reach a private temporary directory
        "user": "user root;" if os.geteuid() == 0 else "",
        "prefix": str(prefix),
        "servers": servers,
        "listen": f"{listen} ssl" if tls else listen,
        "tls": tls_lines,
    }
    text = re.sub(r"@(\w+)@", lambda m: fields[m.group(1)], NGINX_TEMPLATE.read_text())
    return text


class Nginx:
    """nginx in front of ``upstreams`` (``host:port``), with every file under ``prefix``."""

    def __init__(
        self,
        prefix: Path,
        upstreams: list[str],
        *,
        host: str = "127.0.0.1",
        port: int | None = None,
        tls: tuple[Path, Path] | None = None,
    ) -> None:
        self.prefix = prefix
        self.upstreams = upstreams
        self.host = host
        self.port = port or 0
        self._fixed_port = port is not None
        self.tls = tls
        self.conf = prefix / "nginx.conf"
        self.error_log = prefix / "error.log"
        self.access_log = prefix / "access.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        host = "localhost" if self.host in ("0.0.0.0", "::") else self.host
        return f"{'https' if self.tls else 'http'}://{host}:{self.port}"

    def _spawn(self) -> subprocess.Popen[bytes]:
        binary = nginx_binary()
        if binary is None:
            pytest.fail(
                "nginx is not installed: `make test` installs it (Debian package nginx: "
                "apt-get install -y nginx)",
                pytrace=False,
            )
        (self.prefix / "temp").mkdir(parents=True, exist_ok=True)
        self.conf.write_text(
            render_nginx_conf(self.prefix, self.upstreams, f"{self.host}:{self.port}", tls=self.tls)
        )
        out = open(self.prefix / "nginx.out", "ab")  # noqa: SIM115 (the child holds it)
        try:
            # -e: the error log before the configuration is read (else /var/log/nginx/error.log)
            return subprocess.Popen(
                [binary, "-p", str(self.prefix), "-c", str(self.conf), "-e", str(self.error_log)],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        finally:
            out.close()

    async def start(self, timeout: float = 15.0) -> None:
        """Start nginx and wait until ``/healthz`` answers through it (another port if ours was taken)."""
        for attempt in range(3):
            if not self._fixed_port:
                self.port = free_port()
            self.proc = self._spawn()
            try:
                await self._wait_ready(timeout)
                return
            except RuntimeError as exc:
                self.stop()
                if self._fixed_port or "Address already in use" not in str(exc) or attempt == 2:
                    raise

    async def _wait_ready(self, timeout: float) -> None:
        proc = self.proc
        assert proc is not None
        async with aiohttp.ClientSession() as http:

            async def ready() -> bool:
                if proc.poll() is not None:
                    raise RuntimeError(f"nginx exited ({proc.returncode}): {self.log_tail()}")
                try:
                    async with http.get(f"{self.url}/healthz", ssl=False) as r:
                        return r.status == 200
                except aiohttp.ClientError:
                    return False

            await eventually(
                ready,
                timeout=timeout,
                interval=0.1,
                message=lambda: f"nginx did not answer: {self.log_tail()}",
            )

    def log_tail(self, chars: int = 2000) -> str:
        parts = [
            p.read_text(errors="replace")[-chars:]
            for p in (self.prefix / "nginx.out", self.error_log)
            if p.exists()
        ]
        return "\n".join(parts) or "(no log)"

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()  # fast shutdown: open connections are closed
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


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
                await self.nginx.start()
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


class _Redis:
    """A ``redis-server`` on a free loopback port for ``make cluster``, in its own process group
    (the tests use the ``redis_url`` fixture instead)."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0

    def start(self) -> str:
        binary = shutil.which("redis-server")
        if binary is None:
            raise SystemExit("redis-server is not installed (apt-get install -y redis-server)")
        self.workdir.mkdir(parents=True, exist_ok=True)
        for _ in range(5):
            self.port = free_port()
            self.proc = subprocess.Popen(
                [
                    binary,
                    "--port",
                    str(self.port),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--dir",
                    str(self.workdir),
                    "--logfile",
                    str(self.workdir / "redis.log"),
                ],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and self.proc.poll() is None:
                with (
                    contextlib.suppress(OSError),
                    socket.create_connection(("127.0.0.1", self.port), 0.5) as s,
                ):
                    s.sendall(b"PING\r\n")
                    if s.recv(64).startswith(b"+PONG"):
                        return f"redis://127.0.0.1:{self.port}/0"
                time.sleep(0.05)
            self.stop()
        raise SystemExit(f"redis-server did not start (log: {self.workdir / 'redis.log'})")

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _demo_accounts() -> list[Account]:
    from server.cli import DEMO_ACCOUNTS

    return [
        Account(username, role, secrets.token_urlsafe(9), tuple(skills), display)
        for username, role, display, skills in DEMO_ACCOUNTS
    ]


async def _serve(cluster: Cluster, accounts: list[Account]) -> None:
    await cluster.start(users=accounts)
    url = cluster.url
    print(f"vcounter cluster: nginx on {url} (TLS: self-signed development certificate)")
    for n in cluster.nodes:
        print(f"  {n.node_id}: {n.url} (log {n.log})")
    print(f"  customer page: {url}/")
    print(f"  agent page:    {url}/agent")
    print(f"  auditor page:  {url}/audit")
    print("  demo accounts (new passwords each run):")
    for a in accounts:
        print(f"    {a.role:8} {a.username:10} {a.password}")
    print(f"  files: {cluster.root} (removed at exit)")
    print("Ctrl-C stops everything.", flush=True)
    while (
        all(n.alive for n in cluster.nodes)
        and cluster.nginx.proc is not None
        and cluster.nginx.proc.poll() is None
    ):
        await asyncio.sleep(1)
    raise SystemExit(f"a process of the cluster exited:\n{cluster.logs()}")


def main(argv: list[str] | None = None) -> int:
    """``make cluster``: PostgreSQL, Redis, two nodes and nginx (TLS) on this machine until Ctrl-C."""
    from certs.devcert import ensure_dev_certificate

    from .services import PG_BIN, PostgresCluster

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
            ("redis-server", shutil.which("redis-server") is not None),
            ("postgresql", (PG_BIN / "initdb").is_file()),
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

    # Ctrl-C, also when started where SIGINT is ignored (in the background), and SIGTERM (`kill`,
    # a service manager) stop it the same way
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    root = Path(tempfile.mkdtemp(prefix="vcounter-cluster-"))
    postgres, redis = PostgresCluster(), _Redis(root / "redis")
    cluster: Cluster | None = None
    try:
        print("starting PostgreSQL and Redis...", flush=True)
        postgres.start()
        database_url = postgres.create_database("vcounter")
        redis_url = redis.start()
        tls = ensure_dev_certificate(root / "tls")
        cluster = Cluster(
            root,
            database_url=database_url,
            redis_url=redis_url,
            redis_prefix="vcounter:",
            lease_s=15.0,
            identity=not args.no_identity,
            listen_host=args.host,
            listen_port=args.port,
            tls=tls,
        )
        print("starting nodes node-a and node-b and nginx...", flush=True)
        asyncio.run(_serve(cluster, _demo_accounts()))
    except KeyboardInterrupt:
        print("\nstopping...", flush=True)
    except (RuntimeError, AssertionError) as exc:
        print(f"vcounter cluster: {exc}", file=sys.stderr)
        return 1
    finally:
        if cluster is not None:
            cluster.stop()
        redis.stop()
        postgres.stop()
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

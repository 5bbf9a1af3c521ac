"""Throwaway services on free loopback ports, for the tests, the benchmarks and ``make cluster``.

Each is a real server from a Debian or PyPI package, started as a child process in a temporary
place of its own and removed when stopped: a PostgreSQL cluster (``initdb``), a ``redis-server``,
an S3-compatible server (moto's server mode) and nginx. None of them is a system instance the
package may have started, and none keeps anything between runs.

Every service has the same shape: made with where its files go, ``start()`` (which cleans up
after itself when it fails), ``stop()`` (idempotent), and ``with`` for both. Each child runs in a
session of its own, so that a Ctrl-C in the terminal reaches only the Python process that started
it, which then stops what it started in order (the nodes before the database they use).

A service whose binary is missing raises :class:`NotInstalled`, naming the package to install;
one that does not come up raises :class:`ServiceError` with the tail of its log.

This is development tooling of a checkout, like ``tests/`` and ``bench/``: it is not shipped
(``pyproject.toml``), and shipped code never imports it (``tests/test_import_contract.py``).
"""

from .exceptions import NotInstalled, ServiceError
from .nginx import Nginx, nginx_binary, render_nginx_conf
from .postgres import PostgresCluster, pg_bin
from .process import free_port
from .redis_server import RedisServer, redis_binary
from .s3_server import AWS_ENV, S3Server, moto_installed

__all__ = [
    "AWS_ENV",
    "Nginx",
    "NotInstalled",
    "PostgresCluster",
    "RedisServer",
    "S3Server",
    "ServiceError",
    "free_port",
    "moto_installed",
    "nginx_binary",
    "pg_bin",
    "redis_binary",
    "render_nginx_conf",
]

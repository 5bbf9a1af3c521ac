"""A real PostgreSQL for the tests: one throwaway cluster per test session (``devservices``).

The cluster is made on first use and stopped and removed at the end; each test gets a database
of its own (:func:`postgres_url`). The fixtures are a plugin of ``tests/conftest.py``: tests just
name them.

The cluster's TimeZone is Asia/Shanghai, a bank's local time, so that a timestamp stored or read
in the server's local time instead of UTC shows.
"""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import Iterator

import pytest

from devservices import NotInstalled, PostgresCluster


@contextlib.contextmanager
def installed() -> Iterator[None]:
    """A service this machine lacks fails the test with what to install, not with a traceback."""
    try:
        yield
    except NotInstalled as exc:
        pytest.fail(f"{exc} (`make test` installs what the tests need)", pytrace=False)


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[PostgresCluster]:
    with installed(), PostgresCluster(timezone="Asia/Shanghai") as cluster:
        yield cluster


@pytest.fixture
def postgres_url(postgres_cluster: PostgresCluster) -> Iterator[str]:
    """A new, empty database on the throwaway cluster for one test (dropped after it)."""
    name = f"t_{secrets.token_hex(6)}"
    yield postgres_cluster.create_database(name)
    postgres_cluster.drop_database(name)

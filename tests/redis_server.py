"""A real Redis for the tests: a throwaway ``redis-server`` on a free loopback port (``devservices``).

One server per test session, started on first use and stopped at the end; it keeps nothing on
disk. Tests share it and keep apart by key prefix. The fixture is a plugin of
``tests/conftest.py``: tests just name it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from devservices import redis_server

from .services import installed


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``redis://127.0.0.1:<port>/0`` of a redis-server that lives for the test session."""
    with installed(), redis_server.RedisServer(tmp_path_factory.mktemp("redis")) as server:
        yield server.url


class RedisServer(redis_server.RedisServer):
    """A redis-server of one test's own, started at once; the test may stop it and start it again
    on the same port."""

    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir)
        with installed():
            self.start()

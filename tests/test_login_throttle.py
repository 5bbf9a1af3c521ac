"""Password guessing is limited per username and address, and per address, on every node."""

from __future__ import annotations

import asyncio
import secrets
import threading

import aiohttp
from sqlmodel import select

from server import auth
from server.db import AccessLog

from .helpers import PASSWORD, login


async def _login(url: str, username: str, password: str, source: str = "127.0.0.1") -> int:
    connector = aiohttp.TCPConnector(local_addr=(source, 0))
    async with aiohttp.ClientSession(connector=connector) as http:
        async with http.post(
            f"{url}/api/login", json={"username": username, "password": password}
        ) as r:
            return r.status


async def test_concurrent_guesses_cannot_slip_past_the_limit(counter) -> None:
    statuses = await asyncio.gather(*(_login(counter.url, "bob", f"guess-{i}") for i in range(40)))
    assert statuses.count(401) == 5 and statuses.count(429) == 35


async def test_a_lockout_holds_for_the_guessing_address_only(counter) -> None:
    for _ in range(5):
        assert await _login(counter.url, "bob", "nope") == 401
    assert await _login(counter.url, "bob", PASSWORD) == 429
    # the agent at another desk still logs in
    assert await _login(counter.url, "bob", PASSWORD, source="127.0.0.2") == 200


async def test_a_spray_over_many_usernames_from_one_address_is_stopped(counter) -> None:
    for i in range(30):
        assert await _login(counter.url, f"nobody{i}", "nope") == 401
    assert await _login(counter.url, "alice", PASSWORD) == 429
    assert await _login(counter.url, "alice", PASSWORD, source="127.0.0.3") == 200


async def test_the_limit_is_the_counters_not_one_nodes(make_counter, redis_url) -> None:
    shared = {"redis_url": redis_url, "redis_prefix": f"t{secrets.token_hex(4)}:"}
    a = await make_counter(node_id="node-a", **shared)
    b = await make_counter(node_id="node-b", **shared)
    for node in (a, b, a, b, a):
        assert await _login(node.url, "carol", "nope") == 401
    assert await _login(b.url, "carol", PASSWORD) == 429


async def test_an_administrator_lifts_a_lockout_and_it_is_logged(counter) -> None:
    for _ in range(5):
        assert await _login(counter.url, "bob", "nope") == 401
    assert await _login(counter.url, "bob", PASSWORD) == 429
    admin = await login(counter, "admin")
    async with aiohttp.ClientSession() as http:
        unlock = f"{counter.url}/api/admin/login-unlock"
        body = {"username": "bob", "address": "127.0.0.1"}
        agent = await login(counter, "alice")
        async with http.post(unlock, json=body, headers=_bearer(agent)) as r:
            assert r.status == 403  # agents cannot
        async with http.post(unlock, json={"username": "bob"}, headers=_bearer(admin)) as r:
            assert r.status == 400
        async with http.post(unlock, json=body, headers=_bearer(admin)) as r:
            assert r.status == 200
    assert await _login(counter.url, "bob", PASSWORD) == 200
    entries = await counter.db.run(
        lambda s: s.exec(select(AccessLog).where(AccessLog.action == "unlock_login")).all()
    )
    assert [(e.username, e.target) for e in entries] == [("admin", "bob@127.0.0.1")]


async def test_password_hashes_are_checked_off_the_database_thread(counter, monkeypatch) -> None:
    threads: list[str] = []
    check = auth.verify_password

    def spy(password: str, encoded: str) -> bool:
        threads.append(threading.current_thread().name)
        return check(password, encoded)

    monkeypatch.setattr(auth, "verify_password", spy)
    assert await _login(counter.url, "bob", "nope") == 401
    assert await _login(counter.url, "nobody", "nope") == 401
    assert await _login(counter.url, "alice", PASSWORD) == 200
    assert len(threads) == 3 and not any(t.startswith("db") for t in threads), threads


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}

"""Password guessing is limited per username and address, and per address, on every node."""

from __future__ import annotations

import asyncio
import secrets

import aiohttp

from .helpers import PASSWORD


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

"""Requests through the counter's balancer: the client's address and scheme, and only from it."""

from __future__ import annotations

import aiohttp
import pytest

from server.proxies import client_behind, parse_networks

from .helpers import PASSWORD, login

NETS = parse_networks(["127.0.0.1", "10.0.0.0/8"])


@pytest.mark.parametrize(
    ("peer", "header", "client"),
    [
        ("127.0.0.1", "203.0.113.7", "203.0.113.7"),
        (
            "127.0.0.1",
            "198.51.100.1, 203.0.113.7",
            "203.0.113.7",
        ),  # the right-most hop the proxy saw
        ("127.0.0.1", "203.0.113.7, 10.1.2.3", "203.0.113.7"),  # through two of our proxies
        ("127.0.0.1", "", None),
        ("127.0.0.1", "not-an-address", None),
        ("192.0.2.9", "203.0.113.7", None),  # not our proxy: its header is not believed
    ],
)
def test_the_client_behind_a_trusted_proxy(peer: str, header: str, client: str | None) -> None:
    assert client_behind(peer, header, NETS) == client


async def _login(url: str, username: str, password: str, forwarded_for: str) -> int:
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            f"{url}/api/login",
            json={"username": username, "password": password},
            headers={"X-Forwarded-For": forwarded_for},
        ) as r,
    ):
        return r.status


async def test_behind_a_trusted_balancer_the_throttle_sees_each_clients_address(
    make_counter,
) -> None:
    counter = await make_counter(trusted_proxies=("127.0.0.1",))
    for _ in range(5):
        assert await _login(counter.url, "bob", "nope", "203.0.113.7") == 401
    assert await _login(counter.url, "bob", PASSWORD, "203.0.113.7") == 429
    assert await _login(counter.url, "bob", PASSWORD, "203.0.113.8") == 200  # another desk


async def test_without_trusted_proxies_the_headers_are_not_believed(make_counter) -> None:
    counter = await make_counter()
    for i in range(5):
        assert await _login(counter.url, "bob", "nope", f"203.0.113.{i}") == 401
    assert await _login(counter.url, "bob", PASSWORD, "203.0.113.99") == 429  # all from 127.0.0.1


async def test_links_use_the_balancers_public_scheme(make_counter) -> None:
    counter = await make_counter(trusted_proxies=("127.0.0.1",))
    token = await login(counter, "integration")
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            f"{counter.url}/api/appointments",
            json={"business": "account_opening", "display_name": "陈女士"},
            headers={"Authorization": f"Bearer {token}", "X-Forwarded-Proto": "https"},
        ) as r,
    ):
        assert r.status == 201
        assert (await r.json())["join_url"].startswith("https://")

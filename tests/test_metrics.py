"""``GET /metrics``: what an operator's Prometheus scrapes from each node."""

from __future__ import annotations

import secrets

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from .helpers import eventually


async def _scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    async with aiohttp.ClientSession() as http, http.get(f"{url}/metrics") as r:
        assert r.status == 200 and r.headers["Content-Type"].startswith("text/plain")
        text = await r.text()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


async def test_metrics_follow_the_queue_offers_and_calls(counter) -> None:
    customer = await counter.customer("account_opening", "Ms Chen", media=False)
    await customer.wait_for("queue_update")
    seen = await _scrape(counter.url)
    assert seen[("vcounter_queue_length", (("business", "account_opening"),))] == 1
    assert seen[("vcounter_queue_longest_wait_seconds", (("business", "account_opening"),))] >= 0
    assert seen[("vcounter_calls", (("node", "test-node"),))] == 0

    bob = await counter.agent("bob", media=False)
    await bob.next_offer()
    await bob.send({"type": "decline", "session_id": customer.session_id})
    alice = await counter.agent("alice", media=False)
    await alice.accept_next()
    await customer.wait_for("call_started")
    seen = await _scrape(counter.url)
    assert seen[("vcounter_offers_total", (("outcome", "offered"),))] == 2
    assert seen[("vcounter_offers_total", (("outcome", "declined"),))] == 1
    assert seen[("vcounter_offers_total", (("outcome", "accepted"),))] == 1
    assert seen[("vcounter_calls", (("node", "test-node"),))] == 1
    assert ("vcounter_queue_length", (("business", "account_opening"),)) not in seen
    assert seen[("vcounter_agents", (("status", "busy"),))] == 1
    assert seen[("vcounter_db_errors_total", ())] == 0

    await customer.hangup()
    await alice.wait_for("call_ended", allow_errors=True)
    seen = await _scrape(counter.url)
    assert (
        seen[
            ("vcounter_sessions_closed_total", (("reason", "customer_hangup"), ("state", "ended")))
        ]
        == 1
    )


async def test_bus_latency_is_measured_between_nodes(make_counter, redis_url) -> None:
    shared = {"redis_url": redis_url, "redis_prefix": f"t{secrets.token_hex(4)}:"}
    a = await make_counter(node_id="node-a", **shared)
    b = await make_counter(node_id="node-b", **shared)
    customer = await a.customer("account_opening", "王女士", media=False)
    agent = await b.agent("alice", media=False)
    await agent.next_offer()

    async def measured() -> bool:
        seen = await _scrape(a.url)
        return seen.get(("vcounter_bus_latency_seconds_count", ()), 0) >= 1

    await eventually(measured)
    assert customer.session_id is not None

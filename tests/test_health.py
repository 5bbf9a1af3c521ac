"""The event-loop lag monitor and what ``GET /healthz`` tells a load balancer."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest

from server.health import LoopLagMonitor

from .helpers import eventually


async def _block_loop(seconds: float) -> None:
    time.sleep(seconds)  # noqa: ASYNC251 -- what a CPU-bound call on the loop does to everything else


async def test_monitor_sees_a_blocked_loop() -> None:
    monitor = LoopLagMonitor(interval_s=0.02, window_s=5.0)
    monitor.start()
    try:
        await eventually(lambda: monitor.summary()["samples"] >= 3)
        quiet = monitor.summary()
        assert quiet["max"] < 100, quiet  # an idle loop wakes on time (generous: shared CI machine)

        await _block_loop(0.2)
        # the wake-up the stall delayed is recorded
        await eventually(lambda: monitor.summary()["max"] >= 150)
        busy = monitor.summary()
        assert busy["max_since_start"] >= busy["max"]
        assert busy["p50"] < busy["max"]  # one late wake-up among punctual ones

        # the recent samples alone no longer hold the stall once it is older than asked for
        await eventually(lambda: monitor.summary(last_s=0.15)["max"] < 150)
        assert monitor.summary()["max"] >= 150
    finally:
        await monitor.aclose()
        await monitor.aclose()  # idempotent


async def test_window_is_bounded() -> None:
    monitor = LoopLagMonitor(interval_s=0.01, window_s=0.05)
    monitor.start()
    try:
        await asyncio.sleep(0.2)  # four windows' worth of wake-ups
        assert monitor.summary()["samples"] <= 5
    finally:
        await monitor.aclose()


async def _healthz(url: str, query: str = "") -> tuple[int, dict]:
    async with aiohttp.ClientSession() as http, http.get(f"{url}/healthz{query}") as r:
        return r.status, await r.json()


async def _lag(url: str, query: str = "") -> dict:
    status, body = await _healthz(url, query)
    assert status == 200, body
    return body["loop_lag_ms"]


async def _samples_at_least(url: str, count: int) -> bool:
    return (await _lag(url))["samples"] >= count


async def test_healthz_reports_loop_lag(counter) -> None:
    await eventually(lambda: _samples_at_least(counter.url, 2))
    status, body = await _healthz(counter.url)
    assert status == 200
    assert {"status", "node", "calls", "sessions"} <= body.keys()
    lag = body["loop_lag_ms"]
    assert {"p50", "p99", "max", "samples"} <= lag.keys()
    assert lag["samples"] >= 2 and 0 <= lag["p50"] <= lag["p99"] <= lag["max"]
    assert "face_workers" not in body  # identity is off in this fixture

    # a stall on the server's loop shows in its own /healthz, and ages out of a short window
    await _block_loop(0.2)

    async def stall_seen() -> bool:
        return (await _lag(counter.url))["max"] >= 150

    async def stall_aged_out() -> bool:
        return (await _lag(counter.url, "?lag_window_s=0.15"))["max"] < 150

    await eventually(stall_seen)
    await eventually(stall_aged_out)
    status, body = await _healthz(counter.url, "?lag_window_s=soon")
    assert status == 400 and body["error"] == "bad_request"


async def test_healthz_reports_face_workers(make_counter) -> None:
    counter = await make_counter(identity=True, identity_workers=1)
    status, body = await _healthz(counter.url)
    assert status == 200
    assert body["face_workers"] == {"workers": 1, "pending": 0}
    # the app started its loop-lag monitor: samples come in
    await eventually(lambda: _samples_at_least(counter.url, 1), timeout=5)
    # nothing about sessions or people on the unauthenticated endpoint
    assert set(body) == {
        "status",
        "node",
        "calls",
        "calls_without_media",
        "sessions",
        "loop_lag_ms",
        "face_workers",
        "nodes",
    }
    # the node registry: this node, alive, and no host, process or address for anonymous callers
    assert body["nodes"] == [
        {"id": body["node"], "alive": True, "draining": False, "calls": 0, "sessions": 0}
    ]


@pytest.mark.parametrize("bad", [{"interval_s": 0}, {"interval_s": 1.0, "window_s": 0.5}])
def test_monitor_rejects_nonsense(bad: dict) -> None:
    with pytest.raises(ValueError):
        LoopLagMonitor(**bad)

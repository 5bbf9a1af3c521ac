"""The event-loop lag monitor and what ``GET /healthz`` tells a load balancer."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest

from server.appkeys import LOOP_LAG
from server.health import LoopLagMonitor


async def _block_loop(seconds: float) -> None:
    time.sleep(seconds)  # noqa: ASYNC251 -- what a CPU-bound call on the loop does to everything else


async def test_monitor_sees_a_blocked_loop() -> None:
    monitor = LoopLagMonitor(interval_s=0.02, window_s=5.0)
    monitor.start()
    try:
        await asyncio.sleep(0.15)
        quiet = monitor.summary()
        assert quiet["samples"] >= 3
        assert quiet["max"] < 100, quiet  # an idle loop wakes on time (generous: shared CI machine)

        await _block_loop(0.2)
        await asyncio.sleep(0.1)
        busy = monitor.summary()
        assert busy["max"] >= 150, busy
        assert busy["max_since_start"] >= busy["max"]
        assert busy["p50"] < busy["max"]  # one late wake-up among punctual ones

        # the recent samples alone no longer hold the stall once it is older than asked for
        await asyncio.sleep(0.3)
        assert monitor.summary(last_s=0.15)["max"] < 150
        assert monitor.summary()["max"] >= 150
    finally:
        await monitor.aclose()
        await monitor.aclose()  # idempotent


async def test_window_is_bounded() -> None:
    monitor = LoopLagMonitor(interval_s=0.01, window_s=0.05)
    monitor.start()
    try:
        await asyncio.sleep(0.2)
        assert monitor.summary()["samples"] <= 5
    finally:
        await monitor.aclose()


async def _healthz(url: str, query: str = "") -> tuple[int, dict]:
    async with aiohttp.ClientSession() as http, http.get(f"{url}/healthz{query}") as r:
        return r.status, await r.json()


async def test_healthz_reports_loop_lag(counter) -> None:
    await asyncio.sleep(0.2)  # a few samples
    status, body = await _healthz(counter.url)
    assert status == 200
    assert {"status", "node", "calls", "sessions"} <= body.keys()
    lag = body["loop_lag_ms"]
    assert {"p50", "p99", "max", "samples"} <= lag.keys()
    assert lag["samples"] >= 2 and 0 <= lag["p50"] <= lag["p99"] <= lag["max"]
    assert "face_workers" not in body  # identity is off in this fixture

    # a stall on the server's loop shows in its own /healthz, and ages out of a short window
    await _block_loop(0.2)
    await asyncio.sleep(0.1)
    assert (await _healthz(counter.url))[1]["loop_lag_ms"]["max"] >= 150
    await asyncio.sleep(0.3)
    assert (await _healthz(counter.url, "?lag_window_s=0.15"))[1]["loop_lag_ms"]["max"] < 150
    status, body = await _healthz(counter.url, "?lag_window_s=soon")
    assert status == 400 and body["error"] == "bad_request"


async def test_healthz_reports_face_workers(make_counter) -> None:
    counter = await make_counter(identity=True, identity_workers=1)
    status, body = await _healthz(counter.url)
    assert status == 200
    assert body["face_workers"] == {"workers": 1, "pending": 0}
    assert counter.app[LOOP_LAG].summary()["samples"] >= 0
    # nothing about sessions or people on the unauthenticated endpoint
    assert set(body) == {"status", "node", "calls", "calls_without_media", "sessions", "loop_lag_ms",
                         "face_workers"}


@pytest.mark.parametrize("bad", [{"interval_s": 0}, {"interval_s": 1.0, "window_s": 0.5}])
def test_monitor_rejects_nonsense(bad: dict) -> None:
    with pytest.raises(ValueError):
        LoopLagMonitor(**bad)

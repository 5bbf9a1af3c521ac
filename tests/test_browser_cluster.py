"""Two real Chromium pages on two different nodes of one counter: the customer's page from node
A, the agent's workbench from node B, fake cameras playing two different people."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from sqlmodel import Session, select

from server.db import CallSession
from signaling.contrib.fake_media import make_tone_wav, make_y4m

from .browser import (
    accept_call,
    call_state,
    face_encoding,
    grab_frame,
    is_blank,
    launch,
    ready_agent,
    require_chromium,
    source_encoding,
)
from .cluster_fixture import Cluster, cluster_maker, two_node_cluster  # noqa: F401  (fixtures)
from .helpers import eventually, shared_data

pytestmark = [pytest.mark.browser, pytest.mark.slow]


async def _wait_remote_playing(page, timeout_s: float = 30.0) -> None:
    await page.wait_for_function(
        """() => { const v = document.querySelector('[data-testid="remote-video"]');
                   return v && v.videoWidth > 0 && v.currentTime > 1.0; }""",
        timeout=timeout_s * 1000,
    )


async def _face_in_remote(page) -> np.ndarray:
    """A face encoding from the remote video, which must not be blank (tries frames for a while:
    the person moves)."""

    async def face_now() -> tuple[np.ndarray] | None:
        frame = await grab_frame(page, "remote-video")
        assert frame is not None, "remote video has no frame"
        assert not is_blank(frame), "remote video is blank"
        encoding = await asyncio.get_running_loop().run_in_executor(None, face_encoding, frame)
        return None if encoding is None else (encoding,)

    (encoding,) = await eventually(
        face_now, timeout=20, interval=0.3, message="no face found in the remote video"
    )
    return encoding


async def test_a_customer_on_node_a_and_an_agent_on_node_b_see_each_other(cluster: Cluster) -> None:
    require_chromium()
    from playwright.async_api import async_playwright

    a, b = cluster.node("node-a"), cluster.node("node-b")
    customer_clip, agent_clip = shared_data("videos/d13.mp4"), shared_data("videos/d18.mp4")
    customer_cam, agent_cam = make_y4m(customer_clip), make_y4m(agent_clip)
    customer_face, agent_face = source_encoding(customer_clip), source_encoding(agent_clip)
    assert np.linalg.norm(customer_face - agent_face) > 0.7, (
        "the two clips must show different people"
    )

    async with async_playwright() as pw:
        agent_browser = await launch(pw, agent_cam, make_tone_wav(1000.0))
        customer_browser = await launch(pw, customer_cam, make_tone_wav(440.0))
        try:
            errors: list[str] = []
            agent = await ready_agent(agent_browser, b, errors)  # logs in and waits on node B

            customer = await customer_browser.new_page()
            customer.on("pageerror", lambda e: errors.append(f"customer: {e}"))
            await customer.goto(f"{a.url}/")
            await customer.get_by_test_id("business-account_opening").click()
            await customer.get_by_test_id("recording-consent").check()
            await customer.wait_for_selector('[data-testid="join-button"]:enabled', timeout=15_000)
            await customer.get_by_test_id("join-button").click()
            await call_state(customer, "waiting")

            # the customer waiting on node A is offered to the agent on node B
            await accept_call(agent, customer)
            await _wait_remote_playing(agent)
            await _wait_remote_playing(customer)

            # each side sees the other person, not itself and not a blank frame
            seen_by_agent = await _face_in_remote(agent)
            seen_by_customer = await _face_in_remote(customer)
            assert np.linalg.norm(seen_by_agent - customer_face) < 0.6
            assert np.linalg.norm(seen_by_agent - agent_face) > 0.6
            assert np.linalg.norm(seen_by_customer - agent_face) < 0.6
            assert np.linalg.norm(seen_by_customer - customer_face) > 0.6

            # the call and its media are on the customer's node; the agent's browser reached them
            health_a, health_b = await cluster.healthz(a.url), await cluster.healthz(b.url)
            assert (health_a["calls"], health_a["sessions"]) == (1, 1), health_a
            assert (health_b["calls"], health_b["sessions"]) == (0, 0), health_b

            await agent.get_by_test_id("hangup-button").click()
            await call_state(agent, "ended")
            await call_state(customer, "ended")
            assert not errors, errors
        finally:
            await customer_browser.close()
            await agent_browser.close()

    ended = [r for r in await cluster.db.run(_sessions) if r[1] == "ended"]
    assert [(node, reason) for _, _, node, reason in ended] == [("node-a", "agent_hangup")], ended


def _sessions(s: Session) -> list[tuple[str, str, str, str | None]]:
    return [(r.id, r.state, r.node_id, r.end_reason) for r in s.exec(select(CallSession)).all()]

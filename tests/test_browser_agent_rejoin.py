"""A real Chromium workbench whose socket drops mid-call keeps the call: it reconnects, the
server gives the call back, and the customer's picture plays again (a real customer page waits
in the call meanwhile)."""

from __future__ import annotations

import pytest

from signaling.contrib.fake_media import make_tone_wav

from .browser import accept_call, call_state, face_cameras, launch, ready_agent, require_chromium
from .helpers import eventually, session_events

pytestmark = [pytest.mark.browser, pytest.mark.slow]

#: records every state the page's call-state shows from now on, in window.seenStates
WATCH_STATES_JS = """() => { const el = document.querySelector('[data-testid="call-state"]');
  window.seenStates = [];
  new MutationObserver(() => window.seenStates.push(el.textContent.trim()))
    .observe(el, {childList: true, characterData: true, subtree: true}); }"""
PLAYED_S_JS = """() => { const v = document.querySelector('[data-testid="remote-video"]');
                         return v && v.videoWidth > 0 ? v.currentTime : 0; }"""


async def test_the_workbench_gets_its_call_back_after_its_socket_drops(counter) -> None:
    require_chromium()
    from playwright.async_api import async_playwright

    customer_cam, agent_cam = face_cameras()
    async with async_playwright() as pw:
        agent_browser = await launch(pw, agent_cam, make_tone_wav(1000.0))
        customer_browser = await launch(pw, customer_cam, make_tone_wav(440.0))
        try:
            errors: list[str] = []
            agent = await ready_agent(agent_browser, counter, errors)
            customer = await customer_browser.new_page()
            customer.on("pageerror", lambda e: errors.append(f"customer: {e}"))
            await customer.goto(f"{counter.url}/")
            await customer.get_by_test_id("business-account_opening").click()
            await customer.get_by_test_id("recording-consent").check()
            await customer.wait_for_selector('[data-testid="join-button"]:enabled')
            await customer.get_by_test_id("join-button").click()
            await call_state(customer, "waiting")
            await accept_call(agent, customer)
            await agent.wait_for_function(f"() => ({PLAYED_S_JS})() > 1.0", timeout=20_000)
            (session,) = counter.broker.sessions

            # the server loses the workbench's socket (as a network drop or a node restart would)
            await agent.evaluate(WATCH_STATES_JS)
            (conn,) = [a for a in counter.broker._agents.values() if a.session_id == session.id]
            conn.channel.close(1012, "gone")
            await eventually(lambda: _has(counter, session.id, "agent_rejoined"), timeout=20)
            await call_state(agent, "active")  # it never left the call
            await call_state(customer, "active")
            played = await agent.evaluate(PLAYED_S_JS)
            await agent.wait_for_function(
                f"() => ({PLAYED_S_JS})() > {played + 1.5}", timeout=20_000
            )  # the customer's picture plays again, over a new peer connection
            assert session.state == "active" and session.agent is not None
            assert "ended" not in await agent.evaluate("window.seenStates"), "the call view stays"
            await agent.get_by_test_id("hangup-button").click()
            await call_state(customer, "ended")
            # the end of the call is in sight, says the agent is away, and one tap makes them ready
            await call_state(agent, "ended")
            ready = agent.get_by_test_id("wrap-up-ready")
            box = await ready.bounding_box()
            height = await agent.evaluate("window.innerHeight")
            assert box is not None and 0 <= box["y"] and box["y"] + box["height"] <= height, box
            assert await agent.get_by_test_id("ended-away").is_visible()
            await ready.click()
            await agent.wait_for_selector('[data-testid="ready-toggle"][data-status="ready"]')
            await call_state(agent, "idle")
            assert not errors, errors
        finally:
            await customer_browser.close()
            await agent_browser.close()


async def _has(counter, session_id: str, kind: str) -> bool:
    return kind in [e.kind for e in await session_events(counter, session_id)]

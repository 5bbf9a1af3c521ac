"""A participant whose media path dies mid-call is noticed, asked to reconnect, or the call fails.

Real aiortc peers and a real server; the WebSocket of the participant whose media
dies stays open throughout (nothing is signalled: the media just stops).
"""

from __future__ import annotations

import re

import aiohttp
import pytest

from server.db import CallSession
from signaling.contrib.fake_media import make_tone_wav, make_y4m

from .browser import launch, ready_agent, require_chromium
from .helpers import session_events, shared_data

#: short enough for a quick test, long enough for a loaded 2-core machine to set up media
MEDIA_TIMEOUT_S = 2.0


async def _healthz(counter) -> dict:
    async with aiohttp.ClientSession() as http, http.get(f"{counter.url}/healthz") as resp:
        return await resp.json()


def _ice_transports(pc) -> set:
    return {
        t.sender.transport.transport for t in pc.getTransceivers() if t.sender.transport is not None
    }


class _BlackHole:
    """A UDP socket on a network path that drops every packet it is given."""

    def __init__(self, real) -> None:
        self.real = real

    def sendto(self, data, addr=None) -> None:
        pass

    def __getattr__(self, name: str):
        return getattr(self.real, name)


def _cut_network(participant) -> None:
    """The participant's media path goes dead both ways: no packet leaves or arrives.

    Nothing is signalled (no DTLS close, no hangup) and the WebSocket stays
    open; the participant's own peer connection does not notice for a while.
    """
    for ice in _ice_transports(participant.pc):
        for protocol in ice._connection._protocols:
            protocol.transport = _BlackHole(protocol.transport)
            protocol.datagram_received = lambda data, addr: None


async def _expire_consent(pc) -> None:
    """What aioice does when ICE consent expires (RFC 7675): it closes the ICE connection."""
    for ice in _ice_transports(pc):
        await ice._connection.close()


async def _call(counter):
    customer = await counter.customer("account_opening", "Ms Chen")
    agent = await counter.agent("alice")
    await agent.accept_next()
    await customer.wait_media(frames=20, timeout=30)
    await agent.wait_media(frames=20, timeout=30)
    return customer, agent


async def test_silent_media_is_noticed_and_the_participant_reconnects_it(
    make_counter, video_clip, audio_clip
):
    counter = await make_counter(video_clip, audio_clip, media_timeout_s=MEDIA_TIMEOUT_S)
    customer, agent = await _call(counter)
    session_id = customer.session_id
    since_c, since_a = len(customer.messages), len(agent.messages)

    _cut_network(customer)

    # the agent is told, the customer is asked for a new offer
    lost = await agent.wait_for("media_lost", timeout=30, since=since_a)
    assert (lost["role"], lost["reason"], lost["window_s"]) == ("customer", "stalled", 30)
    assert (await customer.wait_for("media_restart", since=since_c))["reason"] == "stalled"
    # the headless customer renegotiated on its own WebSocket and media is back
    await agent.wait_for("media_restored", timeout=30, since=since_a, role="customer")
    await customer.wait_for("media_restored", since=since_c, role="customer")
    assert customer.media_restarts[:1] == ["media_restart"]
    assert not customer.ws.closed
    # end to end again: the agent sees and hears the customer, the customer the agent
    await agent.wait_media(frames=20, timeout=30)
    await customer.wait_media(frames=20, timeout=30)
    assert counter.broker.session(session_id).state == "active"
    assert agent.count("call_ended") == customer.count("call_ended") == 0

    events = await session_events(counter, session_id)
    kinds = [e.kind for e in events]
    stalled = kinds.index("media_stalled")
    restored = kinds.index("media_restored")
    assert stalled < restored, kinds
    assert (
        events[stalled].data["role"] == "customer"
        and events[stalled].data["silent_s"] >= MEDIA_TIMEOUT_S
    )
    assert events[restored].data["role"] == "customer"
    assert "media_negotiated" in kinds[stalled:restored], "no new offer between loss and restore"
    assert (await _healthz(counter))["calls_without_media"] == 0

    await customer.hangup()
    assert (await agent.wait_for("call_ended"))["reason"] == "customer_hangup"


async def test_consent_expiry_on_the_server_leg_is_noticed(make_counter, video_clip, audio_clip):
    """ICE consent of the customer's leg expires on the server's side (RFC 7675).

    aiortc then reports the connection "closed", not "failed": the watchdog's
    silence rule is what notices it.
    """
    counter = await make_counter(video_clip, audio_clip, media_timeout_s=MEDIA_TIMEOUT_S)
    customer, agent = await _call(counter)
    since_c, since_a = len(customer.messages), len(agent.messages)

    leg = counter.hub.find(customer.session_id).participants["customer"]
    await _expire_consent(leg.pc)

    lost = await agent.wait_for("media_lost", timeout=30, since=since_a)
    assert lost["role"] == "customer"
    await customer.wait_for("media_restart", since=since_c)
    await agent.wait_for("media_restored", timeout=30, since=since_a, role="customer")
    await agent.wait_media(frames=20, timeout=30)
    await customer.wait_media(frames=20, timeout=30)

    events = await session_events(counter, customer.session_id)
    kinds = [e.kind for e in events]
    assert kinds.index("media_stalled") < kinds.index("media_restored"), kinds
    assert events[kinds.index("media_stalled")].data["connection"] == "closed"


def _wrong_fingerprint(sdp: str) -> str:
    wrong, count = re.subn(
        r"(a=fingerprint:\S+) [0-9A-Fa-f:]+",
        lambda m: m.group(1) + " " + ":".join(["00"] * 32),
        sdp,
    )
    assert count, "no fingerprint in the offer"
    return wrong


async def test_failed_connection_is_restarted(make_counter, video_clip, audio_clip):
    """The server's leg goes "failed" (its DTLS handshake fails): ``media_failed``, then back."""
    counter = await make_counter(video_clip, audio_clip, media_timeout_s=MEDIA_TIMEOUT_S)
    customer = await counter.customer("account_opening", "Ms Chen")
    # the customer's first offer carries a certificate fingerprint that does not match
    send = customer.send
    offers = 0

    async def tampering_send(message):
        nonlocal offers
        if message.get("type") == "offer":
            offers += 1
            if offers == 1:
                message = {**message, "sdp": _wrong_fingerprint(message["sdp"])}
        await send(message)

    customer.send = tampering_send
    agent = await counter.agent("alice")
    await agent.accept_next()

    lost = await agent.wait_for("media_lost", timeout=30)
    assert (lost["role"], lost["reason"]) == ("customer", "failed")
    assert (await customer.wait_for("media_restart"))["reason"] == "failed"
    await agent.wait_for("media_restored", timeout=30, role="customer")
    await agent.wait_media(frames=20, timeout=30)
    await customer.wait_media(frames=20, timeout=30)
    assert offers >= 2 and customer.media_restarts

    kinds = [e.kind for e in await session_events(counter, customer.session_id)]
    assert "media_failed" in kinds and "media_restored" in kinds, kinds
    assert kinds.index("media_failed") < kinds.index("media_restored")


async def test_media_not_back_within_the_window_fails_the_call(
    make_counter, video_clip, audio_clip
):
    counter = await make_counter(
        video_clip, audio_clip, media_timeout_s=MEDIA_TIMEOUT_S, rejoin_window_s=6.0
    )
    customer, agent = await _call(counter)
    session_id = customer.session_id
    since_c, since_a = len(customer.messages), len(agent.messages)

    customer.auto_media = False  # this customer's app does not reconnect its media
    _cut_network(customer)

    lost = await agent.wait_for("media_lost", timeout=30, since=since_a)
    assert (lost["role"], lost["window_s"]) == ("customer", 6)
    await customer.wait_for("media_restart", since=since_c)
    assert (await _healthz(counter))["calls_without_media"] == 1

    ended_a = await agent.wait_for("call_ended", timeout=30, since=since_a)
    ended_c = await customer.wait_for("call_ended", timeout=10, since=since_c)
    assert ended_a["reason"] == ended_c["reason"] == "media_failed"
    assert agent.count("media_restored") == 0 and customer.media_restarts == []
    await agent.wait_for("status", since=since_a, status="away")
    assert counter.hub.find(session_id) is None
    assert (await _healthz(counter))["calls_without_media"] == 0

    row = await counter.db.run(lambda s: s.get(CallSession, session_id))
    assert (row.state, row.end_reason) == ("failed", "media_failed")
    kinds = [e.kind for e in await session_events(counter, session_id)]
    assert kinds.index("media_stalled") < kinds.index("failed"), kinds
    assert "media_restored" not in kinds


@pytest.mark.browser
@pytest.mark.slow
async def test_web_client_shows_lost_media_and_restarts_its_own(
    make_counter, video_clip, audio_clip
):
    """The agent workbench in Chromium: a banner while the customer's media is lost, and a new
    peer connection of its own when the server asks for one."""
    require_chromium()
    from playwright.async_api import async_playwright

    counter = await make_counter(video_clip, audio_clip, media_timeout_s=MEDIA_TIMEOUT_S)
    banner = '[data-testid="media-lost-banner"]'
    async with async_playwright() as pw:
        browser = await launch(pw, make_y4m(shared_data("videos/d18.mp4")), make_tone_wav(1000.0))
        try:
            errors: list[str] = []
            page = await ready_agent(browser, counter, errors)
            customer = await counter.customer("account_opening", "Ms Chen")
            await page.get_by_test_id("accept-button").click(timeout=15_000)
            await customer.wait_media(frames=20, timeout=30)
            assert await page.locator(banner).is_hidden()

            # the customer's media dies and its app does not reconnect at once: the agent sees why
            customer.auto_media = False
            _cut_network(customer)
            await page.wait_for_selector(f"{banner}:not([hidden])", timeout=30_000)
            assert (await page.locator("#media-lost-text").text_content()).strip()
            # banners do not stack: while the page's own connection to the server is down,
            # that is what it says (the media-lost banner comes back with the connection)
            reconnecting = "document.querySelector('[data-testid=\"reconnecting-banner\"]').hidden"
            await page.evaluate(f"{reconnecting} = false")
            assert await page.locator(banner).is_hidden()
            await page.evaluate(f"{reconnecting} = true")
            assert await page.locator(banner).is_visible()
            customer.auto_media = True
            assert customer.restart_media("test")
            await page.wait_for_selector(banner, state="hidden", timeout=30_000)
            await page.wait_for_function(
                """() => { const v = document.querySelector('[data-testid="remote-video"]');
                           return v && v.videoWidth > 0; }""",
                timeout=30_000,
            )

            # the agent's own leg dies on the server: the page makes a new connection and offer
            since = len(customer.messages)
            await _expire_consent(counter.hub.find(customer.session_id).participants["agent"].pc)
            await page.wait_for_function("() => window.vcounter.mediaRestarts >= 1", timeout=30_000)
            await customer.wait_for("media_restored", timeout=30, since=since, role="agent")
            await customer.wait_media(frames=20, timeout=30)
            await page.wait_for_selector(banner, state="hidden", timeout=10_000)
            assert counter.broker.session(customer.session_id).state == "active"
            assert not errors, errors
        finally:
            await browser.close()

"""A whole call with headless participants: queue, offer, accept, media both ways, hang up."""

from __future__ import annotations

import pytest
from sqlmodel import select

from server.db import CallSession, Participant

from .helpers import eventually, session_events


async def _kinds(counter, session_id: str) -> list[str]:
    """The kinds of the session's events, whose timeline offsets never go backwards."""
    events = await session_events(counter, session_id)
    offsets = [e.offset_ms for e in events]
    assert offsets == sorted(offsets), "timeline offsets go backwards"
    return [e.kind for e in events]


@pytest.mark.parametrize("backend", ["local", "shared"], indirect=True)
@pytest.mark.parametrize("recording", [True, False], ids=["recording", "no-frame-consumer"])
async def test_call_forwards_media_both_ways_without_codecs(
    make_counter, video_clip, audio_clip, codec_spy, recording
):
    counter = await make_counter(video_clip, audio_clip, recording=recording)
    customer = await counter.customer("account_opening", "Ms Chen")
    update = await customer.wait_for("queue_update")
    assert update["position"] == 1

    agent = await counter.agent("alice")
    offer = await agent.accept_next()
    assert offer["display_name"] == "Ms Chen" and offer["business"] == "account_opening"

    started_c = await customer.wait_for("call_started")
    started_a = await agent.wait_for("call_started")
    assert started_c["peer"]["role"] == "agent" and started_a["peer"]["display_name"] == "Ms Chen"
    assert started_c["ice_servers"] == []

    await customer.wait_media(frames=45)
    await agent.wait_media(frames=45)
    # the server forwarded real VP8 keyframes + deltas and Opus packets
    assert customer.taps["video"].keyframes_in >= 1 and agent.taps["video"].keyframes_in >= 1
    media = counter.hub.find(customer.session_id)
    # with the recorder subscribed, aiortc's receiver reassembles frames for it; without, packets only
    assert media.tap("customer", "video").wants_frames is recording
    assert media.tap("customer", "video").frames_in >= 45
    assert media.tap("agent", "audio").frames_in >= 45
    # passthrough: nothing in this process encoded or decoded a single frame
    assert codec_spy.calls == {"encode": 0, "decode": 0}

    await customer.hangup()
    ended_a = await agent.wait_for("call_ended")
    ended_c = await customer.wait_for("call_ended")
    assert ended_a["reason"] == ended_c["reason"] == "customer_hangup"
    assert await agent.wait_for("status", status="away")
    await eventually(
        lambda: counter.hub.find(customer.session_id) is None
    )  # the hub closes after telling both

    def load(s):
        row = s.get(CallSession, customer.session_id)
        parts = s.exec(select(Participant).where(Participant.session_id == row.id)).all()
        return row, sorted(p.role for p in parts)

    row, roles = await counter.db.run(load)
    assert (row.state, row.end_reason) == ("ended", "customer_hangup")
    assert row.started_at is not None and row.ended_at >= row.started_at
    assert roles == ["agent", "customer"]
    kinds = await _kinds(counter, customer.session_id)
    for expected in ("queued", "offered", "call_started", "media_negotiated", "ended"):
        assert expected in kinds, kinds
    assert (
        kinds.index("queued")
        < kinds.index("offered")
        < kinds.index("call_started")
        < kinds.index("ended")
    )


async def test_transcode_mode_really_encodes(make_counter, video_clip, audio_clip, codec_spy):
    """The comparison mode decodes and re-encodes: the spy above can tell the difference."""
    counter = await make_counter(video_clip, audio_clip, media_mode="transcode")
    customer = await counter.customer()
    agent = await counter.agent("alice")
    await agent.accept_next()
    await customer.wait_media(frames=20, timeout=20)
    await agent.wait_media(frames=20, timeout=20)
    assert codec_spy.calls["encode"] > 0 and codec_spy.calls["decode"] > 0


async def test_agent_hangup_ends_call_for_both(counter):
    customer = await counter.customer()
    agent = await counter.agent("bob")
    await agent.accept_next()
    await customer.wait_media(frames=5)
    await agent.wait_media(frames=5)
    await agent.hangup()
    assert (await customer.wait_for("call_ended"))["reason"] == "agent_hangup"
    assert (await agent.wait_for("call_ended"))["reason"] == "agent_hangup"
    await eventually(lambda: counter.broker.session(customer.session_id) is None)


async def test_server_shutdown_ends_calls_and_records_why(make_counter, video_clip, audio_clip):
    counter = await make_counter(video_clip, audio_clip)
    customer = await counter.customer()
    waiting = await counter.customer(name="Waiting", media=False)
    agent = await counter.agent("alice")
    await agent.accept_next()
    await agent.wait_media(frames=5)
    db_url = str(counter.db.engine.url)
    await counter.server.close()
    assert (await customer.wait_for("call_ended"))["reason"] == "server_shutdown"
    assert (await agent.wait_for("call_ended"))["reason"] == "server_shutdown"
    assert (await waiting.wait_for("call_ended"))["reason"] == "server_shutdown"

    from server.db import Database

    db = Database(db_url)
    with db.session() as s:
        active = s.get(CallSession, customer.session_id)
        queued = s.get(CallSession, waiting.session_id)
        assert (active.state, active.end_reason) == ("ended", "server_shutdown")
        assert (queued.state, queued.end_reason) == ("abandoned", "server_shutdown")
    db.close()

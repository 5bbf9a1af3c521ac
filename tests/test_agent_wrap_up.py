"""The agent's wrap-up after a call, over the agent WebSocket: what it accepts and what it refuses."""

from __future__ import annotations

from .helpers import audited_session, eventually, session_events


async def _error(agent, since: int) -> dict:
    """The first error the agent got after message ``since``."""
    return await agent.wait_for("error", since=since)


async def _send(agent, **message) -> int:
    since = len(agent.messages)
    await agent.send({"type": "wrap_up", **message})
    return since


async def test_wrap_up_is_saved_once_by_the_calls_own_agent_only(
    make_counter, video_clip, audio_clip
):
    counter = await make_counter(video_clip, audio_clip, wrap_up_seconds=7.5)
    customer = await counter.customer("account_opening", "Ms Chen", media=False)
    alice = await counter.agent("alice")
    assert alice.messages[0]["type"] == "authenticated" and alice.messages[0]["wrap_up_s"] == 7.5
    bob = await counter.agent("bob", ready=False)
    session_id = (await alice.accept_next())["session_id"]
    await customer.wait_for("call_started")

    # during the call: not yet
    since = await _send(alice, session_id=session_id, disposition="completed")
    error = await _error(alice, since)
    assert error["code"] == "wrap_up_refused" and "not over" in error["message"], error

    await alice.hangup()
    await alice.wait_for("call_ended", allow_errors=True)
    await alice.wait_for("status", since=since, allow_errors=True, status="away")

    # a disposition that does not exist, notes too long, an unknown field: the message is refused
    since = await _send(alice, session_id=session_id, disposition="sold_a_car")
    error = await _error(alice, since)
    assert error["code"] == "invalid_message" and "disposition" in error["message"], error
    since = await _send(alice, session_id=session_id, disposition="completed", notes="x" * 1001)
    error = await _error(alice, since)
    assert error["code"] == "invalid_message" and "notes" in error["message"], error
    since = await _send(alice, session_id=session_id, disposition="completed", score=5)
    assert (await _error(alice, since))["code"] == "invalid_message"

    # another agent, or a session that does not exist: not theirs, and the socket stays open
    since = await _send(bob, session_id=session_id, disposition="completed", notes="mine now")
    error = await _error(bob, since)
    assert error["code"] == "wrap_up_refused" and "not a call of yours" in error["message"]
    assert error.get("fatal") is not True and not bob.ws.closed
    since = await _send(alice, session_id="no-such-session-1", disposition="completed")
    assert (await _error(alice, since))["code"] == "wrap_up_refused"

    # the call's own agent: saved, on the timeline, with 1000 characters of notes (Chinese too)
    notes = "客户要求下周回电。\n" + "备" * 990
    assert len(notes) == 1000
    since = await _send(alice, session_id=session_id, disposition="needs_follow_up", notes=notes)
    saved = await alice.wait_for("wrap_up_saved", since=since, allow_errors=True)
    assert saved == {
        "type": "wrap_up_saved",
        "session_id": session_id,
        "disposition": "needs_follow_up",
    }
    events = await session_events(counter, session_id)
    (wrap_up,) = [e for e in events if e.kind == "wrap_up"]
    assert wrap_up.data == {"disposition": "needs_follow_up", "notes": notes, "by": "alice"}
    assert wrap_up.offset_ms >= max(e.offset_ms for e in events if e.kind == "ended")
    audited = [e for e in (await audited_session(counter, session_id))["events"]]
    assert [e["data"] for e in audited if e["kind"] == "wrap_up"] == [wrap_up.data]

    # a second one is refused; the first stays as it was
    since = await _send(alice, session_id=session_id, disposition="completed")
    error = await _error(alice, since)
    assert error["code"] == "wrap_up_refused" and "already" in error["message"], error
    await eventually(
        lambda: _count(counter, session_id),
        message="exactly one wrap_up event",
    )
    # wrap-up keeps the agent away: a customer waiting now is not offered until they are ready
    since = len(alice.messages)
    await counter.customer("account_opening", "Next", media=False)
    await alice.wait_for("queue_stats", since=since, allow_errors=True)
    assert "customer_offer" not in [d["type"] for d in alice.messages[since:]]
    await alice.send({"type": "set_status", "status": "ready"})
    offer = await alice.wait_for("customer_offer", since=since, allow_errors=True)
    assert offer["display_name"] == "Next"


async def _count(counter, session_id: str) -> bool:
    return [e.kind for e in await session_events(counter, session_id)].count("wrap_up") == 1

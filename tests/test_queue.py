"""Queue order, skills, declines and timeouts, rejoin, agent drop, keyframe requests."""

from __future__ import annotations

import asyncio
import secrets

import pytest

from server.db import CallSession
from signaling.contrib.headless import ProtocolError

from .helpers import eventually, session_events, wait_event


async def test_positions_update_live_and_cancel(counter):
    a = await counter.customer("account_opening", "A", media=False)
    b = await counter.customer("account_opening", "B", media=False)
    c = await counter.customer("loan_signing", "C", media=False)
    assert (await a.wait_for("queue_update"))["position"] == 1
    assert (await b.wait_for("queue_update"))["position"] == 2
    # positions count per business queue
    assert (await c.wait_for("queue_update"))["position"] == 1
    since = len(b.messages)
    await a.send({"type": "cancel"})
    assert (await a.wait_for("call_ended"))["reason"] == "customer_cancelled"
    assert (await b.wait_for("queue_update", since=since))["position"] == 1

    def state(s):
        return s.get(CallSession, a.session_id).state

    assert await counter.db.run(state) == "abandoned"


async def test_estimated_wait_uses_staffing(counter):
    customers = [await counter.customer("loan_signing", f"L{i}", media=False) for i in range(3)]
    first = await customers[2].wait_for("queue_update")
    assert first["agents_available"] == 0 and first["estimated_wait_s"] > 0
    agent = await counter.agent("carol", ready=False)  # away: staffed counts only ready/busy agents
    assert agent is not None
    since = len(customers[2].messages)
    # an agent of another skill does not change the loan queue's availability
    await counter.agent("bob")
    with pytest.raises(TimeoutError):
        await customers[2].wait_for(
            "queue_update", since=since, timeout=0.5, where=lambda d: d["agents_available"] > 0
        )


async def test_longest_waiting_customer_of_matching_skill_is_offered(counter):
    loan = await counter.customer("loan_signing", "Loan first", media=False)
    opening1 = await counter.customer("account_opening", "Opening 1", media=False)
    opening2 = await counter.customer("account_opening", "Opening 2", media=False)
    bob = await counter.agent("bob")  # account_opening only
    offer = await bob.next_offer()
    assert offer["session_id"] == opening1.session_id
    carol = await counter.agent("carol")  # loan_signing only
    assert (await carol.next_offer())["session_id"] == loan.session_id
    assert opening2.session_id not in {offer["session_id"]}


async def test_decline_reoffers_to_next_agent_not_the_same(counter):
    customer = await counter.customer("account_opening", "Declined", media=False)
    bob = await counter.agent("bob")
    offer = await bob.next_offer()
    await bob.send({"type": "decline", "session_id": offer["session_id"]})
    withdrawn = await bob.wait_for("offer_withdrawn")
    assert withdrawn["reason"] == "declined"
    # bob stays ready but is not offered the same customer again
    alice = await counter.agent("alice")
    assert (await alice.next_offer())["session_id"] == customer.session_id
    with pytest.raises(TimeoutError):
        await bob.next_offer(timeout=0.5)


async def test_offer_timeout_sets_agent_away_and_reoffers(make_counter, video_clip, audio_clip):
    counter = await make_counter(video_clip, audio_clip, offer_timeout_s=0.5)
    customer = await counter.customer("account_opening", "Waiting", media=False)
    bob = await counter.agent("bob")
    await bob.next_offer()
    assert (await bob.wait_for("offer_withdrawn", timeout=5))["reason"] == "timeout"
    await bob.wait_for("status", status="away")
    alice = await counter.agent("alice")
    assert (await alice.next_offer())["session_id"] == customer.session_id
    # an expired offer cannot be accepted
    await bob.send({"type": "accept", "session_id": customer.session_id})
    err = await bob.wait_for("error")
    assert err["code"] == "bad_state" and not err["fatal"]


async def test_the_only_agent_back_after_a_missed_offer_is_offered_the_customer_again(
    make_counter, video_clip, audio_clip
):
    counter = await make_counter(video_clip, audio_clip, offer_timeout_s=0.5)
    customer = await counter.customer("account_opening", "Stranded?", media=False)
    bob = await counter.agent("bob")
    await bob.next_offer()
    assert (await bob.wait_for("offer_withdrawn", timeout=5))["reason"] == "timeout"
    await bob.wait_for("status", status="away")  # he missed it, and is away
    since = len(bob.messages)
    await bob.set_ready()  # back at the desk: a missed offer is not a refusal of this customer
    offer = await bob.wait_for("customer_offer", since=since)
    assert offer["session_id"] == customer.session_id
    await bob.send({"type": "decline", "session_id": customer.session_id})
    await bob.wait_for("offer_withdrawn", since=since)
    since = len(bob.messages)
    await bob.set_ready()  # a decline is: someone else serves this customer
    with pytest.raises(TimeoutError):
        await bob.wait_for("customer_offer", since=since, timeout=1.0)


@pytest.mark.parametrize("backend", ["local", "shared"], indirect=True)
async def test_the_only_agent_who_declined_is_offered_the_customer_again_after_the_cool_down(
    make_counter, video_clip, audio_clip
):
    counter = await make_counter(video_clip, audio_clip, offer_cooldown_s=1.0)
    customer = await counter.customer("account_opening", "Stranded?", media=False)
    bob = await counter.agent("bob")
    await bob.next_offer()
    since_c = len(customer.messages)
    await bob.send({"type": "decline", "session_id": customer.session_id})
    declined_at = asyncio.get_running_loop().time()
    assert (await bob.wait_for("offer_withdrawn"))["reason"] == "declined"
    await bob.wait_for("status", status="ready")
    # the customer is told, in their place; not offered to bob during the cool-down
    update = await customer.wait_for("queue_update", since=since_c, status="transferring")
    assert update["position"] == 1
    offer = await bob.next_offer(timeout=5)
    assert asyncio.get_running_loop().time() - declined_at >= 0.9
    assert offer["session_id"] == customer.session_id
    await bob.send({"type": "accept", "session_id": customer.session_id})
    assert (await customer.wait_for("call_started"))["peer"]["role"] == "agent"


async def test_the_only_agent_on_another_node_is_offered_the_customer_again_after_the_cool_down(
    make_counter, video_clip, audio_clip, redis_url
):
    shared = {"redis_url": redis_url, "redis_prefix": f"t{secrets.token_hex(4)}:"}
    a = await make_counter(video_clip, audio_clip, node_id="node-a", offer_cooldown_s=1.0, **shared)
    b = await make_counter(video_clip, audio_clip, node_id="node-b", offer_cooldown_s=1.0, **shared)
    customer = await a.customer("account_opening", "On node A", media=False)
    bob = await b.agent("bob")
    await bob.next_offer()
    await bob.send({"type": "decline", "session_id": customer.session_id})
    assert (await bob.wait_for("offer_withdrawn"))["reason"] == "declined"
    offer = await bob.next_offer(timeout=6)
    assert offer["session_id"] == customer.session_id
    await bob.send({"type": "accept", "session_id": customer.session_id})
    await customer.wait_for("call_started")


@pytest.mark.parametrize("backend", ["local", "shared"], indirect=True)
async def test_another_ready_agent_is_offered_the_declined_customer_before_the_cool_down_ends(
    make_counter, video_clip, audio_clip
):
    counter = await make_counter(video_clip, audio_clip, offer_cooldown_s=1.0)
    customer = await counter.customer("account_opening", "First", media=False)
    bob = await counter.agent("bob")
    assert (await bob.next_offer())["session_id"] == customer.session_id
    alice = await counter.agent("alice")  # ready later than bob, and free
    since = len(customer.messages)
    await bob.send({"type": "decline", "session_id": customer.session_id})
    assert (await alice.next_offer())["session_id"] == customer.session_id
    update = await customer.wait_for("queue_update", since=since, status="transferring")
    assert update["position"] == 1
    # bob, ready again, gets the next customer, who takes their place and is not "transferred"
    second = await counter.customer("account_opening", "Second", media=False)
    assert (await bob.next_offer())["session_id"] == second.session_id
    with pytest.raises(TimeoutError):
        await second.wait_for("queue_update", status="transferring", timeout=0.3)
    updates = [u for u in second.messages if u["type"] == "queue_update"]
    assert updates and updates[-1]["position"] == 2
    await alice.send({"type": "accept", "session_id": customer.session_id})
    await customer.wait_for("call_started")


@pytest.mark.parametrize("how", ["declined", "timeout", "agent_lost"])
async def test_a_customer_whose_offer_failed_is_told_another_agent_is_being_connected(
    make_counter, video_clip, audio_clip, how
):
    counter = await make_counter(video_clip, audio_clip, offer_timeout_s=1.5)
    customer = await counter.customer("account_opening", "Offered", media=False)
    bob = await counter.agent("bob")
    assert (await bob.next_offer())["session_id"] == customer.session_id
    assert (await customer.wait_for("queue_update"))["status"] == "waiting"
    alice = await counter.agent("alice")  # ready, nobody else to take
    since = len(customer.messages)
    if how == "declined":
        await bob.send({"type": "decline", "session_id": customer.session_id})
    elif how == "agent_lost":
        await bob.drop()
    # a timeout needs nothing: bob lets the offer lapse
    assert (await alice.next_offer(timeout=5))["session_id"] == customer.session_id
    update = await customer.wait_for("queue_update", since=since, status="transferring")
    assert update["position"] == 1
    await alice.send({"type": "accept", "session_id": customer.session_id})
    await customer.wait_for("call_started")


async def test_a_long_wait_is_flagged_to_the_agents_and_the_customer(
    make_counter, video_clip, audio_clip
):
    counter = await make_counter(video_clip, audio_clip, long_wait_s=1.0)
    carol = await counter.agent("carol", ready=False)  # away: still sees the queue
    customer = await counter.customer("account_opening", "Patient", media=False)
    first = await carol.wait_for("queue_stats", where=lambda d: d["waiting"]["account_opening"])
    assert first["long_wait"] == [] and first["longest_wait_s"]["account_opening"] < 1
    assert not (await customer.wait_for("queue_update"))["long_wait"]
    # nothing else happens in the queue: the limit passing is enough for the agents to be told
    flagged = await carol.wait_for(
        "queue_stats", timeout=5, where=lambda d: d["long_wait"] == ["account_opening"]
    )
    assert flagged["longest_wait_s"]["account_opening"] >= 1
    assert flagged["waiting"]["account_opening"] == 1
    update = await customer.wait_for("queue_update", timeout=5, long_wait=True)
    assert update["position"] == 1


@pytest.mark.parametrize("recording", [True, False], ids=["recording", "no-frame-consumer"])
async def test_customer_rejoins_call_within_window(make_counter, video_clip, audio_clip, recording):
    counter = await make_counter(video_clip, audio_clip, recording=recording)
    customer = await counter.customer("account_opening", "Flaky network")
    agent = await counter.agent("alice")
    await agent.accept_next()
    await agent.wait_media(frames=20)
    session_id, token = customer.session_id, customer.rejoin_token

    await customer.drop()
    await agent.wait_for("peer_reconnecting")
    # the dropped connection's media no longer reaches the agent
    video = agent.taps["video"]
    await eventually(lambda: asyncio.get_running_loop().time() - video.last_frame_at > 0.3)
    frames_before = video.frames_in
    # still the same call on the server while the customer is away
    assert counter.broker.session(session_id).state == "active"

    back = counter.participant("customer-back")
    rejoined = await back.rejoin(session_id, token)
    assert rejoined["state"] == "active"
    await back.wait_for("call_started")
    await agent.wait_for("peer_reconnected")
    # media from the new connection reaches the agent on the same session
    await agent.wait_media(frames=30, kinds=("video",))
    assert agent.taps["video"].frames_in > frames_before
    await back.wait_media(frames=20, kinds=("video",))

    events = [e.kind for e in await session_events(counter, session_id)]
    assert events.index("customer_disconnected") < events.index("customer_rejoined")


async def test_rejoin_after_window_is_refused_and_call_ends(make_counter, video_clip, audio_clip):
    counter = await make_counter(video_clip, audio_clip, rejoin_window_s=0.5)
    customer = await counter.customer("account_opening", "Gone")
    agent = await counter.agent("alice")
    await agent.accept_next()
    await agent.wait_media(frames=5)
    await customer.drop()
    assert (await agent.wait_for("call_ended", timeout=5))["reason"] == "customer_lost"
    late = counter.participant("late", media=False)
    with pytest.raises(ProtocolError, match="session_ended"):
        await late.rejoin(customer.session_id, customer.rejoin_token)


async def test_queued_customer_keeps_place_through_a_drop(counter):
    first = await counter.customer("account_opening", "First", media=False)
    second = await counter.customer("account_opening", "Second", media=False)
    await first.drop()
    await wait_event(counter, first.session_id, {"customer_disconnected"})
    back = counter.participant("first-back", media=False)
    await back.rejoin(first.session_id, first.rejoin_token)
    assert (await back.wait_for("queue_update"))["position"] == 1
    bob = await counter.agent("bob")
    assert (await bob.next_offer())["session_id"] == first.session_id
    assert second.session_id


async def test_an_agent_not_back_within_the_window_sends_the_customer_to_the_head_of_the_queue(
    make_counter, video_clip, audio_clip
):
    counter = await make_counter(video_clip, audio_clip, rejoin_window_s=1.5)
    early = await counter.customer("account_opening", "Early bird", media=False)
    bob = await counter.agent("bob")
    offer = await bob.next_offer()
    assert offer["session_id"] == early.session_id
    await bob.send({"type": "decline", "session_id": early.session_id})
    await bob.wait_for("offer_withdrawn")
    # a later customer gets bob; the early one waits (bob declined them)
    late = await counter.customer("account_opening", "Late")
    offer = await bob.next_offer()
    assert offer["session_id"] == late.session_id
    await bob.send({"type": "accept", "session_id": late.session_id})
    await late.wait_media(frames=5)

    since_early, since_late = len(early.messages), len(late.messages)
    await bob.drop()
    await late.wait_for("peer_reconnecting", since=since_late)  # bob has the window to come back
    assert (await late.wait_for("requeued", since=since_late))["reason"] == "agent_lost"
    update = await late.wait_for("queue_update", since=since_late)
    assert update["position"] == 1  # ahead of the customer who joined earlier
    assert (await early.wait_for("queue_update", since=since_early))["position"] == 2
    alice = await counter.agent("alice")
    assert (await alice.next_offer())["session_id"] == late.session_id

    def state(s):
        return s.get(CallSession, late.session_id).state

    assert await counter.db.run(state) == "offered"


@pytest.mark.parametrize("recording", [True, False], ids=["recording", "no-frame-consumer"])
async def test_keyframe_request_from_receiver_reaches_sender(
    make_counter, video_clip, audio_clip, recording
):
    counter = await make_counter(video_clip, audio_clip, recording=recording)
    customer = await counter.customer("account_opening", "PLI")
    agent = await counter.agent("alice")
    await agent.accept_next()
    await agent.wait_media(frames=10, kinds=("video",))
    await customer.wait_media(frames=10, kinds=("video",))
    before = customer.tracks["video"].keyframe_requests
    keyframes_before = agent.taps["video"].keyframes_in
    # the agent's side sends an RTCP PLI to the server; the server must pass it upstream
    agent.request_keyframe()
    await eventually(lambda: customer.tracks["video"].keyframe_requests > before)
    # and the resulting keyframe arrives at the agent
    await eventually(lambda: agent.taps["video"].keyframes_in > keyframes_before)


async def test_decoded_subscription_decodes_only_while_subscribed(counter):
    customer = await counter.customer("account_opening", "Decoded")
    agent = await counter.agent("alice")
    await agent.accept_next()
    await agent.wait_media(frames=10, kinds=("video",))
    tap = counter.hub.find(customer.session_id).tap("customer", "video")
    assert not tap.decoding and tap.frames_decoded == 0
    sub = tap.subscribe_decoded()
    frame = await asyncio.wait_for(sub.recv(), 10)
    assert (frame.width, frame.height) == (640, 480)
    sub.close()
    assert not tap.decoding
    decoded = tap.frames_decoded
    await asyncio.sleep(0.5)  # media goes on meanwhile (15 frames): none of it may be decoded
    assert tap.frames_decoded <= decoded + 2  # nothing decoded after the last subscriber left

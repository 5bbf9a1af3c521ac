"""Two nodes of one counter sharing a real Redis and one database: the queue is global and a
participant's WebSocket may reach either node."""

from __future__ import annotations

import asyncio
import json
import secrets

import aiohttp
import pytest
from sqlmodel import select

from server.appkeys import IDENTITY, NODES
from server.db import CallSession, FlowRunRecord, Recording
from server.node_registry import set_draining

from .flow_driver import current, do_step, run_flow
from .helpers import eventually, login, session_events
from .recordings import recorded_call


async def _two_nodes(make_counter, video_clip, audio_clip, redis_url, **extra):
    shared = {"redis_url": redis_url, "redis_prefix": f"t{secrets.token_hex(4)}:", **extra}
    a = await make_counter(video_clip, audio_clip, node_id="node-a", **shared)
    b = await make_counter(video_clip, audio_clip, node_id="node-b", **shared)
    return a, b


@pytest.fixture
async def nodes(make_counter, video_clip, audio_clip, redis_url):
    """Nodes A and B of one counter (their own Redis key prefix per test)."""
    return await _two_nodes(make_counter, video_clip, audio_clip, redis_url)


@pytest.fixture
async def mortal(make_counter, video_clip, audio_clip, redis_url):
    """Nodes A and B whose death the other notices within about a second."""
    return await _two_nodes(make_counter, video_clip, audio_clip, redis_url, node_lease_s=1.0)


async def _row(counter, session_id: str) -> CallSession:
    return await counter.db.run(lambda s: s.get(CallSession, session_id))


async def _kill(counter) -> None:
    """The node stops heartbeating: the others count it dead after its lease."""
    heartbeat = counter.app[NODES]._task
    heartbeat.cancel()
    await asyncio.gather(heartbeat, return_exceptions=True)


async def test_a_customer_on_one_node_is_served_by_an_agent_on_the_other(nodes) -> None:
    a, b = nodes
    customer = await a.customer("account_opening", "王女士")
    assert (await customer.wait_for("queue_update"))["position"] == 1

    agent = await b.agent("alice")
    offer = await agent.accept_next()
    assert offer["display_name"] == "王女士" and offer["session_id"] == customer.session_id
    started_c = await customer.wait_for("call_started")
    started_a = await agent.wait_for("call_started")
    assert started_c["peer"]["role"] == "agent" and started_a["peer"]["display_name"] == "王女士"

    # the call's media is on the customer's node; the agent's peer connection goes there
    await customer.wait_media(frames=45)
    await agent.wait_media(frames=45)
    media = a.hub.find(customer.session_id)
    assert media is not None and b.hub.find(customer.session_id) is None
    assert (
        media.tap("agent", "video").frames_in >= 45
        and media.tap("customer", "audio").frames_in >= 45
    )
    row = await _row(a, customer.session_id)
    assert (row.state, row.node_id) == ("active", "node-a")

    await agent.hangup()
    assert (await customer.wait_for("call_ended"))["reason"] == "agent_hangup"
    assert (await agent.wait_for("call_ended"))["reason"] == "agent_hangup"
    await agent.wait_for("status", status="away")
    assert a.hub.find(customer.session_id) is None
    kinds = [e.kind for e in await session_events(a, customer.session_id)]
    assert kinds.index("offered") < kinds.index("call_started") < kinds.index("ended"), kinds

    # back on its own node, the agent is offered the next customer again, wherever it waits
    await agent.set_ready()
    second = await b.customer("account_opening", "李先生")
    assert (await agent.next_offer())["session_id"] == second.session_id


async def test_the_queue_is_one_queue_in_join_order_and_skills_across_nodes(nodes) -> None:
    a, b = nodes
    loan = await a.customer("loan_signing", "贷款客户")
    first = await a.customer("account_opening", "先到")
    second = await b.customer("account_opening", "后到")
    # positions count the whole counter's queue, per business
    assert (await second.wait_for("queue_update"))["position"] == 2
    assert (await first.wait_for("queue_update"))["position"] == 1

    bob = await b.agent("bob")  # account opening only: never offered the loan customer
    offer = await bob.next_offer()
    assert offer["session_id"] == first.session_id  # the longest waiting, on the other node
    await bob.send({"type": "decline", "session_id": first.session_id})
    offer = await bob.next_offer()
    assert offer["session_id"] == second.session_id  # not offered the declined one again
    await bob.send({"type": "decline", "session_id": second.session_id})
    await bob.wait_for("status", status="ready")

    carol = await a.agent("carol")  # loan signing only
    assert (await carol.next_offer())["session_id"] == loan.session_id
    alice = await b.agent("alice")
    assert (await alice.next_offer())["session_id"] == first.session_id
    assert bob.count("customer_offer") == 2


async def test_a_customer_rejoins_through_the_other_node_and_the_call_carries_media(nodes) -> None:
    a, b = nodes
    customer = await a.customer("wealth_product", "赵阿姨")
    await customer.wait_for("queue_update")
    session_id, token = customer.session_id, customer.rejoin_token
    await customer.drop()

    again = b.participant("customer-again")
    rejoined = await again.rejoin(session_id, token)
    assert rejoined["state"] == "queued"
    assert (await again.wait_for("queue_update"))["position"] == 1

    agent = await a.agent("alice")
    await agent.accept_next()
    await again.wait_for("call_started")
    await again.wait_media(frames=30)
    await agent.wait_media(frames=30)
    assert a.hub.find(session_id) is not None and b.hub.find(session_id) is None

    await again.hangup()
    assert (await agent.wait_for("call_ended"))["reason"] == "customer_hangup"
    await eventually(lambda: _ended(a, session_id))


async def test_a_stranger_cannot_rejoin_through_the_other_node(nodes) -> None:
    a, b = nodes
    customer = await a.customer("account_opening", "钱女士")
    await customer.wait_for("queue_update")
    stranger = b.participant("stranger")
    with pytest.raises(Exception, match="rejoin token does not match|forbidden"):
        await stranger.rejoin(customer.session_id, "x" * 43)
    assert (await _row(a, customer.session_id)).state == "queued"


async def _ended(counter, session_id: str) -> bool:
    return (await _row(counter, session_id)).state == "ended"


async def test_a_dead_nodes_waiting_customer_comes_back_through_the_other_and_keeps_its_place(
    mortal,
) -> None:
    a, b = mortal
    first = a.participant("customer-first")
    await first.join("account_opening", "先到", face_consent=True)
    await first.wait_for("queue_update")
    second = await b.customer("account_opening", "后到")
    assert (await second.wait_for("queue_update"))["position"] == 2

    # node A dies: its heartbeat stops and its customers' sockets drop with it
    await _kill(a)
    await first.drop()
    await eventually(lambda: _dead(b, "node-a"), timeout=10)

    # an agent who gets ready meanwhile is not offered the unreachable customer of the dead node
    alice = await b.agent("alice")
    assert (await alice.next_offer())["session_id"] == second.session_id
    await alice.send({"type": "decline", "session_id": second.session_id})
    await alice.wait_for("status", status="ready")

    back = b.participant("customer-back")
    rejoined = await back.rejoin(first.session_id, first.rejoin_token)
    assert rejoined["state"] == "queued"
    assert (await back.wait_for("queue_update"))[
        "position"
    ] == 1  # still ahead of the later customer
    # the ready agent is offered the customer who came back: their place was kept
    assert (await alice.next_offer())["session_id"] == first.session_id
    assert (await _row(b, first.session_id)).node_id == "node-b"
    # the face-check consent the customer gave on node A holds on node B
    assert b.broker.session(first.session_id).face_consent is True
    kinds = [e.kind for e in await session_events(b, first.session_id)]
    assert "session_adopted" in kinds and kinds.index("session_adopted") < kinds.index(
        "customer_rejoined"
    )

    await alice.send({"type": "accept", "session_id": first.session_id})
    await back.wait_for("call_started")
    await back.wait_media(frames=30)
    assert b.hub.find(first.session_id) is not None


async def test_a_dead_nodes_customer_who_never_comes_back_leaves_the_queue(
    make_counter, video_clip, audio_clip, redis_url
) -> None:
    shared = {"redis_url": redis_url, "redis_prefix": f"t{secrets.token_hex(4)}:"}
    # A's own timers must not act once it is "dead" (in this process it still runs): a long window
    a = await make_counter(video_clip, audio_clip, node_id="node-a", node_lease_s=1.0, **shared)
    b = await make_counter(
        video_clip, audio_clip, node_id="node-b", node_lease_s=1.0, rejoin_window_s=1.0, **shared
    )
    gone = await a.customer("account_opening", "不回来", media=False)
    await gone.wait_for("queue_update")
    later = await b.customer("account_opening", "后到", media=False)
    assert (await later.wait_for("queue_update"))["position"] == 2
    await _kill(a)
    await gone.drop()
    # past the lease and the rejoin window node B closes the session: the later customer moves up
    await later.wait_for("queue_update", position=1, timeout=20)
    row = await _row(b, str(gone.session_id))
    assert (row.state, row.end_reason) == ("failed", "server_restart")
    agent = await b.agent("bob", ready=False)
    assert (await agent.wait_for("queue_stats"))["waiting"]["account_opening"] == 1


async def _dead(counter, node_id: str) -> bool:
    info = await counter.app[NODES].node(node_id)
    return info is not None and not info.alive


async def test_the_wait_estimate_learns_from_calls_on_every_node(nodes) -> None:
    a, b = nodes
    customer = await a.customer("loan_signing", "孙先生", media=False)
    agent = await a.agent("carol", media=False)
    await agent.accept_next()
    await customer.wait_for("call_started")
    await customer.hangup()
    await agent.wait_for("call_ended", allow_errors=True)  # its media offer may meet the hang-up
    # a customer on the other node is told a wait from that short call, not the 180 s default
    later = await b.customer("loan_signing", "周女士", media=False)
    estimate = (await later.wait_for("queue_update"))["estimated_wait_s"]
    assert estimate < 30, estimate


async def test_http_about_a_session_is_served_by_the_node_holding_it(
    make_counter, face_clip, same_person_photo, audio_clip, redis_url
) -> None:
    shared = {
        "redis_url": redis_url,
        "redis_prefix": f"t{secrets.token_hex(4)}:",
        "identity": True,
        "identity_workers": 1,
    }
    a = await make_counter(face_clip, audio_clip, node_id="node-a", **shared)
    b = await make_counter(face_clip, audio_clip, node_id="node-b", **shared)
    for node in (a, b):
        await node.app[NODES].set_address(node.url)
    customer = a.participant("customer")
    joined = await customer.join("account_opening", "张三", face_consent=True)
    sid, token = joined["session_id"], joined["rejoin_token"]

    async with aiohttp.ClientSession() as http:
        # the customer's page uploads the ID photo through the other node
        async with http.post(
            f"{b.url}/api/identity/{sid}/reference",
            data=same_person_photo,
            headers={"Content-Type": "image/jpeg", "X-Session-Token": token},
        ) as r:
            assert r.status == 200, await r.text()
            assert (await r.json())["reference"]["source"] == "upload"
        async with http.post(
            f"{b.url}/api/identity/{sid}/reference",
            data=same_person_photo,
            headers={"Content-Type": "image/jpeg", "X-Session-Token": "x" * 43},
        ) as r:
            assert r.status == 403  # the holding node checks the token
        token_a = await login(a, "auditor")
        async with http.get(
            f"{b.url}/api/identity/{sid}/evidence", headers={"Authorization": f"Bearer {token_a}"}
        ) as r:
            assert r.status == 200
            assert sorted(i["kind"] for i in (await r.json())["items"]) == [
                "reference_embedding",
                "reference_image",
            ]
    assert a.app[IDENTITY].state(sid).reference is not None


async def test_new_sessions_go_to_the_less_loaded_node_and_not_to_a_draining_one(
    make_counter, video_clip, audio_clip, redis_url
) -> None:
    a, b = await _two_nodes(make_counter, video_clip, audio_clip, redis_url, node_lease_s=0.6)
    first = await a.customer("account_opening", "一号", media=False)
    await first.wait_for("queue_update")
    second = await a.customer("account_opening", "二号", media=False)
    await second.wait_for("queue_update")
    assert {s.id for s in a.broker.sessions} == {first.session_id, second.session_id}
    await eventually(lambda: _load_seen(b, "node-a", 2))

    # A holds two sessions more than B: the next customer reaching A lives on B
    third = await a.customer("account_opening", "三号", media=False)
    assert (await third.wait_for("queue_update"))["position"] == 3
    assert (
        b.broker.session(third.session_id) is not None
        and a.broker.session(third.session_id) is None
    )
    assert (await _row(b, third.session_id)).node_id == "node-b"

    # B drains (vcounter drain): from its next heartbeat it places new sessions on A
    await b.db.run(lambda s: set_draining(s, "node-b", True))
    await eventually(lambda: b.app[NODES].draining)
    fourth = await b.customer("account_opening", "四号", media=False)
    await fourth.wait_for("queue_update")
    assert a.broker.session(fourth.session_id) is not None
    status, _ = await _healthz(b.url)
    assert status == 503  # the balancer's health check sends new clients elsewhere
    # a draining node goes on serving: its agents still take customers
    agent = await b.agent("alice", media=False)
    assert (await agent.next_offer())["session_id"] == first.session_id


async def _load_seen(counter, node_id: str, sessions: int) -> bool:
    view = await counter.app[NODES].view(node_id)
    return view is not None and view.load.get("sessions") == sessions


async def _healthz(url: str) -> tuple[int, dict]:
    async with aiohttp.ClientSession() as http, http.get(f"{url}/healthz") as r:
        return r.status, await r.json()


async def test_a_call_whose_node_dies_resumes_on_the_other_with_its_agent_and_flow(mortal) -> None:
    a, b = mortal
    customer = await a.customer("account_opening", "钱先生")
    agent = await a.agent("alice")
    await agent.accept_next()
    await agent.wait_for("flow_state", timeout=10)
    await customer.wait_media(frames=10)
    done = [await do_step(customer, agent) for _ in range(2)]  # consent, identity...
    session_id, token = str(customer.session_id), customer.rejoin_token
    await eventually(lambda: _kept_at(b, session_id, 2))  # the progress is in the database

    # node A dies mid-call, both parties' sockets with it; both come back through node B
    await _kill(a)
    await customer.drop()
    await agent.drop()
    await eventually(lambda: _dead(b, "node-a"), timeout=10)

    back = b.participant("customer-back")
    assert (await back.rejoin(session_id, token))["state"] == "active"
    await back.wait_for("call_started")
    await back.wait_for("peer_reconnecting")  # the agent is not back yet
    alice = await b.agent("alice", ready=False)
    started = await alice.wait_for("call_started")
    assert started["session_id"] == session_id  # the same call, not a new offer
    assert alice.count("customer_offer") == 0
    state = (await alice.wait_for("flow_state", timeout=10))["state"]
    assert [s["status"] for s in state["steps"][:2]] == ["done", "done"], state["steps"]
    assert state["current"]["id"] == state["steps"][2]["id"]  # where it was, not from the start
    await back.wait_for("peer_reconnected")
    await alice.wait_media(frames=20)
    await back.wait_media(frames=20)
    assert b.hub.find(session_id) is not None

    kinds = [e.kind for e in await session_events(b, session_id)]
    assert kinds.index("session_adopted") < kinds.index("call_resumed")
    assert "flow_resumed" in kinds and kinds.count("flow_started") == 1 and "requeued" not in kinds
    resumed = next(e for e in await session_events(b, session_id) if e.kind == "call_resumed")
    assert 0 < resumed.data["interrupted_s"] < 30
    # and it goes on to the end there, in a new recording leg made by node B
    await run_flow(back, alice)
    assert current(alice)["status"] == "completed"
    assert [s["id"] for s in done] == [s["id"] for s in state["steps"][:2]]
    await alice.hangup()
    legs = await b.db.run(
        lambda s: s.exec(select(Recording).where(Recording.session_id == session_id)).all()
    )
    assert sorted(r.leg for r in legs) == [1, 2]


async def test_an_agent_on_the_surviving_node_carries_the_call_on_there(mortal) -> None:
    a, b = mortal
    customer = await a.customer("loan_signing", "孙女士")
    assert (await customer.wait_for("queue_update"))["position"] == 1
    agent = await b.agent("carol")  # relayed to node A, where the call's media is
    await agent.accept_next()
    await agent.wait_media(frames=20)
    session_id, token = str(customer.session_id), customer.rejoin_token

    since = len(agent.messages)
    await _kill(a)
    await customer.drop()
    # node B notices, takes the session over and gives its agent the call back at once
    restarted = await agent.wait_for("call_started", since=since, timeout=15)
    assert restarted["session_id"] == session_id
    assert agent.count("call_ended") == 0
    back = b.participant("customer-back")
    assert (await back.rejoin(session_id, token))["state"] == "active"
    await back.wait_media(frames=20)
    await agent.wait_media(frames=20)
    assert b.hub.find(session_id) is not None
    row = await _row(b, session_id)
    assert (row.state, row.node_id) == ("active", "node-b")
    await back.hangup()
    assert (await agent.wait_for("call_ended", since=since))["reason"] == "customer_hangup"


async def _kept_at(counter, session_id: str, index: int) -> bool:
    row = await counter.db.run(lambda s: s.get(FlowRunRecord, session_id))
    return row is not None and json.loads(row.data)["current"] == index


async def test_a_recording_on_one_nodes_disk_is_replayed_and_verified_through_the_other(
    make_counter, video_clip, audio_clip, redis_url, tmp_path
) -> None:
    shared = {
        "redis_url": redis_url,
        "redis_prefix": f"t{secrets.token_hex(4)}:",
        "database_url": f"sqlite:///{tmp_path / 'shared.db'}",
    }
    a = await make_counter(
        video_clip, audio_clip, node_id="node-a", data_dir=tmp_path / "a", **shared
    )
    b = await make_counter(
        video_clip, audio_clip, node_id="node-b", data_dir=tmp_path / "b", **shared
    )
    for node in (a, b):
        await node.app[NODES].set_address(node.url)
    session_id, recording_id = await recorded_call(a)
    token = await login(b, "auditor")
    headers = {"Authorization": f"Bearer {token}"}
    async with aiohttp.ClientSession() as http:
        url = f"{b.url}/api/audit/recordings/{recording_id}"
        async with http.get(f"{url}/verify", headers=headers) as r:
            assert r.status == 200 and (await r.json())["ok"] is True
        async with http.get(f"{url}/customer.webm", headers=headers) as r:
            assert r.status == 200 and r.headers["Content-Type"] == "video/webm"
            whole = await r.read()
        async with http.get(
            f"{url}/customer.webm", headers={**headers, "Range": "bytes=100-199"}
        ) as r:
            assert r.status == 206 and await r.read() == whole[100:200]
            assert r.headers["Content-Range"] == f"bytes 100-199/{len(whole)}"
        async with http.get(f"{url}/customer.webm") as r:
            assert r.status == 401  # the recording's node checks the credentials
        # the session's page through B lists A's recording with its outputs and timeline
        async with http.get(f"{b.url}/api/audit/sessions/{session_id}", headers=headers) as r:
            assert r.status == 200
            (listed,) = (await r.json())["recordings"]
        assert listed["id"] == recording_id
        assert {o["party"] for o in listed["outputs"]} == {"customer", "agent"}
        assert any(e.get("kind") == "recording_started" for e in listed["timeline"])
        async with http.get(f"{url}/manifest") as r:
            assert r.status == 401
    assert whole[:4] == b"\x1a\x45\xdf\xa3"  # EBML: a WebM file

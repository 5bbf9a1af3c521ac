"""An agent whose connection drops mid-call has the rejoin window to come back to the same call:
the customer waits in the call (told the agent is reconnecting), the recording goes on, and the
flow and identity panel come back to the agent's page. Not back in time: the customer goes to the
head of the queue."""

from __future__ import annotations

import asyncio
import time

import aiohttp

from server.appkeys import CONFIG

from .flow_driver import do_step
from .helpers import login, session_events
from .recordings import decrypt_output, demux, wait_recordings


async def test_an_agent_back_within_the_window_carries_on_the_same_call_and_recording(
    make_counter, video_clip, audio_clip
) -> None:
    counter = await make_counter(video_clip, audio_clip)
    config = counter.app[CONFIG]
    customer = await counter.customer("account_opening", "周阿姨")
    alice = await counter.agent("alice")
    await alice.accept_next()
    accepted = time.monotonic()
    flow_before = (await alice.wait_for("flow_state", timeout=10))["state"]
    await alice.wait_media(frames=20)
    await customer.wait_media(frames=20)
    done = await do_step(customer, alice)  # one step done before the drop

    since = len(customer.messages)
    before_drop_s = time.monotonic() - accepted
    await alice.drop()
    reconnecting = await customer.wait_for("peer_reconnecting", since=since)
    assert reconnecting["window_s"] == 30
    session = counter.broker.session(customer.session_id)
    assert session is not None and session.state == "active"

    back = await counter.agent("alice", ready=False)  # the agent's page reloaded
    started = await back.wait_for("call_started")
    assert started["session_id"] == customer.session_id
    await back.wait_for("status", status="busy")
    flow = (await back.wait_for("flow_state", timeout=10))["state"]
    assert flow["steps"][0]["id"] == done["id"] and flow["steps"][0]["status"] == "done"
    assert flow["current"]["id"] == flow_before["steps"][1]["id"]  # where it was
    await customer.wait_for("peer_reconnected", since=since)
    await back.wait_media(frames=20)  # the customer's picture reaches the agent again
    await customer.wait_media(frames=20)  # and the agent's the customer
    await asyncio.sleep(1.0)

    await back.send({"type": "hangup"})
    await customer.wait_for("call_ended")
    kinds = [e.kind for e in await session_events(counter, str(customer.session_id))]
    assert kinds.index("agent_disconnected") < kinds.index("agent_rejoined") < kinds.index("ended")
    assert "requeued" not in kinds and kinds.count("call_started") == 1

    (recording,) = await wait_recordings(counter.db, str(customer.session_id))
    assert recording.state == "finalized"
    token = await login(counter, "auditor")
    async with aiohttp.ClientSession() as http:
        async with http.get(
            f"{counter.url}/api/audit/recordings/{recording.id}/verify",
            headers={"Authorization": f"Bearer {token}"},
        ) as r:
            assert r.status == 200 and (await r.json())["ok"] is True
    webm = decrypt_output(config.recordings_dir / recording.id, config.master_key_file, "agent")
    times = [t for t, _ in demux(webm)["video"]]
    # one recording holds the agent's picture from before the drop and from after the rejoin
    assert times[-1] - times[0] >= before_drop_s + 0.8, (times[0], times[-1], before_drop_s)

"""Identity wired into a call: real aiortc peers, a real face clip, real photos, real workers.

The customer's camera plays d13 (one man talking, blinking); the agent's
plays synthetic bars (no face). References: a frame of d13 taken seconds away
from the frames the server sees (same person), and Joe Biden (different).
"""

from __future__ import annotations

import asyncio
import io

import aiohttp
import av
import numpy as np
from PIL import Image
from sqlmodel import select

from identity.decision import ACCEPT_THRESHOLD, MIN_FRAMES, REJECT_THRESHOLD
from server.db import AccessLog
from signaling.contrib.encoded_source import encode_video

from .helpers import (
    eventually,
    login,
    session_events,
    shared_data,
    upload_reference,
    wait_event,
)


async def _call(counter, bars, face_consent: bool = True):
    customer = counter.participant("customer")
    joined = await customer.join("account_opening", "张三", face_consent=face_consent)
    agent = await counter.agent("alice", video=bars)
    await agent.accept_next()
    await customer.wait_for("call_started")
    await asyncio.gather(
        customer.wait_media(frames=5, timeout=30), agent.wait_media(frames=5, timeout=30)
    )
    return customer, agent, joined


async def test_reference_upload_verification_liveness_snapshot_and_presence(
    make_counter, face_clip, same_person_photo, audio_clip, video_clip
):
    counter = await make_counter(
        face_clip,
        audio_clip,
        identity=True,
        liveness_steps="blink",
        liveness_step_seconds=8.0,
        presence_missing_s=2.0,
    )
    customer = counter.participant("customer")
    joined = await customer.join("account_opening", "张三", face_consent=True)
    sid, token = joined["session_id"], joined["rejoin_token"]

    # bad uploads first: clear errors, nothing stored
    assert (await upload_reference(counter, sid, token, b"this is not an image"))[0] == 400
    status, body = await upload_reference(
        counter, sid, token, (shared_data("faces/dlib_multi/dogs.jpg")).read_bytes()
    )
    assert status == 422 and body["error"] == "no_face"
    status, body = await upload_reference(counter, sid, "x" * 43, same_person_photo)
    assert status == 403
    status, body = await upload_reference(
        counter, "someone-elses-session", token, same_person_photo
    )
    assert status == 403
    # the real ID photo
    status, body = await upload_reference(counter, sid, token, same_person_photo)
    assert status == 200, body
    assert body["reference"]["source"] == "upload"

    agent = await counter.agent("alice", video=video_clip)  # colour bars: no face
    await agent.accept_next()
    await customer.wait_for("call_started")
    await asyncio.gather(
        customer.wait_media(frames=5, timeout=30), agent.wait_media(frames=5, timeout=30)
    )

    # verification runs on its own when the call starts with a reference
    verified = await wait_event(
        counter, sid, {"identity_verified", "identity_rejected", "identity_inconclusive"}
    )
    assert verified.kind == "identity_verified", verified.data
    assert verified.data["distance"] <= verified.data["threshold"] == ACCEPT_THRESHOLD
    # one verdict on the mean of several frames taken at different moments
    assert verified.data["frames"] == len(verified.data["distances"]) >= MIN_FRAMES
    assert len(verified.data["snapshot_sha256"]) == 64
    outcome = await customer.wait_for(
        "verification_result", timeout=20, where=lambda d: d["verified"]
    )
    assert "distance" not in outcome  # the customer is told the result, not the scores
    panel = await agent.wait_for(
        "identity",
        timeout=10,
        where=lambda d: (d["state"].get("verification") or {}).get("verified"),
    )
    assert (
        panel["state"]["verification"]["score"] >= 50
        and panel["state"]["reference"]["source"] == "upload"
    )

    # liveness: a blink challenge, shown to the customer, judged on the live frames
    await agent.send({"type": "liveness_start"})
    challenge = await customer.wait_for("liveness_challenge", timeout=10)
    assert challenge["steps"] == ["blink"] and challenge["instructions"][0]["zh"]
    result = await customer.wait_for("liveness_result", timeout=30)
    assert result["passed"], result
    passed = await wait_event(counter, sid, {"liveness_passed", "liveness_failed"})
    assert passed.kind == "liveness_passed" and passed.data["evidence"]["steps"][0]["frames"]

    # snapshot: kept encrypted, viewable by this agent and by auditors (logged), not by others
    await agent.send({"type": "capture_snapshot"})
    snap = await wait_event(counter, sid, {"snapshot_captured"})
    url = f"{counter.url}/api/identity/{sid}/evidence/{snap.data['item']}"
    for who, expected in (("alice", 200), ("bob", 403), ("auditor", 200)):
        token_ = await login(counter, who)
        async with (
            aiohttp.ClientSession() as http,
            http.get(url, headers={"Authorization": f"Bearer {token_}"}) as r,
        ):
            assert r.status == expected, who
            if expected == 200:
                img = Image.open(io.BytesIO(await r.read()))
                assert img.format == "JPEG" and img.size == (640, 480)
    async with aiohttp.ClientSession() as http, http.get(url) as r:
        assert r.status == 401
    logged = await counter.db.run(lambda s: list(s.exec(select(AccessLog)).all()))
    assert any(
        e.action.startswith("evidence_view") and snap.data["item"] in e.target for e in logged
    )
    # presence: the agent's video shows no face -> an anomaly for the agent, none for the customer
    missing = await wait_event(counter, sid, {"face_missing"}, timeout=20)
    assert missing.data["subject"] == "agent"
    await asyncio.sleep(4.5)  # two more presence checks (every 2 s) of the customer: unflagged
    kinds = [(e.kind, e.data.get("subject")) for e in await session_events(counter, sid)]
    assert ("face_missing", "customer") not in kinds and ("face_mismatch", "customer") not in kinds
    await agent.hangup()
    await customer.wait_for("call_ended")


async def test_different_person_is_rejected(make_counter, face_clip, audio_clip, video_clip):
    counter = await make_counter(face_clip, audio_clip, identity=True)
    customer, agent, joined = await _call(counter, video_clip)
    sid, token = joined["session_id"], joined["rejoin_token"]
    biden = shared_data("faces/face_recognition/tests/test_images/biden.jpg").read_bytes()
    status, body = await upload_reference(counter, sid, token, biden)
    assert status == 200, body
    rejected = await wait_event(
        counter, sid, {"identity_verified", "identity_rejected", "identity_inconclusive"}
    )
    assert rejected.kind == "identity_rejected", rejected.data
    assert rejected.data["distance"] > rejected.data["reject_threshold"] == REJECT_THRESHOLD
    # the frames and distances behind the anomaly are kept for the auditor
    assert len(rejected.data["snapshots"]) == rejected.data["frames"] >= MIN_FRAMES
    assert len(rejected.data["distances"]) == rejected.data["frames"]
    assert all(len(h) == 64 for h in rejected.data["snapshots_sha256"])
    outcome = await customer.wait_for(
        "verification_result", timeout=20, where=lambda d: d["reason"] == "mismatch"
    )
    assert outcome["verified"] is False and outcome["verdict"] == "no_match"


async def test_without_face_consent_only_manual_verification(
    make_counter, face_clip, audio_clip, same_person_photo, video_clip
):
    counter = await make_counter(face_clip, audio_clip, identity=True)
    customer, agent, joined = await _call(counter, video_clip, face_consent=False)
    sid, token = joined["session_id"], joined["rejoin_token"]
    status, body = await upload_reference(counter, sid, token, same_person_photo)
    assert status == 409 and body["error"] == "face_consent_required"
    await agent.send({"type": "identity_verify"})
    err = await agent.wait_for("error", timeout=5)
    assert err["code"] == "face_consent_required"
    await agent.send(
        {"type": "manual_verification", "verified": True, "reason": "checked the ID card on camera"}
    )
    manual = await wait_event(counter, sid, {"identity_manual"})
    assert manual.data == {
        "verified": True,
        "reason": "checked the ID card on camera",
        "by": "alice",
        "face_consent": False,
    }
    consent = [e for e in await session_events(counter, sid) if e.kind == "face_consent"]
    assert [e.data["accepted"] for e in consent] == [False]
    # the customer changes their mind: consent recorded, the upload now works
    await customer.send({"type": "face_consent", "accepted": True})

    async def consents() -> list[bool]:
        return [
            e.data["accepted"]
            for e in await session_events(counter, sid)
            if e.kind == "face_consent"
        ]

    async def second_consent_recorded() -> bool:
        return len(await consents()) == 2

    await eventually(second_consent_recorded)
    assert await consents() == [False, True]
    status, body = await upload_reference(counter, sid, token, same_person_photo)
    assert status == 200, body


def _still_y4m(image, out, seconds: float = 2.0):
    """``image`` as a still video (the same frame repeated): a photo held up to the camera."""
    img = Image.open(image).convert("RGB").resize((640, 480))
    yuv = av.VideoFrame.from_ndarray(np.asarray(img), format="rgb24").reformat(format="yuv420p")
    planes = b"".join(
        np.frombuffer(bytes(p), dtype=np.uint8)[: p.line_size * p.height]
        .reshape(p.height, p.line_size)[:, : p.width]
        .tobytes()
        for p in yuv.planes
    )
    with open(out, "wb") as f:
        f.write(b"YUV4MPEG2 W640 H480 F30:1 Ip A1:1 C420jpeg\n")
        for _ in range(int(seconds * 30)):
            f.write(b"FRAME\n" + planes)
    return out


async def test_two_people_in_the_customer_video_raise_multiple_faces(
    make_counter, audio_clip, video_clip, tmp_path
):
    still = _still_y4m(
        shared_data("faces/face_recognition/examples/two_people.jpg"), tmp_path / "two.y4m"
    )
    counter = await make_counter(encode_video(still, seconds=2.0), audio_clip, identity=True)
    customer, agent, joined = await _call(counter, video_clip)
    event = await wait_event(counter, joined["session_id"], {"multiple_faces"}, timeout=20)
    assert event.data["subject"] == "customer" and event.data["faces"] >= 2
    panel = await agent.wait_for(
        "identity",
        timeout=10,
        where=lambda d: (d["state"]["presence"].get("customer") or {}).get("multiple"),
    )
    assert panel["state"]["presence"]["customer"]["faces"] >= 2

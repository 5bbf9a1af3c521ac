"""Every call is recorded: both parties' audio and video, untranscoded, verifiable."""

from __future__ import annotations

import asyncio
import time

import pytest

from recorder import MasterKey, SigningKey, verify
from server.appkeys import CONFIG

from .helpers import audited_session
from .recordings import decrypt_output, demux, first_video_frame, stream_info, wait_recordings


@pytest.mark.parametrize("backend", ["local", "shared"], indirect=True)
async def test_call_produces_a_verifiable_dual_recording(counter, video_clip, audio_clip):
    config = counter.app[CONFIG]
    customer = await counter.customer("wealth_product", "Recorded customer")
    agent = await counter.agent("alice")
    await agent.accept_next()
    await customer.wait_media(frames=10)
    await agent.wait_media(frames=10)
    t0 = time.monotonic()
    await asyncio.sleep(4.0)  # the call goes on for a while
    await customer.hangup()
    call_s = time.monotonic() - t0
    await agent.wait_for("call_ended")

    [row] = await wait_recordings(counter.db, customer.session_id)
    assert row.state == "finalized" and row.retention_until is not None
    directory = config.recordings_dir / row.id
    assert row.id == f"{customer.session_id}-1"

    # integrity: chain, signature against the server's key, decryptability
    trusted = SigningKey.load(config.signing_key_file).public_pem()
    result = await asyncio.to_thread(
        verify, directory, MasterKey.load(config.master_key_file), trusted
    )
    assert result.ok, result.reason

    sent_video = set(video_clip.packets)
    sent_audio = set(audio_clip.packets)
    starts = {}
    for party in ("customer", "agent"):
        webm = decrypt_output(directory, config.master_key_file, party)
        assert stream_info(webm) == {"video": "vp8", "audio": "opus"}
        packets = demux(webm)
        video, audio = packets["video"], packets["audio"]
        # what was recorded is exactly what was sent: no transcoding on the way
        assert video and all(p in sent_video for _, p in video)
        assert audio and all(p in sent_audio for _, p in audio)
        # durations within 0.5 s of the call (the call includes setup before the sleep)
        video_span = video[-1][0] - video[0][0]
        audio_span = audio[-1][0] - audio[0][0]
        assert video_span >= call_s - 0.5 and abs(audio_span - video_span) < 0.3, (
            video_span,
            audio_span,
        )
        # audio and video of a party start together
        assert abs(video[0][0] - audio[0][0]) < 0.1
        starts[party] = video[0][0]
        frame = first_video_frame(webm)
        assert (frame.width, frame.height) == (640, 480)
    # both parties on one timeline: they started within 0.1 s of each other
    assert abs(starts["customer"] - starts["agent"]) < 0.15, starts


async def test_recording_timeline_carries_session_events(counter):
    import json

    config = counter.app[CONFIG]
    customer = await counter.customer("account_opening", "Timeline")
    agent = await counter.agent("bob")
    await agent.accept_next()
    await agent.wait_media(frames=10)
    await customer.drop()
    await agent.wait_for("peer_reconnecting")
    back = counter.participant("back")
    await back.rejoin(customer.session_id, customer.rejoin_token)
    await agent.wait_for("peer_reconnected")
    await agent.wait_media(frames=15, kinds=("video",))
    await agent.hangup()
    [row] = await wait_recordings(counter.db, customer.session_id)
    manifest = json.loads((config.recordings_dir / row.id / "manifest.json").read_text())
    kinds = [e["kind"] for e in manifest["timeline"]["events"]]
    for expected in (
        "recording_started",
        "customer_disconnected",
        "customer_rejoined",
        "recording_stopped",
    ):
        assert expected in kinds, kinds
    offsets = [e["offset_ms"] for e in manifest["timeline"]["events"]]
    assert offsets == sorted(offsets)
    assert manifest["metadata"]["agent"]["username"] == "bob"
    assert manifest["metadata"]["business"] == "account_opening"


async def test_disk_full_during_recording_alerts_and_loses_nothing(counter, monkeypatch):
    """Storage refuses writes for a while: the call goes on, the alert is an anomaly, nothing is lost."""
    import errno

    from recorder.storage import LocalStorage

    config = counter.app[CONFIG]
    customer = await counter.customer("loan_signing", "Disk full")
    agent = await counter.agent("carol")
    await agent.accept_next()
    await agent.wait_media(frames=10)
    original = LocalStorage.put_bytes
    full = {"on": True}

    def put_bytes(self, name, data):
        if full["on"] and name.startswith("segments/"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return original(self, name, data)

    monkeypatch.setattr(LocalStorage, "put_bytes", put_bytes)
    t0 = time.monotonic()
    await asyncio.sleep(4.5)  # two or three segments cannot be stored
    full["on"] = False
    await asyncio.sleep(
        2.5
    )  # storage works again: the call goes on while the kept segments are stored
    await agent.wait_media(frames=10)  # media never stopped
    await agent.hangup()
    call_s = time.monotonic() - t0
    [row] = await wait_recordings(counter.db, customer.session_id)
    assert row.state == "finalized"
    video = demux(
        decrypt_output(config.recordings_dir / row.id, config.master_key_file, "customer")
    )["video"]
    # the seconds recorded while the disk was full are in the recording
    assert video[-1][0] - video[0][0] >= call_s - 0.5
    detail = await audited_session(counter, customer.session_id)
    assert "recording_alert" in detail["session"]["anomalies"]
    assert any(
        e["kind"] == "recording_alert" and "disk full" in e["data"]["message"]
        for e in detail["events"]
    )

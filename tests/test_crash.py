"""A killed server (kill -9) loses nothing already recorded and closes what it left open."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from sqlmodel import select

from recorder import MasterKey, SigningKey, verify
from server.db import CallSession, Database, SessionEvent
from signaling.contrib.headless import HeadlessParticipant

from .helpers import PASSWORD, eventually
from .recordings import decrypt_output, demux
from .server_process import ServerProcess

pytestmark = pytest.mark.slow


@pytest.fixture
async def server_process(tmp_path):
    keys = tmp_path / "keys"
    server = ServerProcess(
        tmp_path / "data",
        env={
            "VCOUNTER_MASTER_KEY_FILE": str(keys / "master.key"),
            "VCOUNTER_SIGNING_KEY_FILE": str(keys / "signing.pem"),
        },
    )
    done = server.cli(
        "user",
        "add",
        "--role",
        "agent",
        "--username",
        "alice",
        "--password",
        PASSWORD,
        "--skills",
        "account_opening",
    )
    assert done.returncode == 0, done.stderr
    await server.start()
    yield server
    server.stop()


async def test_kill9_mid_call_then_restart_recovers_the_recording(
    server_process, video_clip, audio_clip
):
    server = server_process
    customer = HeadlessParticipant(server.url, video=video_clip, audio=audio_clip, name="customer")
    agent = HeadlessParticipant(server.url, video=video_clip, audio=audio_clip, name="agent")
    try:
        await customer.join("account_opening", "Crash victim")
        await agent.login("alice", PASSWORD)
        await agent.set_ready()
        await agent.accept_next()
        await agent.wait_media(frames=20)
        started = time.monotonic()
        await asyncio.sleep(5.0)  # the call goes on: a few segments are sealed
        media_s = time.monotonic() - started
        session_id = customer.session_id
        server.kill9()
        # both clients see the server go
        await eventually(lambda: customer.ws.closed and agent.ws.closed, timeout=5)
    finally:
        await customer.aclose()
        await agent.aclose()

    segments_before = sorted((server.data_dir / "recordings").glob("*/segments/*.seg"))
    assert segments_before, "sealed segments must be on disk before the crash"
    await server.start()
    db = Database(f"sqlite:///{server.data_dir / 'vcounter.db'}")
    with db.session() as s:
        row = s.get(CallSession, session_id)
        assert (row.state, row.end_reason) == ("failed", "server_restart")
        kinds = [
            e.kind
            for e in s.exec(
                select(SessionEvent)
                .where(SessionEvent.session_id == session_id)
                .order_by(SessionEvent.id)
            )
        ]
        # what happened before the crash is still there, then the failure
        assert kinds[:1] == ["queued"] and "call_started" in kinds and kinds[-1] == "failed"
    # the interrupted recording was recovered at start-up and verifies
    recording_dir = server.data_dir / "recordings" / f"{session_id}-1"
    master = MasterKey.load(server.env_path("master.key"))
    trusted = SigningKey.load(server.env_path("signing.pem")).public_pem()
    result = verify(recording_dir, master, trusted)
    assert result.ok, result.reason
    manifest = json.loads((recording_dir / "manifest.json").read_text())
    assert manifest["recovered"] is True and manifest["metadata"]["end_reason"] == "server_crash"
    video = demux(decrypt_output(recording_dir, server.env_path("master.key"), "customer"))["video"]
    recorded_s = video[-1][0] - video[0][0]
    # at most one unsealed segment (2 s) plus the setup is lost
    assert recorded_s >= media_s - 2.5, (recorded_s, media_s)
    with db.session() as s:
        from server.db import Recording

        assert s.get(Recording, f"{session_id}-1").state == "recovered"
    db.close()
    # the restarted server serves new customers
    late = HeadlessParticipant(server.url, name="after")
    try:
        await late.join("account_opening", "After the crash")
    finally:
        await late.aclose()

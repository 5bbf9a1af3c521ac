"""A killed server (kill -9) loses nothing already recorded and closes what it left open."""

from __future__ import annotations

import asyncio

import pytest
from sqlmodel import select

from server.db import CallSession, Database, SessionEvent
from signaling.client import HeadlessParticipant

from .conftest import PASSWORD
from .server_process import ServerProcess

pytestmark = pytest.mark.slow


@pytest.fixture
async def server_process(tmp_path):
    server = ServerProcess(tmp_path / "data")
    done = server.cli("user", "add", "--role", "agent", "--username", "alice", "--password", PASSWORD,
                      "--skills", "account_opening")
    assert done.returncode == 0, done.stderr
    await server.start()
    yield server
    server.stop()


async def test_kill9_mid_call_then_restart_marks_session_failed(server_process, video_clip, audio_clip):
    server = server_process
    customer = HeadlessParticipant(server.url, video=video_clip, audio=audio_clip, name="customer")
    agent = HeadlessParticipant(server.url, video=video_clip, audio=audio_clip, name="agent")
    try:
        await customer.join("account_opening", "Crash victim")
        await agent.login("alice", PASSWORD)
        await agent.set_ready()
        await agent.accept_next()
        await agent.wait_media(frames=20)
        session_id = customer.session_id
        server.kill9()
        await asyncio.sleep(0.5)
    finally:
        await customer.aclose()
        await agent.aclose()

    await server.start()
    db = Database(f"sqlite:///{server.data_dir / 'vcounter.db'}")
    try:
        with db.session() as s:
            row = s.get(CallSession, session_id)
            assert (row.state, row.end_reason) == ("failed", "server_restart")
            kinds = [e.kind for e in s.exec(select(SessionEvent).where(
                SessionEvent.session_id == session_id).order_by(SessionEvent.id))]
            # what happened before the crash is still there, then the failure
            assert kinds[:1] == ["queued"] and "call_started" in kinds and kinds[-1] == "failed"
    finally:
        db.close()
    # the restarted server serves new customers
    late = HeadlessParticipant(server.url, name="after")
    try:
        await late.join("account_opening", "After the crash")
    finally:
        await late.aclose()

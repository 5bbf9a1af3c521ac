"""The node registry: one live holder per node id, and only dead nodes' sessions are closed."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
from pathlib import Path

import aiohttp
import pytest
from sqlmodel import select

from server.db import CallSession, Database, Node, SessionEvent
from server.migrations import create_all
from server.node_registry import NodeIdInUse, NodeRegistry, list_nodes
from signaling.contrib.headless import HeadlessParticipant, ProtocolError

from .helpers import PASSWORD, eventually
from .server_process import ServerProcess


def _session(db: Database, session_id: str, node_id: str, state: str = "queued") -> None:
    with db.session() as s:
        s.add(
            CallSession(
                id=session_id,
                business="account_opening",
                state=state,
                customer_name="客户",
                node_id=node_id,
            )
        )
        s.commit()


def _state(db: Database, session_id: str) -> tuple[str, str | None]:
    with db.session() as s:
        row = s.get(CallSession, session_id)
        assert row is not None
        return row.state, row.end_reason


def _set_host(db: Database, node_id: str, host: str) -> None:
    with db.session() as s:
        row = s.get(Node, node_id)
        assert row is not None
        row.host = host
        s.add(row)
        s.commit()


@pytest.fixture
def db(tmp_path: Path):
    database = Database(f"sqlite:///{tmp_path / 'vcounter.db'}")
    create_all(database)
    yield database
    database.close()


async def test_only_the_sessions_of_a_node_that_stopped_beating_are_closed(db: Database) -> None:
    dead = NodeRegistry(db, "node-dead", lease_s=0.6)
    live = NodeRegistry(db, "node-live", lease_s=0.6)
    await dead.start()
    _session(db, "sess-of-dead", "node-dead")
    await live.start()
    _session(db, "sess-of-live", "node-live", state="active")
    assert _state(db, "sess-of-dead") == ("queued", None)  # its node is still alive

    # the dead node's process is gone: no more heartbeats, nothing released
    assert dead._task is not None
    dead._task.cancel()
    await asyncio.gather(dead._task, return_exceptions=True)

    await eventually(lambda: _state(db, "sess-of-dead")[0] == "failed", timeout=5)
    assert _state(db, "sess-of-dead") == ("failed", "server_restart")
    assert _state(db, "sess-of-live") == ("active", None)
    with db.session() as s:
        event = s.exec(select(SessionEvent).where(SessionEvent.session_id == "sess-of-dead")).one()
        assert event.kind == "failed" and event.payload == {
            "reason": "server_restart",
            "state": "queued",
            "node": "node-dead",
        }
        assert [n.id for n in list_nodes(s, 0.6)] == ["node-live"]  # the dead one is forgotten
    await live.aclose()
    with db.session() as s:
        assert s.exec(select(Node)).all() == []  # a clean stop releases the id


async def test_a_live_id_is_refused_and_an_earlier_runs_sessions_are_closed(db: Database) -> None:
    first = NodeRegistry(db, "node-a", lease_s=30)
    await first.start()
    _set_host(db, "node-a", "another-host")  # its process cannot be checked from here
    with pytest.raises(NodeIdInUse, match="'node-a' is held by a live node .another-host"):
        await NodeRegistry(db, "node-a", lease_s=30).start()
    _set_host(db, "node-a", socket.gethostname())
    await first.aclose()

    _session(db, "left-open", "node-a", state="active")  # node-a was killed during a call
    again = NodeRegistry(db, "node-a", lease_s=30)
    assert await again.start() == ["left-open"]
    assert _state(db, "left-open") == ("failed", "server_restart")
    await again.aclose()


async def test_a_second_process_with_a_live_nodes_id_refuses_to_start(tmp_path: Path) -> None:
    first = ServerProcess(tmp_path / "data")
    second = ServerProcess(tmp_path / "data")
    try:
        await first.start()
        second.spawn()
        assert second.proc is not None
        assert await asyncio.to_thread(second.proc.wait, 60) == 1
        assert "node id 'crash-test-node' is held by a live node" in second.log.read_text()

        listed = first.cli("nodes", "--json")
        assert listed.returncode == 0, listed.stderr
        nodes = json.loads(listed.stdout)
        assert [(n["id"], n["alive"]) for n in nodes] == [("crash-test-node", True)]
        assert nodes[0]["pid"] == first.proc.pid  # type: ignore[union-attr]
    finally:
        second.stop()
        first.stop()


async def test_a_second_node_with_the_default_id_leaves_the_first_nodes_customers_alone(
    tmp_path: Path, video_clip, audio_clip
) -> None:
    first = ServerProcess(tmp_path / "data")
    second = ServerProcess(tmp_path / "data")
    for node in (first, second):
        node.env.pop("VCOUNTER_NODE_ID")  # each process takes a unique default id
    customer = HeadlessParticipant(first.url, video=video_clip, audio=audio_clip, name="customer")
    try:
        await first.start()
        await customer.join("account_opening", "王先生")
        await second.start()

        sessions = json.loads(first.cli("sessions", "--json").stdout)
        assert [(s["id"], s["state"]) for s in sessions] == [(customer.session_id, "queued")]
        nodes = json.loads(first.cli("nodes", "--json").stdout)
        assert (
            len(nodes) == 2 and all(n["alive"] for n in nodes) and nodes[0]["id"] != nodes[1]["id"]
        )
        assert {n["pid"] for n in nodes} == {first.proc.pid, second.proc.pid}  # type: ignore[union-attr]
    finally:
        await customer.aclose()
        second.stop()
        first.stop()


async def test_sigterm_drains_then_stops_when_the_last_call_is_over(
    tmp_path: Path, video_clip, audio_clip
) -> None:
    node = ServerProcess(tmp_path / "data")
    customer = HeadlessParticipant(node.url, video=video_clip, audio=audio_clip, name="customer")
    agent = HeadlessParticipant(node.url, video=video_clip, audio=audio_clip, name="agent")
    late = HeadlessParticipant(node.url, name="late")
    try:
        await node.start()
        assert (
            node.cli(
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
            ).returncode
            == 0
        )
        await customer.join("account_opening", "王先生")
        await agent.login("alice", PASSWORD)
        await agent.set_ready()
        await agent.accept_next()
        await customer.wait_media(frames=20)

        assert node.proc is not None
        node.proc.send_signal(signal.SIGTERM)

        async def draining() -> bool:  # still serving, but a balancer sends new clients elsewhere
            return await _healthz_status(node.url) == 503

        await eventually(draining)
        with pytest.raises(ProtocolError, match="temporarily_unavailable"):
            await late.join("account_opening", "迟到")
        await customer.wait_media(frames=40)  # the call goes on
        assert node.proc.poll() is None

        await customer.hangup()
        assert await asyncio.to_thread(node.proc.wait, 20) == 0
        sessions = json.loads(node.cli("sessions", "--json").stdout)
        assert [(s["state"], s["end_reason"]) for s in sessions] == [("ended", "customer_hangup")]
    finally:
        for participant in (late, agent, customer):
            await participant.aclose()
        node.stop()


async def _healthz_status(url: str) -> int | None:
    try:
        async with aiohttp.ClientSession() as http, http.get(f"{url}/healthz") as r:
            return r.status
    except aiohttp.ClientError:
        return None

"""Two real ``vcounter serve`` processes behind a real nginx, sharing a real PostgreSQL and Redis:
calls through the balancer wherever the sockets land, hang-up across nodes, first starts on an
empty database, and a node killed under the balancer."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable

import aiohttp
import pytest

from signaling.contrib.encoded_source import EncodedClip
from signaling.contrib.headless import HeadlessParticipant

from .cluster_fixture import TEST_ACCOUNTS, Cluster, cluster_maker, two_node_cluster  # noqa: F401  (fixtures)
from .helpers import PASSWORD, eventually

pytestmark = pytest.mark.slow

_ACCESS = re.compile(r'"GET (/ws/\w+) HTTP/1\.1" 101 upstream=127\.0\.0\.1:(\d+)')


def _sockets_since(cluster: Cluster, offset: int) -> list[tuple[str, str]]:
    """(path, node id) of each WebSocket nginx logged after byte ``offset`` of its access log
    (nginx logs a WebSocket when it closes)."""
    text = cluster.nginx.access_log.read_bytes()[offset:].decode()
    return [(path, cluster.node_at(int(port)).node_id) for path, port in _ACCESS.findall(text)]


async def _ended(cluster: Cluster, session_id: str) -> bool:
    row = await cluster.session_row(session_id)
    return row is not None and row.state == "ended"


async def _call_through_balancer(
    cluster: Cluster, video: EncodedClip, audio: EncodedClip, extra_requests: int
) -> tuple[str, str]:
    """A customer and an agent, both given only the balancer's URL, through a whole call with
    media both ways; ``extra_requests`` other requests go between their sockets. Returns the
    nodes of the customer's session and of the agent's socket."""
    log_offset = cluster.nginx.access_log.stat().st_size
    customer = HeadlessParticipant(cluster.url, video=video, audio=audio, name="customer")
    agent = HeadlessParticipant(cluster.url, video=video, audio=audio, name="agent-alice")
    try:
        await customer.join("account_opening", "王女士")
        assert (await customer.wait_for("queue_update"))["position"] == 1
        for _ in range(extra_requests):
            await cluster.healthz()
        await agent.login("alice", PASSWORD)
        await agent.set_ready()
        offer = await agent.accept_next(timeout=15)
        assert offer["session_id"] == customer.session_id and offer["display_name"] == "王女士"
        assert (await customer.wait_for("call_started", 15))["peer"]["role"] == "agent"
        assert (await agent.wait_for("call_started", 15))["peer"]["display_name"] == "王女士"
        await customer.wait_media(frames=30, timeout=20)
        await agent.wait_media(frames=30, timeout=20)
        session_id = customer.session_id
        assert session_id is not None
        row = await cluster.session_row(session_id)
        assert row is not None and row.state == "active"
        session_node = row.node_id

        await agent.hangup()
        assert (await customer.wait_for("call_ended", 15))["reason"] == "agent_hangup"
        assert (await agent.wait_for("call_ended", 15))["reason"] == "agent_hangup"
        await eventually(lambda: _ended(cluster, session_id), timeout=15, interval=0.2)
    finally:
        await customer.aclose()
        await agent.aclose()
    sockets = await eventually(
        lambda: len(found := _sockets_since(cluster, log_offset)) >= 2 and found,
        timeout=10,
        interval=0.2,
        message=cluster.logs,
    )
    nodes = dict(sockets)
    # the session lives where the customer's socket landed
    assert nodes["/ws/customer"] == session_node, (sockets, session_node)
    return session_node, nodes["/ws/agent"]


async def test_calls_through_the_balancer_carry_media_wherever_the_sockets_land(
    cluster: Cluster, video_clip: EncodedClip, audio_clip: EncodedClip
) -> None:
    placements = []
    for extra in range(4):  # nginx alternates: one request more moves the agent to the other node
        placements.append(await _call_through_balancer(cluster, video_clip, audio_clip, extra))
        if len({c == a for c, a in placements}) == 2:
            break
    assert any(c != a for c, a in placements), f"never on different nodes: {placements}"
    assert any(c == a for c, a in placements), f"never on the same node: {placements}"

    async def no_sessions() -> bool:
        return [(await cluster.healthz(n.url))["sessions"] for n in cluster.nodes] == [0, 0]

    # every call is over and its customer gone (nginx closes the node's socket after the client's)
    await eventually(no_sessions, timeout=10, interval=0.2, message=cluster.logs)


async def test_an_agent_on_one_node_hangs_up_a_call_of_the_other(
    cluster: Cluster, video_clip: EncodedClip, audio_clip: EncodedClip
) -> None:
    a, b = cluster.node("node-a"), cluster.node("node-b")
    async with (
        HeadlessParticipant(a.url, video=video_clip, audio=audio_clip, name="customer") as customer,
        HeadlessParticipant(b.url, video=video_clip, audio=audio_clip, name="agent") as agent,
    ):
        await customer.join("loan_signing", "李先生")
        await customer.wait_for("queue_update")
        assert (await cluster.healthz(a.url))["sessions"] == 1
        assert (await cluster.healthz(b.url))["sessions"] == 0
        await agent.login("alice", PASSWORD)
        await agent.set_ready()
        assert (await agent.accept_next(timeout=15))["session_id"] == customer.session_id
        await customer.wait_for("call_started", 15)
        await agent.wait_for("call_started", 15)
        await customer.wait_media(frames=30, timeout=20)
        await agent.wait_media(frames=30, timeout=20)
        session_id = customer.session_id
        assert session_id is not None
        row = await cluster.session_row(session_id)
        assert row is not None and (row.state, row.node_id) == ("active", "node-a")
        assert (await cluster.healthz(a.url))["calls"] == 1 and (await cluster.healthz(b.url))[
            "calls"
        ] == 0

        await agent.hangup()
        assert (await customer.wait_for("call_ended", 15))["reason"] == "agent_hangup"
        assert (await agent.wait_for("call_ended", 15))["reason"] == "agent_hangup"
        await agent.wait_for("status", 15, status="away")

    await eventually(
        lambda: _ended(cluster, session_id), timeout=15, interval=0.2, message=cluster.logs
    )
    row = await cluster.session_row(session_id)
    assert row is not None and row.end_reason == "agent_hangup" and row.ended_at is not None
    assert (await cluster.healthz(a.url))["calls"] == 0


@pytest.mark.parametrize("attempt", range(3))
async def test_both_nodes_first_starting_at_once_on_an_empty_database_come_up(
    cluster_factory: Callable[..., Awaitable[Cluster]], attempt: int
) -> None:
    cluster = await cluster_factory(users=None, nginx=False)  # spawned together, each migrating
    for node in cluster.nodes:
        health = await cluster.healthz(node.url)
        assert health["node"] == node.node_id
        assert {n["id"]: n["alive"] for n in health["nodes"]} == {"node-a": True, "node-b": True}
        assert "Traceback" not in node.log_tail(100_000), node.log_tail()
    current = cluster.cli("db", "current")
    assert current.returncode == 0 and "(head)" in current.stdout, current.stdout + current.stderr
    # one schema for both: a user added now logs in on either node
    await cluster.add_users([TEST_ACCOUNTS[0]])
    for node in cluster.nodes:
        async with HeadlessParticipant(node.url, name=f"agent-on-{node.node_id}") as agent:
            assert (await agent.login(TEST_ACCOUNTS[0].username, PASSWORD))["username"] == "alice"


async def test_a_killed_node_is_dead_after_its_lease_and_the_balancer_keeps_answering(
    cluster: Cluster, video_clip: EncodedClip, audio_clip: EncodedClip
) -> None:
    listed = cluster.nodes_json()
    assert {i: n["alive"] for i, n in listed.items()} == {"node-a": True, "node-b": True}

    a, b = cluster.node("node-a"), cluster.node("node-b")
    b.kill9()
    # at once, before its lease runs out: nginx finds node-b refusing and passes every request on
    for _ in range(6):
        assert (await cluster.healthz())["node"] == "node-a"
    assert "Connection refused) while connecting to upstream" in cluster.nginx.error_log.read_text()
    passed_on = (
        f'"GET /healthz HTTP/1.1" 200 upstream=127.0.0.1:{b.port}, 127.0.0.1:{a.port} (502, 200)'
    )
    assert passed_on in cluster.nginx.access_log.read_text(), cluster.nginx.access_log.read_text()[
        -2000:
    ]

    async def dead() -> bool:
        nodes = cluster.nodes_json()
        return nodes["node-a"]["alive"] and not nodes["node-b"]["alive"]

    await eventually(dead, timeout=20, interval=0.5, message=lambda: str(cluster.nodes_json()))
    done = cluster.cli("nodes")
    assert done.returncode == 0 and re.search(r"node-b .* dead", done.stdout), done.stdout
    health = await cluster.healthz()
    assert health["node"] == "node-a"
    assert {n["id"]: n["alive"] for n in health["nodes"]} == {"node-a": True, "node-b": False}

    # a customer given the balancer's URL still joins: the WebSocket handshake is retried too
    for _ in range(2):
        async with HeadlessParticipant(cluster.url, video=video_clip, audio=audio_clip) as customer:
            await customer.join("account_opening", "赵阿姨")
            assert customer.session_id is not None
            row = await cluster.session_row(customer.session_id)
            assert row is not None and row.node_id == "node-a"
    async with aiohttp.ClientSession() as http:
        for path in ("/", "/agent", "/api/config"):
            async with http.get(f"{cluster.url}{path}") as r:
                assert r.status == 200, path


async def test_a_killed_nodes_waiting_customer_comes_back_through_the_balancer_and_keeps_its_place(
    cluster: Cluster, video_clip: EncodedClip, audio_clip: EncodedClip
) -> None:
    a = cluster.node("node-a")
    first = HeadlessParticipant(a.url, video=video_clip, audio=audio_clip, name="first")
    second = HeadlessParticipant(
        cluster.node("node-b").url, video=video_clip, audio=audio_clip, name="second"
    )
    back = HeadlessParticipant(cluster.url, video=video_clip, audio=audio_clip, name="back")
    agent = HeadlessParticipant(cluster.url, video=video_clip, audio=audio_clip, name="agent-alice")
    try:
        await first.join("account_opening", "先到")
        assert (await first.wait_for("queue_update"))["position"] == 1
        await second.join("account_opening", "后到")
        assert (await second.wait_for("queue_update"))["position"] == 2
        session_id, token = first.session_id, first.rejoin_token

        a.kill9()  # the customer's socket dies with its node

        async def a_dead() -> bool:
            return not cluster.nodes_json()["node-a"]["alive"]

        await eventually(a_dead, timeout=20, interval=0.5)
        rejoined = await back.rejoin(session_id, token)  # through nginx: only node-b answers now
        assert rejoined["state"] == "queued"
        assert (await back.wait_for("queue_update"))[
            "position"
        ] == 1  # still ahead of the later one
        row = await cluster.session_row(str(session_id))
        assert row is not None and (row.state, row.node_id) == ("queued", "node-b")

        await agent.login("alice", PASSWORD)
        await agent.set_ready()
        assert (await agent.accept_next(timeout=15))["session_id"] == session_id
        await back.wait_for("call_started", 15)
        await back.wait_media(frames=30, timeout=20)
    finally:
        for participant in (agent, back, second, first):
            await participant.aclose()


async def test_a_call_whose_node_is_killed_resumes_through_the_balancer_with_the_same_agent(
    cluster: Cluster, video_clip: EncodedClip, audio_clip: EncodedClip
) -> None:
    a = cluster.node("node-a")
    customer = HeadlessParticipant(a.url, video=video_clip, audio=audio_clip, name="customer")
    agent = HeadlessParticipant(a.url, video=video_clip, audio=audio_clip, name="agent-alice")
    back = HeadlessParticipant(cluster.url, video=video_clip, audio=audio_clip, name="back")
    again = HeadlessParticipant(cluster.url, video=video_clip, audio=audio_clip, name="again")
    try:
        await customer.join("account_opening", "周先生")
        await agent.login("alice", PASSWORD)
        await agent.set_ready()
        await agent.accept_next(timeout=15)
        await customer.wait_media(frames=30, timeout=20)
        await agent.wait_media(frames=30, timeout=20)
        session_id, token = str(customer.session_id), customer.rejoin_token

        a.kill9()  # the call's media, both sockets and the recording's node die at once

        async def a_dead() -> bool:
            return not cluster.nodes_json()["node-a"]["alive"]

        await eventually(a_dead, timeout=20, interval=0.5)
        # both come back through nginx, where only node-b answers now
        assert (await back.rejoin(session_id, token))["state"] == "active"
        await again.login("alice", PASSWORD)
        started = await again.wait_for("call_started", 15)
        assert started["session_id"] == session_id and again.count("customer_offer") == 0
        await back.wait_for("peer_reconnected", 15)
        await back.wait_media(frames=30, timeout=20)
        await again.wait_media(frames=30, timeout=20)
        row = await cluster.session_row(session_id)
        assert row is not None and (row.state, row.node_id) == ("active", "node-b")

        await again.hangup()
        assert (await back.wait_for("call_ended", 15))["reason"] == "agent_hangup"
        await eventually(lambda: _ended(cluster, session_id), timeout=15, interval=0.2)
    finally:
        for participant in (again, back, agent, customer):
            await participant.aclose()

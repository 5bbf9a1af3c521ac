"""The Bus contract, run the same against LocalBus and RedisBus (a real Redis)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from server.db import Database, Node
from server.migrations import create_all
from server.node_registry import NodeRegistry
from signaling.bus import Bus, BusMessage, LocalBus, LocalNetwork
from signaling.ids import new_id
from signaling.redis_bus import RedisBus

#: every node's lease in the registry: no test runs long enough for a live node to lose it
LEASE_S = 60.0


class Nodes:
    """Buses of several nodes on one carrier, and the node registry they check senders against:
    the database one production uses, on a SQLite file."""

    def __init__(self, redis: str | None, db: Database) -> None:
        self.redis = redis
        self.prefix = f"test-{new_id(6)}:"
        self.network = LocalNetwork()
        self.db = db
        #: what the buses ask: every node's registry reads the same table, this one holds no id
        self.registry = NodeRegistry(db, "directory", lease_s=LEASE_S)
        self._leases: dict[str, NodeRegistry] = {}
        self._buses: list[Bus] = []

    async def register(self, node_id: str) -> None:
        """Start ``node_id``'s lease in the registry, as a starting node does."""
        lease = NodeRegistry(self.db, node_id, lease_s=LEASE_S)
        await lease.start()
        self._leases[node_id] = lease

    async def kill(self, node_id: str) -> None:
        """``node_id``'s process is gone: its heartbeat stops, and its lease has run out."""
        lease = self._leases.pop(node_id)
        assert lease._task is not None
        lease._task.cancel()
        await asyncio.gather(lease._task, return_exceptions=True)
        with self.db.session() as s:
            row = s.get(Node, node_id)
            assert row is not None
            row.heartbeat_at -= timedelta(seconds=2 * LEASE_S)
            s.add(row)
            s.commit()

    async def bus(self, node_id: str, *, register: bool = True, **options: Any) -> Bus:
        if register:
            await self.register(node_id)
        bus: Bus
        if self.redis is None:
            bus = LocalBus(node_id, self.network, directory=self.registry, **options)
        else:
            bus = RedisBus.from_url(
                self.redis,
                node_id,
                prefix=self.prefix,
                directory=self.registry,
                block_s=0.5,
                **options,
            )
        self._buses.append(bus)
        return bus

    async def aclose(self) -> None:
        for bus in self._buses:
            await bus.aclose()
        for lease in self._leases.values():
            await lease.aclose()


class Received:
    """A handler that keeps what it got; ``fail`` decides which deliveries raise."""

    def __init__(self, fail: Callable[[BusMessage], bool] = lambda m: False) -> None:
        self.messages: list[BusMessage] = []
        self.attempts: list[BusMessage] = []
        self._fail = fail
        self._changed = asyncio.Event()

    async def __call__(self, message: BusMessage) -> None:
        self.attempts.append(message)
        self._changed.set()
        if self._fail(message):
            raise RuntimeError("handler crashed")
        self.messages.append(message)

    def bodies(self) -> list[dict[str, Any]]:
        return [m.body for m in self.messages]

    async def wait(self, count: int, *, attempts: bool = False, timeout: float = 5.0) -> None:
        seen = self.attempts if attempts else self.messages
        deadline = time.monotonic() + timeout
        while len(seen) < count:
            self._changed.clear()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"got {len(seen)} of {count} messages in time")
            try:
                async with asyncio.timeout(remaining):
                    await self._changed.wait()
            except TimeoutError:
                pass


@pytest.fixture(params=["local", "redis"])
def backend(request: pytest.FixtureRequest) -> str | None:
    return request.getfixturevalue("redis_url") if request.param == "redis" else None


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    database = Database(f"sqlite:///{tmp_path / 'vcounter.db'}")
    create_all(database)
    yield database
    database.close()


@pytest.fixture
async def nodes(backend: str | None, db: Database) -> AsyncIterator[Nodes]:
    n = Nodes(backend, db)
    yield n
    await n.aclose()


async def test_point_to_point_arrives_in_order(nodes: Nodes) -> None:
    a, b = await nodes.bus("a"), await nodes.bus("b")
    got = Received()
    await b.subscribe(got)
    ids = [await a.send("b", {"n": i, "text": "é"}) for i in range(20)]
    await got.wait(20)
    assert got.bodies() == [{"n": i, "text": "é"} for i in range(20)]
    assert [m.id for m in got.messages] == ids and len(set(ids)) == 20
    first = got.messages[0]
    assert (first.sender, first.target, first.broadcast, first.known_sender, first.redelivered) == (
        "a",
        "b",
        False,
        True,
        False,
    )
    assert abs(first.sent_at - time.time()) < 5
    assert 0 <= first.latency_s < 5


async def test_nothing_is_lost_when_the_receiver_starts_later(nodes: Nodes) -> None:
    a = await nodes.bus("a")
    for i in range(5):
        await a.send("late", {"n": i})
    late = await nodes.bus("late")
    got = Received()
    await late.subscribe(got)
    await got.wait(5)
    assert got.bodies() == [{"n": i} for i in range(5)]


async def test_a_message_whose_handler_crashed_comes_again(nodes: Nodes) -> None:
    a = await nodes.bus("a")
    b = await nodes.bus("b", retry_after_s=0.2)
    crashed: set[str] = set()

    def fail_once(message: BusMessage) -> bool:
        if message.body.get("crash") and message.id not in crashed:
            crashed.add(message.id)
            return True
        return False

    got = Received(fail_once)
    await b.subscribe(got)
    await a.send("b", {"n": 0, "crash": True})
    await a.send("b", {"n": 1})
    await got.wait(2)
    # the next message is not held up behind the crashed one; that one is retried
    assert got.bodies()[0] == {"n": 1}
    assert got.bodies()[1] == {"n": 0, "crash": True}
    assert got.messages[1].redelivered and not got.messages[0].redelivered
    assert got.messages[1].id == got.attempts[0].id
    await asyncio.sleep(0.5)
    assert len(got.messages) == 2  # delivered once it succeeded: not again


async def test_unfinished_messages_wait_for_the_node_to_come_back(nodes: Nodes) -> None:
    a = await nodes.bus("a")
    first = await nodes.bus("b", retry_after_s=30)
    blocked = asyncio.Event()

    async def stuck(message: BusMessage) -> None:
        if message.body["n"] == 0:
            raise RuntimeError("handler crashed")  # left for a retry in 30 s
        blocked.set()
        await asyncio.Event().wait()  # still running when the node stops

    await first.subscribe(stuck)
    await a.send("b", {"n": 0})
    await a.send("b", {"n": 1})
    async with asyncio.timeout(5):
        await blocked.wait()
    await first.aclose()
    # the node restarts under the same id: both come again, without waiting out the retry time
    again = await nodes.bus("b", register=False, retry_after_s=30)
    got = Received()
    await again.subscribe(got)
    await got.wait(2, timeout=3)
    assert sorted(m.body["n"] for m in got.messages) == [0, 1]
    assert all(m.redelivered for m in got.messages)


async def test_a_message_that_keeps_failing_is_dropped(nodes: Nodes) -> None:
    a = await nodes.bus("a")
    b = await nodes.bus("b", retry_after_s=0.1, max_deliveries=2)
    got = Received(lambda m: bool(m.body.get("poison")))
    await b.subscribe(got)
    await a.send("b", {"poison": True})
    await got.wait(2, attempts=True)
    await asyncio.sleep(0.6)
    assert [m.body for m in got.attempts] == [{"poison": True}] * 2
    await a.send("b", {"n": 1})
    await got.wait(1)
    assert got.bodies() == [{"n": 1}]


async def test_broadcast_reaches_every_node(nodes: Nodes) -> None:
    buses = [await nodes.bus(n) for n in ("a", "b", "c")]
    handlers = [Received() for _ in buses]
    for bus, handler in zip(buses, handlers, strict=True):
        await bus.subscribe(handler)
    sent = await buses[0].broadcast({"queue": {"loans": 3}})
    for handler in handlers:
        await handler.wait(1)
        (message,) = handler.messages
        assert (message.id, message.sender, message.target, message.broadcast) == (
            sent,
            "a",
            None,
            True,
        )
        assert message.body == {"queue": {"loans": 3}} and message.known_sender
        assert 0 <= message.latency_s < 5


async def test_messages_from_unknown_or_dead_nodes_are_flagged(nodes: Nodes) -> None:
    b = await nodes.bus("b")
    got = Received()
    await b.subscribe(got)
    ghost = await nodes.bus("ghost", register=False)
    old = await nodes.bus("old")
    a = await nodes.bus("a")
    await ghost.send("b", {"from": "ghost"})
    await a.send("b", {"from": "a"})
    await nodes.kill("old")
    info = await nodes.registry.node("old")
    assert info is not None and not info.alive  # still listed, as dead
    await old.send("b", {"from": "old"})
    await ghost.broadcast({"from": "ghost"})
    await got.wait(4)
    flags = {(m.body["from"], m.broadcast): m.known_sender for m in got.messages}
    assert flags == {
        ("ghost", False): False,
        ("a", False): True,
        ("old", False): False,
        ("ghost", True): False,
    }


async def test_aclose_is_idempotent_and_leaves_no_task(nodes: Nodes) -> None:
    b = await nodes.bus("b")
    await b.subscribe(Received())
    with pytest.raises(RuntimeError):
        await b.subscribe(Received())
    await b.aclose()
    await b.aclose()
    await asyncio.sleep(0)
    assert not [t for t in asyncio.all_tasks() if (t.get_name() or "").startswith("bus-")]
    with pytest.raises(RuntimeError):
        await b.subscribe(Received())
    # a bus that never subscribed closes too
    idle = await nodes.bus("idle")
    await idle.aclose()
    await idle.aclose()


async def test_a_message_is_a_json_object(nodes: Nodes) -> None:
    a = await nodes.bus("a")
    with pytest.raises(TypeError):
        await a.send("b", {"when": {1, 2}})
    with pytest.raises(TypeError):
        await a.broadcast({"raw": b"bytes"})


async def test_aclose_right_after_a_delivery_stops_the_reader(nodes: Nodes) -> None:
    a = await nodes.bus("a")
    for steps in range(6):  # close at different points of the reader's turn
        b = await nodes.bus(f"b{steps}")
        got = Received()
        await b.subscribe(got)
        await a.send(f"b{steps}", {"n": steps})
        await got.wait(1)
        for _ in range(steps):
            await asyncio.sleep(0)
        async with asyncio.timeout(2):
            await b.aclose()

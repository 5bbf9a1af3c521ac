"""The SharedState contract, run the same against InMemoryState and RedisState (a real Redis).

"Nodes" are separate handles on one state: :meth:`InMemoryState.peer` in memory, and
RedisState instances on their own connection pools in Redis.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from signaling.ids import new_id
from signaling.redis_state import RedisState
from signaling.state import AgentPresence, InMemoryState, QueueEntry, SharedState


class Cluster:
    """Handles on one shared state, each standing for a node; all closed at the end."""

    def __init__(self, redis: str | None) -> None:
        self.redis = redis
        self.prefix = f"test-{new_id(6)}:"
        self._memory = InMemoryState()
        self._handles: list[SharedState] = []

    def node(self) -> SharedState:
        handle: SharedState
        if self.redis is None:
            handle = self._memory if not self._handles else self._memory.peer()
        else:
            handle = RedisState.from_url(self.redis, self.prefix)
        self._handles.append(handle)
        return handle

    async def aclose(self) -> None:
        for handle in self._handles:
            await handle.aclose()


@pytest.fixture(params=["memory", "redis"])
def backend(request: pytest.FixtureRequest) -> str | None:
    return request.getfixturevalue("redis_url") if request.param == "redis" else None


@pytest.fixture
async def cluster(backend: str | None) -> AsyncIterator[Cluster]:
    c = Cluster(backend)
    yield c
    await c.aclose()


@pytest.fixture
def state(cluster: Cluster) -> SharedState:
    return cluster.node()


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.05)


def presence(agent_id: int, *skills: str, status: str = "ready") -> AgentPresence:
    return AgentPresence(
        agent_id,
        f"agent{agent_id}",
        f"Agent {agent_id}",
        frozenset(skills),
        status,
        node_id="n1",
        ready_since=1000.5,
        extra={"desk": "3"},
    )


# -- queue ---------------------------------------------------------------------------------


async def test_queue_is_ordered_by_priority_then_time_per_business(state: SharedState) -> None:
    await state.enqueue(QueueEntry("late", "loans", 1002.0))
    await state.enqueue(QueueEntry("early", "loans", 1001.0))
    await state.enqueue(QueueEntry("other", "accounts", 1000.0))
    await state.enqueue(QueueEntry("dropped", "loans", 1003.0, priority=0))
    assert [e.session_id for e in await state.queue()] == ["dropped", "other", "early", "late"]
    assert [e.session_id for e in await state.queue("loans")] == ["dropped", "early", "late"]
    assert [e.session_id for e in await state.queue("accounts")] == ["other"]
    assert await state.queue("nobody") == []


async def test_entries_keep_every_field(state: SharedState) -> None:
    entry = QueueEntry(
        "s1",
        "loans",
        1712345678.123456,
        priority=0,
        node_id="n2",
        passed_by={4: 1712345690.654321, 9: 1712345701.5},
        offered_to=None,
        reachable=False,
    )
    assert await state.enqueue(entry) == entry
    assert await state.entry("s1") == entry
    assert await state.queue() == [entry]
    assert await state.entry("nobody") is None


async def test_enqueue_stamps_the_state_clock_not_the_nodes(
    cluster: Cluster, state: SharedState, monkeypatch: pytest.MonkeyPatch
) -> None:
    other = cluster.node()
    first = await state.enqueue(QueueEntry("first", "loans"))
    # the second node's clock is an hour behind: it must not jump the queue
    real = time.time
    monkeypatch.setattr(time, "time", lambda: real() - 3600)
    second = await other.enqueue(QueueEntry("second", "loans", node_id="n2"))
    monkeypatch.undo()
    now = await state.now()
    assert abs(now - time.time()) < 5
    assert first.enqueued_at <= second.enqueued_at <= now
    assert now - second.enqueued_at < 5
    assert [e.session_id for e in await state.queue()] == ["first", "second"]
    assert await state.entry("second") == second


async def test_update_and_dequeue(state: SharedState) -> None:
    await state.enqueue(QueueEntry("s1", "loans", 1000.0))
    await state.enqueue(QueueEntry("s2", "loans", 1001.0))
    updated = await state.update_entry("s1", reachable=False, passed_by={3: 1000.5})
    assert updated == QueueEntry("s1", "loans", 1000.0, passed_by={3: 1000.5}, reachable=False)
    assert await state.entry("s1") == updated
    # moving to another business and behind s2
    moved = await state.update_entry("s1", business="accounts", enqueued_at=1005.0)
    assert moved is not None and moved.business == "accounts" and not moved.reachable
    assert [e.session_id for e in await state.queue("loans")] == ["s2"]
    assert [e.session_id for e in await state.queue("accounts")] == ["s1"]
    assert await state.update_entry("nobody", reachable=True) is None
    # an offer taken back by hand, as the broker does
    assert await state.claim("s2", 4)
    withdrawn = await state.update_entry("s2", offered_to=None, passed_by={})
    assert withdrawn == QueueEntry("s2", "loans", 1001.0)
    with pytest.raises(TypeError):
        await state.update_entry("s1", colour="red")
    with pytest.raises(TypeError):
        await state.update_entry("s1", session_id="s9")
    assert await state.dequeue("s1") == moved
    assert await state.dequeue("s1") is None
    assert [e.session_id for e in await state.queue()] == ["s2"]
    assert await state.queue("accounts") == []


async def test_enqueue_again_replaces_the_entry(state: SharedState) -> None:
    await state.enqueue(QueueEntry("s1", "loans", 1000.0, offered_to=5))
    again = await state.enqueue(QueueEntry("s1", "accounts", 1000.0, priority=0))
    assert await state.queue() == [again]
    assert await state.queue("loans") == []
    assert again.offered_to is None


async def test_claim_marks_an_entry_offered_once(state: SharedState) -> None:
    await state.enqueue(QueueEntry("s1", "loans", 1000.0))
    await state.enqueue(QueueEntry("gone", "loans", 1001.0, reachable=False))
    assert await state.claim("s1", 7)
    assert not await state.claim("s1", 8)
    assert not await state.claim("gone", 7)
    assert not await state.claim("nobody", 7)
    entry = await state.entry("s1")
    assert entry is not None and entry.offered_to == 7


async def test_claim_next_takes_the_first_offerable_entry(state: SharedState) -> None:
    await state.enqueue(QueueEntry("loan", "loans", 1000.0))
    await state.enqueue(QueueEntry("acc-unreachable", "accounts", 1001.0, reachable=False))
    await state.enqueue(QueueEntry("acc-passed", "accounts", 1002.0, passed_by={7: 1002.5}))
    await state.enqueue(QueueEntry("acc-1", "accounts", 1003.0, node_id="n2"))
    await state.enqueue(QueueEntry("acc-2", "accounts", 1004.0, node_id="n1"))
    await state.enqueue(QueueEntry("acc-head", "accounts", 1009.0, priority=0, node_id="n1"))
    assert await state.claim_next(7, {"wealth"}) is None
    assert await state.claim_next(7, set()) is None
    first = await state.claim_next(7, {"accounts"})
    assert first is not None and first.session_id == "acc-head" and first.offered_to == 7
    # only customers held by node n1
    assert await state.claim_next(7, ["accounts"], node_id="n2") is not None  # acc-1
    assert await state.claim_next(7, ["accounts"], node_id="n2") is None
    nxt = await state.claim_next(8, ("accounts", "loans"))
    assert nxt is not None and nxt.session_id == "loan"  # earlier than acc-2
    nxt = await state.claim_next(8, ("accounts", "loans"))
    assert nxt is not None and nxt.session_id == "acc-passed"  # passed by 7, not by 8
    nxt = await state.claim_next(7, ("accounts", "loans"))
    assert nxt is not None and nxt.session_id == "acc-2"
    assert await state.claim_next(9, ("accounts", "loans")) is None
    assert {e.session_id: e.offered_to for e in await state.queue()} == {
        "loan": 8,
        "acc-unreachable": None,
        "acc-passed": 8,
        "acc-1": 7,
        "acc-2": 7,
        "acc-head": 7,
    }


async def test_claim_next_breaks_time_ties_by_session_id(state: SharedState) -> None:
    for sid in ("b", "a", "C"):
        await state.enqueue(QueueEntry(sid, "loans", 1000.0))
    taken = [await state.claim_next(1, {"loans"}) for _ in range(3)]
    assert [e.session_id for e in taken if e] == ["C", "a", "b"]


async def test_claim_next_from_two_nodes_at_once_gives_each_entry_once(cluster: Cluster) -> None:
    a, b = cluster.node(), cluster.node()
    for i in range(20):
        await (a if i % 2 else b).enqueue(QueueEntry(f"s{i:02d}", "loans" if i % 3 else "accounts"))
    skills = {"loans", "accounts"}
    calls = [(a if i % 2 else b).claim_next(100 + i, skills) for i in range(24)]
    results = await asyncio.gather(*calls)
    claimed = [e for e in results if e is not None]
    assert len(claimed) == 20
    assert sorted(e.session_id for e in claimed) == [f"s{i:02d}" for i in range(20)]
    stored = {e.session_id: e.offered_to for e in await a.queue()}
    assert stored == {e.session_id: e.offered_to for e in claimed}


async def test_claim_from_two_nodes_at_once_succeeds_once(cluster: Cluster) -> None:
    a, b = cluster.node(), cluster.node()
    await a.enqueue(QueueEntry("s1", "loans"))
    results = await asyncio.gather(*((a if i % 2 else b).claim("s1", i) for i in range(10)))
    assert sum(results) == 1
    entry = await b.entry("s1")
    assert entry is not None and results[entry.offered_to or 0]


async def test_release_offer_returns_the_entry_and_remembers_who_passed(state: SharedState) -> None:
    await state.enqueue(QueueEntry("s1", "loans", 1000.0))
    await state.enqueue(QueueEntry("s2", "loans", 1001.0))
    offered = await state.claim_next(7, {"loans"})
    assert offered is not None and offered.session_id == "s1"
    assert await state.release_offer("s1", 8) is None  # not offered to 8
    before = await state.now()
    declined = await state.release_offer("s1", 7)
    assert declined is not None and declined.offered_to is None
    assert list(declined.passed_by) == [7]
    assert before <= declined.passed_by[7] <= await state.now()  # when 7 passed, state clock
    assert await state.entry("s1") == declined
    assert await state.release_offer("s1", 7) is None  # no longer offered
    # 7 is not offered s1 again; 8 is, in its old place
    nxt = await state.claim_next(7, {"loans"})
    assert nxt is not None and nxt.session_id == "s2"
    nxt = await state.claim_next(8, {"loans"})
    assert nxt is not None and nxt.session_id == "s1"
    kept = await state.release_offer("s1", 8, penalise=False)
    assert kept is not None and kept.offered_to is None and kept.passed_by == declined.passed_by
    assert await state.release_offer("nobody", 8) is None


async def test_a_pass_holds_for_its_cool_down_then_the_agent_is_offered_the_customer_again(
    cluster: Cluster,
) -> None:
    a, b = cluster.node(), cluster.node()
    await a.enqueue(QueueEntry("s1", "loans", 1000.0))
    await a.enqueue(QueueEntry("s2", "loans", 1001.0))
    assert (await a.claim_next(7, {"loans"}, cooldown_s=0.5)) is not None
    await a.release_offer("s1", 7)  # 7 declined s1
    # within the cool-down, on any node: 7 gets the next customer, another agent gets s1
    nxt = await b.claim_next(7, {"loans"}, cooldown_s=0.5)
    assert nxt is not None and nxt.session_id == "s2"
    await b.release_offer("s2", 7, penalise=False)
    nxt = await b.claim_next(7, {"loans"}, cooldown_s=0.5)
    assert nxt is not None and nxt.session_id == "s2"
    await b.release_offer("s2", 7, penalise=False)
    await b.dequeue("s2")
    assert await b.claim_next(7, {"loans"}, cooldown_s=0.5) is None
    assert await a.claim_next(7, {"loans"}) is None  # no cool-down: a pass holds for good
    # a second agent's pass is its own
    assert (await b.claim_next(8, {"loans"}, cooldown_s=0.5)) is not None
    await b.release_offer("s1", 8)
    entry = await a.entry("s1")
    assert entry is not None and set(entry.passed_by) == {7, 8}

    async def offered_again() -> bool:
        got = await a.claim_next(7, {"loans"}, cooldown_s=0.5)
        return got is not None and got.session_id == "s1"

    await eventually(offered_again, timeout=3)
    assert await b.claim_next(8, {"loans"}, cooldown_s=0.5) is None  # offered to 7 now
    # the cool-down is counted from the state's clock: the entry keeps when each agent passed
    entry = await b.entry("s1")
    assert entry is not None and entry.offered_to == 7 and set(entry.passed_by) == {7, 8}
    assert entry.passed_by[7] <= entry.passed_by[8] <= await b.now()


# -- agent presence ------------------------------------------------------------------------


async def test_presence_is_shared_and_lapses_without_heartbeat(cluster: Cluster) -> None:
    a, b = cluster.node(), cluster.node()
    await a.put_agent(presence(2, "loans"), ttl_s=0.3)
    await a.put_agent(presence(1, "loans", "accounts", status="away"))  # no TTL: stays
    assert await b.agents() == [
        presence(1, "loans", "accounts", status="away"),
        presence(2, "loans"),
    ]
    assert await b.agent(2) == presence(2, "loans")

    async def lapsed() -> bool:
        return [p.agent_id for p in await b.agents()] == [1]

    await eventually(lapsed)
    assert await b.agent(2) is None
    await b.remove_agent(1)
    await b.remove_agent(1)
    assert await a.agents() == []


async def test_presence_heartbeat_keeps_an_agent(state: SharedState) -> None:
    start = time.monotonic()
    while time.monotonic() - start < 0.6:
        await state.put_agent(presence(3, "loans", status="busy"), ttl_s=0.3)
        assert await state.agent(3) == presence(3, "loans", status="busy")
        await asyncio.sleep(0.1)
    with pytest.raises(ValueError):
        await state.put_agent(presence(3, "loans"), ttl_s=0)


# -- call placement ----------------------------------------------------------------------


async def test_call_placement_is_shared(cluster: Cluster) -> None:
    a, b = cluster.node(), cluster.node()
    await a.set_call_node("s1", "node-a")
    assert await b.call_node("s1") == "node-a"
    await b.clear_call("s1")
    await b.clear_call("s1")
    assert await a.call_node("s1") is None


async def test_move_call_gives_a_dead_nodes_call_to_one_taker(cluster: Cluster) -> None:
    a, b = cluster.node(), cluster.node()
    await a.set_call_node("s1", "dead")
    assert await a.move_call("s1", "dead", "node-a") == "node-a"
    # the loser is told where the call went, and the placement stays
    assert await b.move_call("s1", "dead", "node-b") == "node-a"
    assert await b.call_node("s1") == "node-a"
    # the winner asking again keeps it
    assert await a.move_call("s1", "dead", "node-a") == "node-a"
    # a call on another node than the dead one is not taken
    await b.set_call_node("s2", "node-c")
    assert await a.move_call("s2", "dead", "node-a") == "node-c"
    assert await a.call_node("s2") == "node-c"


async def test_move_call_takes_an_unset_placement(cluster: Cluster) -> None:
    a, b = cluster.node(), cluster.node()
    assert await a.move_call("s1", "dead", "node-a") == "node-a"
    assert await b.call_node("s1") == "node-a"
    assert await b.move_call("s1", "dead", "node-b") == "node-a"
    await b.clear_call("s1")
    assert await b.move_call("s1", "dead", "node-b") == "node-b"
    assert await a.call_node("s1") == "node-b"


@pytest.mark.parametrize("placed", [True, False], ids=["on-the-dead-node", "unset"])
async def test_move_call_from_many_callers_at_once_has_one_winner(
    cluster: Cluster, placed: bool
) -> None:
    a, b = cluster.node(), cluster.node()
    if placed:
        await a.set_call_node("s1", "dead")
    takers = [f"node-{i}" for i in range(20)]
    results = await asyncio.gather(
        *((a if i % 2 else b).move_call("s1", "dead", to) for i, to in enumerate(takers))
    )
    winner = results[0]
    assert set(results) == {winner}, f"several callers won: {sorted(set(results))}"
    assert winner in takers
    assert await a.call_node("s1") == winner
    assert await b.call_node("s1") == winner


# -- counters ------------------------------------------------------------------------------


async def test_counters_count_hits_in_a_window_across_nodes(cluster: Cluster) -> None:
    a, b = cluster.node(), cluster.node()
    assert [await a.hit("login:alice", 0.4) for _ in range(3)] == [1, 2, 3]
    assert await b.hit("login:alice", 0.4) == 4
    assert await b.count("login:alice") == 4
    assert await b.count("login:bob") == 0

    async def window_over() -> bool:
        return await a.count("login:alice") == 0

    await eventually(window_over)
    assert await a.hit("login:alice", 10) == 1
    await b.reset("login:alice")
    assert await a.count("login:alice") == 0


# -- handling-time statistics --------------------------------------------------------------


async def test_average_handle_time_looks_at_the_latest_calls(cluster: Cluster) -> None:
    a, b = cluster.node(), cluster.node()
    assert await a.average_handle_time() is None
    assert await a.average_handle_time("loans") is None
    for _ in range(10):
        await a.record_handle_time("loans", 1000.0)  # old calls: pushed out below
    for i in range(50):
        await (a if i % 2 else b).record_handle_time("loans", 100.0 + i)
    await b.record_handle_time("accounts", 30.0)
    assert await b.average_handle_time("loans") == pytest.approx(124.5)
    assert await b.average_handle_time("accounts") == 30.0
    # all businesses: the last 50 calls are 49 loans (101..149) and the accounts one
    assert await a.average_handle_time() == pytest.approx((sum(range(101, 150)) + 30.0) / 50)


# -- clock and lifecycle -------------------------------------------------------------------


async def test_now_is_epoch_seconds_and_aclose_is_idempotent(cluster: Cluster) -> None:
    a = cluster.node()
    first = await a.now()
    second = await a.now()
    assert abs(first - time.time()) < 5 and first <= second
    await a.aclose()
    await a.aclose()


async def test_redis_state_needs_decoded_responses(redis_url: str) -> None:
    from redis.asyncio import Redis

    client = Redis.from_url(redis_url)
    try:
        with pytest.raises(ValueError):
            RedisState(client)
    finally:
        await client.aclose()


async def test_a_task_cancelled_during_a_redis_call_stops(redis_url: str) -> None:
    """A cancellation that lands in the middle of a command is not lost (see ``connect``)."""
    state = RedisState.from_url(redis_url, f"test-{new_id(6)}:")
    try:
        for steps in range(6):  # cancel at different points of a command
            calls = 0

            async def busy() -> None:
                nonlocal calls
                while True:
                    await state.hit("busy", 10)
                    calls += 1

            task = asyncio.create_task(busy())
            while calls < 3:
                await asyncio.sleep(0)
            for _ in range(steps):
                await asyncio.sleep(0)
            task.cancel()
            done, _ = await asyncio.wait([task], timeout=2)
            assert done and task.cancelled()
    finally:
        await state.aclose()

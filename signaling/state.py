"""Shared state of the counter: what several server nodes behind a load balancer agree on.

:class:`SharedState` is the one interface; it is chosen at start and the broker
never asks which implementation it has:

* :class:`InMemoryState` (here) carries it for a single node, in the process.
* :class:`~signaling.redis_state.RedisState` carries it for many nodes sharing
  one Redis: a customer waiting on node A can be claimed by an agent on node B.

What it holds:

* **the queue**: one queue of :class:`QueueEntry` per business, ordered by
  ``(priority, enqueued_at, session_id)``, with atomic :meth:`~SharedState.claim`,
  :meth:`~SharedState.claim_next` and :meth:`~SharedState.release_offer`;
* **agent presence** (:class:`AgentPresence`) that lapses when its node stops
  refreshing it;
* **call placement**: which node holds a session's media, moved atomically
  (:meth:`~SharedState.move_call`) when a surviving node takes a dead node's
  session over;
* **counters** for throttles and rate limits, and **handling-time statistics**
  for the wait estimate;
* **a clock** (:meth:`~SharedState.now`) that every node reads the same, so that
  clock skew between nodes never reorders customers.

Media never goes through here: it stays on the node that holds the call.

Which nodes are alive is not here: the node registry is in the database
(``server/node_registry.py``); :class:`NodeDirectory` is what the message bus
asks of it, and :class:`NodeInfo` what it answers.

Every timestamp is in epoch seconds of the state's clock.
"""

from __future__ import annotations

import json
import time
from collections import deque
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any, Protocol

#: how many of the most recent calls the handling-time average looks at, by default
HANDLE_TIME_SAMPLES = 50


@dataclass(frozen=True)
class QueueEntry:
    """One waiting customer."""

    session_id: str
    business: str
    #: epoch seconds (state clock) the customer first joined; ordering key after ``priority``.
    #: ``0.0`` when enqueueing: the state stamps it with :meth:`SharedState.now`.
    enqueued_at: float = 0.0
    #: 0 = head of the queue (customer whose agent dropped), 1 = normal
    priority: int = 1
    #: the node holding the customer's WebSocket
    node_id: str = ""
    #: agents who declined this customer -> when (state clock): not offered it again until the
    #: cool-down after that has passed (:meth:`SharedState.claim_next`)
    passed_by: Mapping[int, float] = field(default_factory=dict)
    #: agent currently holding an offer for this customer, if any
    offered_to: int | None = None
    #: False while the customer is disconnected (kept in place, not offered)
    reachable: bool = True

    @property
    def order(self) -> tuple[int, float]:
        return (self.priority, self.enqueued_at)

    @property
    def sort_key(self) -> tuple[int, float, str]:
        """The queue's total order: priority, then time, then session id for exact ties."""
        return (self.priority, self.enqueued_at, self.session_id)

    def passed(self, agent_id: int, now: float, cooldown_s: float | None = None) -> bool:
        """Whether ``agent_id``'s pass on this customer still holds at ``now``: for ``cooldown_s``
        after it was recorded, or for good when that is None."""
        at = self.passed_by.get(agent_id)
        return at is not None and (cooldown_s is None or at + cooldown_s > now)

    def offerable_to(
        self,
        agent_id: int,
        skills: Collection[str],
        node_id: str | None = None,
        *,
        now: float = 0.0,
        cooldown_s: float | None = None,
    ) -> bool:
        """Whether :meth:`SharedState.claim_next` may give this entry to ``agent_id`` at ``now``."""
        return (
            self.offered_to is None
            and self.reachable
            and self.business in skills
            and not self.passed(agent_id, now, cooldown_s)
            and (node_id is None or self.node_id == node_id)
        )


@dataclass(frozen=True)
class AgentPresence:
    """An agent as every node sees it."""

    agent_id: int
    username: str
    display_name: str
    skills: frozenset[str]
    status: str  # ready | away | offered | busy
    node_id: str = ""
    #: when the agent last became ready (longest-idle agent gets the next customer)
    ready_since: float = 0.0
    extra: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class NodeInfo:
    """One server node as the node registry reports it (:meth:`NodeDirectory.node`)."""

    node_id: str
    #: what the node last reported (load: calls, cpu; ``draining``; its address...)
    info: dict[str, Any]
    #: epoch seconds (the registry's clock) the node registered under this id
    registered_at: float
    #: epoch seconds of its last heartbeat
    seen_at: float
    #: epoch seconds after which it counts as dead unless it beats again
    expires_at: float
    #: the node holds its id: its last heartbeat has not lapsed
    alive: bool


class NodeDirectory(Protocol):
    """What the message bus asks of the node registry: who is a live node."""

    async def node(self, node_id: str) -> NodeInfo | None:
        """One registered node, live or recently dead, or None."""
        ...


class SharedState(Protocol):
    """What several nodes share: the queue, presence, placement, counters, handling times.

    Every method is a coroutine and every write that the docstring calls atomic
    is one step for all nodes at once (a Lua script in Redis).
    """

    # -- queue -------------------------------------------------------------------------

    async def enqueue(self, entry: QueueEntry) -> QueueEntry:
        """Add ``entry`` (replacing the session's previous one) and return it as stored.

        An ``enqueued_at`` of ``0.0`` is stamped with :meth:`now`, so customers
        are ordered by one clock whichever node they joined on.
        """
        ...

    async def update_entry(self, session_id: str, **changes: Any) -> QueueEntry | None:
        """Atomically change fields of a waiting entry; None if the session is not queued.

        ``session_id`` cannot change; a wrong field name raises ``TypeError``.
        """
        ...

    async def dequeue(self, session_id: str) -> QueueEntry | None:
        """Remove the session from the queue; returns the entry it had, or None."""
        ...

    async def entry(self, session_id: str) -> QueueEntry | None:
        """The session's queue entry, or None when it is not queued."""
        ...

    async def queue(self, business: str | None = None) -> list[QueueEntry]:
        """Waiting entries in queue order, of one business or of all."""
        ...

    async def claim(self, session_id: str, agent_id: int) -> bool:
        """Atomically mark an unoffered, reachable entry as offered to ``agent_id``."""
        ...

    async def claim_next(
        self,
        agent_id: int,
        skills: Collection[str],
        *,
        node_id: str | None = None,
        cooldown_s: float | None = None,
    ) -> QueueEntry | None:
        """Atomically take the first entry in queue order that ``agent_id`` may be offered.

        That is the first entry whose business is in ``skills``, not offered,
        reachable, not passed by this agent within the last ``cooldown_s``
        seconds of the state's clock (None: a pass holds for good), and, with
        ``node_id``, held by that node; it is marked offered to the agent in the
        same step, so two nodes calling at once never get the same entry. None
        when nothing matches.
        """
        ...

    async def release_offer(
        self, session_id: str, agent_id: int, *, penalise: bool = True
    ) -> QueueEntry | None:
        """Atomically put an entry offered to ``agent_id`` back in the queue, in its place.

        ``penalise`` (declined) records in ``passed_by`` that the agent passed
        now (the state's clock), so that :meth:`claim_next` does not offer it
        this customer again within its cool-down. Returns the updated entry, or
        None when the session is not queued or not offered to that agent.
        """
        ...

    # -- agent presence ----------------------------------------------------------------

    async def put_agent(self, presence: AgentPresence, ttl_s: float | None = None) -> None:
        """Publish (or refresh) an agent's presence.

        With ``ttl_s`` the presence lapses unless put again within that many
        seconds: an agent whose node died disappears by itself. Without it, it
        stays until :meth:`remove_agent`.
        """
        ...

    async def remove_agent(self, agent_id: int) -> None:
        """Forget an agent's presence (idempotent)."""
        ...

    async def agent(self, agent_id: int) -> AgentPresence | None:
        """One live agent's presence, or None."""
        ...

    async def agents(self) -> list[AgentPresence]:
        """Every live agent, by agent id."""
        ...

    # -- call placement ----------------------------------------------------------------

    async def set_call_node(self, session_id: str, node_id: str) -> None:
        """Record that ``node_id`` holds the session's media."""
        ...

    async def call_node(self, session_id: str) -> str | None:
        """The node holding the session's media, or None."""
        ...

    async def move_call(self, session_id: str, from_node: str, to_node: str) -> str:
        """Atomically move the session's media placement from ``from_node`` (dead) to ``to_node``,
        if it is still ``from_node`` or unset; returns the node holding it afterwards (``to_node``
        when this caller won, else the node another caller moved it to).

        When two surviving nodes take one session of a dead node over at once, exactly one
        wins; the other learns which node to relay to.
        """
        ...

    async def clear_call(self, session_id: str) -> None:
        """Forget where the session's media is (idempotent)."""
        ...

    # -- counters ----------------------------------------------------------------------

    async def hit(self, key: str, window_s: float) -> int:
        """Count one hit on ``key`` and return the count in the current window.

        The window starts with the first hit and lasts ``window_s`` seconds;
        then the count starts again from zero (a fixed-window rate limit).
        """
        ...

    async def count(self, key: str) -> int:
        """Hits on ``key`` in its current window (0 when none)."""
        ...

    async def reset(self, key: str) -> None:
        """Forget the hits on ``key``."""
        ...

    # -- handling-time statistics ------------------------------------------------------

    async def record_handle_time(self, business: str, seconds: float) -> None:
        """Record how long a finished call of ``business`` took."""
        ...

    async def average_handle_time(self, business: str | None = None) -> float | None:
        """Mean handling time of the most recent calls (of ``business``, or of all); None if none."""
        ...

    # -- clock and lifecycle -----------------------------------------------------------

    async def now(self) -> float:
        """The state's clock, in epoch seconds: the same for every node."""
        ...

    async def aclose(self) -> None:
        """Release connections; idempotent. Shared data stays for the other nodes."""
        ...


def check_ttl(ttl_s: float, name: str = "ttl_s") -> None:
    if not ttl_s > 0:
        raise ValueError(f"{name} must be positive, not {ttl_s!r}")


def json_object(value: Mapping[str, Any]) -> dict[str, Any]:
    """A private JSON copy of ``value``; ``TypeError`` if it is not JSON."""
    copied = json.loads(json.dumps(value))
    if not isinstance(copied, dict):
        raise TypeError("expected a JSON object")
    return copied


def entry_changes(changes: Mapping[str, Any]) -> QueueEntry:
    """Validate :meth:`SharedState.update_entry` changes on a blank entry (``TypeError`` if bad)."""
    if "session_id" in changes:
        raise TypeError("a queue entry's session_id cannot change")
    names = {f.name for f in fields(QueueEntry)}
    unknown = set(changes) - names
    if unknown:
        raise TypeError(f"QueueEntry has no field {', '.join(sorted(unknown))}")
    changed = replace(QueueEntry("", ""), **changes)
    if "passed_by" in changes:
        passes = {int(a): float(at) for a, at in dict(changed.passed_by).items()}
        changed = replace(changed, passed_by=passes)
    return changed


@dataclass
class _Data:
    """Everything an :class:`InMemoryState` holds, shared by its :meth:`~InMemoryState.peer` handles."""

    queue: dict[str, QueueEntry] = field(default_factory=dict)
    agents: dict[int, tuple[AgentPresence, float | None]] = field(default_factory=dict)
    calls: dict[str, str] = field(default_factory=dict)
    counters: dict[str, tuple[int, float]] = field(default_factory=dict)
    handle_times: dict[str | None, deque[float]] = field(default_factory=dict)


class InMemoryState:
    """Single-node :class:`SharedState`, in this process.

    No method awaits anything, so each runs as one step on the event loop: that
    is what makes :meth:`claim`, :meth:`claim_next` and :meth:`move_call` atomic here.
    ``clock`` (epoch seconds) is the state's clock; TTLs are measured on it too.
    """

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.time,
        handle_time_samples: int = HANDLE_TIME_SAMPLES,
    ) -> None:
        self._clock = clock
        self._data = _Data()
        self._samples = handle_time_samples

    def peer(self) -> InMemoryState:
        """Another handle on the same data, as a second node in this process would hold,
        like a second :class:`~signaling.redis_state.RedisState` on the same Redis."""
        other = InMemoryState(clock=self._clock, handle_time_samples=self._samples)
        other._data = self._data
        return other

    # -- queue -------------------------------------------------------------------------

    async def enqueue(self, entry: QueueEntry) -> QueueEntry:
        if entry.enqueued_at == 0.0:
            entry = replace(entry, enqueued_at=self._clock())
        self._data.queue[entry.session_id] = entry
        return entry

    async def update_entry(self, session_id: str, **changes: Any) -> QueueEntry | None:
        changed = entry_changes(changes)
        entry = self._data.queue.get(session_id)
        if entry is None:
            return None
        entry = replace(entry, **{name: getattr(changed, name) for name in changes})
        self._data.queue[session_id] = entry
        return entry

    async def dequeue(self, session_id: str) -> QueueEntry | None:
        return self._data.queue.pop(session_id, None)

    async def entry(self, session_id: str) -> QueueEntry | None:
        return self._data.queue.get(session_id)

    async def queue(self, business: str | None = None) -> list[QueueEntry]:
        entries = (
            e for e in self._data.queue.values() if business is None or e.business == business
        )
        return sorted(entries, key=lambda e: e.sort_key)

    async def claim(self, session_id: str, agent_id: int) -> bool:
        entry = self._data.queue.get(session_id)
        if entry is None or entry.offered_to is not None or not entry.reachable:
            return False
        self._data.queue[session_id] = replace(entry, offered_to=agent_id)
        return True

    async def claim_next(
        self,
        agent_id: int,
        skills: Collection[str],
        *,
        node_id: str | None = None,
        cooldown_s: float | None = None,
    ) -> QueueEntry | None:
        now = self._clock()
        candidates = [
            e
            for e in self._data.queue.values()
            if e.offerable_to(agent_id, skills, node_id, now=now, cooldown_s=cooldown_s)
        ]
        if not candidates:
            return None
        entry = replace(min(candidates, key=lambda e: e.sort_key), offered_to=agent_id)
        self._data.queue[entry.session_id] = entry
        return entry

    async def release_offer(
        self, session_id: str, agent_id: int, *, penalise: bool = True
    ) -> QueueEntry | None:
        entry = self._data.queue.get(session_id)
        if entry is None or entry.offered_to != agent_id:
            return None
        passed_by = {**entry.passed_by, agent_id: self._clock()} if penalise else entry.passed_by
        entry = replace(entry, offered_to=None, passed_by=passed_by)
        self._data.queue[session_id] = entry
        return entry

    # -- agent presence ----------------------------------------------------------------

    async def put_agent(self, presence: AgentPresence, ttl_s: float | None = None) -> None:
        if ttl_s is not None:
            check_ttl(ttl_s)
        expires = None if ttl_s is None else self._clock() + ttl_s
        self._data.agents[presence.agent_id] = (presence, expires)

    async def remove_agent(self, agent_id: int) -> None:
        self._data.agents.pop(agent_id, None)

    def _live_agents(self) -> dict[int, AgentPresence]:
        now = self._clock()
        for agent_id in [
            a for a, (_, exp) in self._data.agents.items() if exp is not None and exp <= now
        ]:
            del self._data.agents[agent_id]
        return {agent_id: presence for agent_id, (presence, _) in self._data.agents.items()}

    async def agent(self, agent_id: int) -> AgentPresence | None:
        return self._live_agents().get(agent_id)

    async def agents(self) -> list[AgentPresence]:
        live = self._live_agents()
        return [live[agent_id] for agent_id in sorted(live)]

    # -- call placement ----------------------------------------------------------------

    async def set_call_node(self, session_id: str, node_id: str) -> None:
        self._data.calls[session_id] = node_id

    async def call_node(self, session_id: str) -> str | None:
        return self._data.calls.get(session_id)

    async def move_call(self, session_id: str, from_node: str, to_node: str) -> str:
        holder = self._data.calls.get(session_id)
        if holder is None or holder == from_node:
            self._data.calls[session_id] = holder = to_node
        return holder

    async def clear_call(self, session_id: str) -> None:
        self._data.calls.pop(session_id, None)

    # -- counters ----------------------------------------------------------------------

    async def hit(self, key: str, window_s: float) -> int:
        check_ttl(window_s, "window_s")
        now = self._clock()
        count, ends = self._data.counters.get(key, (0, 0.0))
        if ends <= now:
            count, ends = 0, now + window_s
        self._data.counters[key] = (count + 1, ends)
        return count + 1

    async def count(self, key: str) -> int:
        count, ends = self._data.counters.get(key, (0, 0.0))
        return count if ends > self._clock() else 0

    async def reset(self, key: str) -> None:
        self._data.counters.pop(key, None)

    # -- handling-time statistics ------------------------------------------------------

    async def record_handle_time(self, business: str, seconds: float) -> None:
        for series in (business, None):
            self._data.handle_times.setdefault(series, deque(maxlen=self._samples)).appendleft(
                seconds
            )

    async def average_handle_time(self, business: str | None = None) -> float | None:
        samples = self._data.handle_times.get(business)
        return sum(samples) / len(samples) if samples else None

    # -- clock and lifecycle -----------------------------------------------------------

    async def now(self) -> float:
        return self._clock()

    async def aclose(self) -> None:
        """Nothing to release: the state lives as long as the object."""
        return None

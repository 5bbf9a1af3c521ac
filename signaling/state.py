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
* **call placement**: which node holds a session's media, and the SHA-256 hash of
  each customer's rejoin token so that any node can check it;
* **the node registry** (:class:`NodeInfo`): one live holder per node id, its
  heartbeat and load;
* **deadlines** that fire exactly once across nodes, **counters** for throttles
  and rate limits, and **handling-time statistics** for the wait estimate;
* **a clock** (:meth:`~SharedState.now`) that every node reads the same, so that
  clock skew between nodes never reorders customers.

Media never goes through here: it stays on the node that holds the call.

Every timestamp is in epoch seconds of the state's clock. Payloads and node
information are JSON objects: they are copied on the way in and out, so a caller
never shares a mutable dict with the state.
"""

from __future__ import annotations

import json
import re
import time
from collections import deque
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any, Protocol

#: how many of the most recent calls the handling-time average looks at, by default
HANDLE_TIME_SAMPLES = 50
#: how long a node whose heartbeat lapsed stays listed (``alive=False``) before it is forgotten
DEAD_NODE_RETENTION_S = 3600.0

_SHA256_HEX = re.compile(r"[0-9a-f]{64}")


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
    #: agents who declined or let the offer time out: not offered again
    passed_by: frozenset[int] = frozenset()
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

    def offerable_to(
        self, agent_id: int, skills: Collection[str], node_id: str | None = None
    ) -> bool:
        """Whether :meth:`SharedState.claim_next` may give this entry to ``agent_id``."""
        return (
            self.offered_to is None
            and self.reachable
            and self.business in skills
            and agent_id not in self.passed_by
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
    """One server node in the registry, as :meth:`SharedState.nodes` reports it."""

    node_id: str
    #: what the node last reported (load: calls, cpu; ``draining``; its address...)
    info: dict[str, Any]
    #: state-clock time the node registered under this id
    registered_at: float
    #: state-clock time of its last heartbeat (register or refresh)
    seen_at: float
    #: state-clock time after which it counts as dead unless it refreshes
    expires_at: float
    #: the node holds its id: its last heartbeat has not lapsed
    alive: bool


class NodeDirectory(Protocol):
    """The part of :class:`SharedState` the message bus needs: who is a live node."""

    async def node(self, node_id: str) -> NodeInfo | None: ...


class SharedState(NodeDirectory, Protocol):
    """What several nodes share: the queue, presence, placement, registry, deadlines, counters.

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
        self, agent_id: int, skills: Collection[str], *, node_id: str | None = None
    ) -> QueueEntry | None:
        """Atomically take the first entry in queue order that ``agent_id`` may be offered.

        That is the first entry whose business is in ``skills``, not offered,
        reachable, not passed by this agent (and, with ``node_id``, held by that
        node); it is marked offered to the agent in the same step, so two nodes
        calling at once never get the same entry. None when nothing matches.
        """
        ...

    async def release_offer(
        self, session_id: str, agent_id: int, *, penalise: bool = True
    ) -> QueueEntry | None:
        """Atomically put an entry offered to ``agent_id`` back in the queue, in its place.

        ``penalise`` (declined, timed out) adds the agent to ``passed_by`` so it
        is not offered this customer again. Returns the updated entry, or None
        when the session is not queued or not offered to that agent.
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

    async def clear_call(self, session_id: str) -> None:
        """Forget where the session's media is (idempotent)."""
        ...

    async def put_session_token(self, session_id: str, token_hash: str, ttl_s: float) -> None:
        """Store the SHA-256 hex digest of a customer's rejoin token for ``ttl_s`` seconds.

        Only the hash is accepted (64 lowercase hex digits, else ``ValueError``):
        the token itself never leaves the customer and the node that issued it.
        """
        ...

    async def session_token(self, session_id: str) -> str | None:
        """The stored rejoin-token hash of the session, or None (never stored, or lapsed)."""
        ...

    async def clear_session_token(self, session_id: str) -> None:
        """Forget the session's rejoin-token hash (idempotent)."""
        ...

    # -- node registry -----------------------------------------------------------------

    async def register_node(self, node_id: str, info: Mapping[str, Any], ttl_s: float) -> bool:
        """Take ``node_id`` for this state handle for ``ttl_s`` seconds.

        False, and nothing changes, while a live node holds that id: two
        processes never serve under one id. A lapsed id can be taken again.
        """
        ...

    async def refresh_node(
        self, node_id: str, info: Mapping[str, Any] | None = None, ttl_s: float | None = None
    ) -> bool:
        """Heartbeat: extend this handle's hold on ``node_id`` and report its load.

        ``info`` replaces what the node reported (None keeps it); ``ttl_s``
        defaults to the one it registered with. A hold that lapsed is taken back
        if nobody took the id meanwhile. False when this handle does not hold the
        id (never registered, unregistered, or taken by another node): the node
        must stop serving under it.
        """
        ...

    async def unregister_node(self, node_id: str) -> None:
        """Give ``node_id`` up, if this handle holds it (idempotent)."""
        ...

    async def node(self, node_id: str) -> NodeInfo | None:
        """One node of the registry, live or recently dead, or None."""
        ...

    async def nodes(self, *, include_dead: bool = False) -> list[NodeInfo]:
        """Registered nodes by id: live ones, and with ``include_dead`` those that lapsed.

        A lapsed node is listed for :data:`DEAD_NODE_RETENTION_S` (so the
        others can take its work over), then forgotten.
        """
        ...

    # -- deadlines ---------------------------------------------------------------------

    async def schedule(self, key: str, delay_s: float, payload: Mapping[str, Any]) -> None:
        """Arrange for ``(key, payload)`` to come out of :meth:`due` in ``delay_s`` seconds.

        Scheduling a key again replaces its deadline and payload.
        """
        ...

    async def cancel(self, key: str) -> bool:
        """Drop a pending deadline; False if there was none (already due and taken, or never)."""
        ...

    async def due(self, limit: int = 100) -> list[tuple[str, dict[str, Any]]]:
        """Atomically take up to ``limit`` deadlines that are due, earliest first.

        With several nodes polling, each deadline is returned to exactly one
        caller, whichever node scheduled it and whether or not that node still
        runs. Taking is final: a caller that dies before acting on it loses it.
        """
        ...

    async def next_deadline(self) -> float | None:
        """Seconds until the earliest pending deadline (0.0 if one is due), or None."""
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


def check_token_hash(token_hash: str) -> None:
    """Raise ``ValueError`` unless ``token_hash`` is a SHA-256 hex digest."""
    if not _SHA256_HEX.fullmatch(token_hash):
        raise ValueError("a session token is stored as its SHA-256 hex digest, not as the token")


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
        changed = replace(changed, passed_by=frozenset(changed.passed_by))
    return changed


@dataclass
class _Node:
    owner: object
    info: dict[str, Any]
    registered_at: float
    seen_at: float
    ttl_s: float

    @property
    def expires_at(self) -> float:
        return self.seen_at + self.ttl_s


@dataclass
class _Data:
    """Everything an :class:`InMemoryState` holds, shared by its :meth:`~InMemoryState.peer` handles."""

    queue: dict[str, QueueEntry] = field(default_factory=dict)
    agents: dict[int, tuple[AgentPresence, float | None]] = field(default_factory=dict)
    calls: dict[str, str] = field(default_factory=dict)
    tokens: dict[str, tuple[str, float]] = field(default_factory=dict)
    nodes: dict[str, _Node] = field(default_factory=dict)
    deadlines: dict[str, tuple[float, dict[str, Any]]] = field(default_factory=dict)
    counters: dict[str, tuple[int, float]] = field(default_factory=dict)
    handle_times: dict[str | None, deque[float]] = field(default_factory=dict)


class InMemoryState:
    """Single-node :class:`SharedState`, in this process.

    No method awaits anything, so each runs as one step on the event loop: that
    is what makes :meth:`claim`, :meth:`claim_next` and :meth:`due` atomic here.
    ``clock`` (epoch seconds) is the state's clock; TTLs are measured on it too.
    """

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.time,
        handle_time_samples: int = HANDLE_TIME_SAMPLES,
        dead_node_retention_s: float = DEAD_NODE_RETENTION_S,
    ) -> None:
        self._clock = clock
        self._data = _Data()
        self._samples = handle_time_samples
        self._dead_node_retention_s = dead_node_retention_s

    def peer(self) -> InMemoryState:
        """Another handle on the same state, as a second node in this process would hold.

        It shares every piece of data but holds node ids of its own
        (:meth:`register_node`), like a second :class:`~signaling.redis_state.RedisState`
        on the same Redis.
        """
        other = InMemoryState(
            clock=self._clock,
            handle_time_samples=self._samples,
            dead_node_retention_s=self._dead_node_retention_s,
        )
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
        self, agent_id: int, skills: Collection[str], *, node_id: str | None = None
    ) -> QueueEntry | None:
        candidates = [
            e for e in self._data.queue.values() if e.offerable_to(agent_id, skills, node_id)
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
        passed_by = entry.passed_by | {agent_id} if penalise else entry.passed_by
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

    async def clear_call(self, session_id: str) -> None:
        self._data.calls.pop(session_id, None)

    async def put_session_token(self, session_id: str, token_hash: str, ttl_s: float) -> None:
        check_token_hash(token_hash)
        check_ttl(ttl_s)
        self._data.tokens[session_id] = (token_hash, self._clock() + ttl_s)

    async def session_token(self, session_id: str) -> str | None:
        stored = self._data.tokens.get(session_id)
        if stored is None:
            return None
        if stored[1] <= self._clock():
            del self._data.tokens[session_id]
            return None
        return stored[0]

    async def clear_session_token(self, session_id: str) -> None:
        self._data.tokens.pop(session_id, None)

    # -- node registry -----------------------------------------------------------------

    async def register_node(self, node_id: str, info: Mapping[str, Any], ttl_s: float) -> bool:
        check_ttl(ttl_s)
        now = self._clock()
        held = self._data.nodes.get(node_id)
        if held is not None and held.expires_at > now:
            return False
        self._data.nodes[node_id] = _Node(self, json_object(info), now, now, ttl_s)
        return True

    async def refresh_node(
        self, node_id: str, info: Mapping[str, Any] | None = None, ttl_s: float | None = None
    ) -> bool:
        if ttl_s is not None:
            check_ttl(ttl_s)
        held = self._data.nodes.get(node_id)
        if held is None or held.owner is not self:
            return False
        if info is not None:
            held.info = json_object(info)
        if ttl_s is not None:
            held.ttl_s = ttl_s
        held.seen_at = self._clock()
        return True

    async def unregister_node(self, node_id: str) -> None:
        held = self._data.nodes.get(node_id)
        if held is not None and held.owner is self:
            del self._data.nodes[node_id]

    def _node_info(self, node_id: str, held: _Node, now: float) -> NodeInfo:
        return NodeInfo(
            node_id,
            json_object(held.info),
            held.registered_at,
            held.seen_at,
            held.expires_at,
            held.expires_at > now,
        )

    def _forget_dead_nodes(self, now: float) -> None:
        horizon = now - self._dead_node_retention_s
        for node_id in [n for n, held in self._data.nodes.items() if held.expires_at <= horizon]:
            del self._data.nodes[node_id]

    async def node(self, node_id: str) -> NodeInfo | None:
        now = self._clock()
        self._forget_dead_nodes(now)
        held = self._data.nodes.get(node_id)
        return None if held is None else self._node_info(node_id, held, now)

    async def nodes(self, *, include_dead: bool = False) -> list[NodeInfo]:
        now = self._clock()
        self._forget_dead_nodes(now)
        found = [
            self._node_info(node_id, self._data.nodes[node_id], now)
            for node_id in sorted(self._data.nodes)
        ]
        return [n for n in found if include_dead or n.alive]

    # -- deadlines ---------------------------------------------------------------------

    async def schedule(self, key: str, delay_s: float, payload: Mapping[str, Any]) -> None:
        self._data.deadlines[key] = (self._clock() + max(0.0, delay_s), json_object(payload))

    async def cancel(self, key: str) -> bool:
        return self._data.deadlines.pop(key, None) is not None

    async def due(self, limit: int = 100) -> list[tuple[str, dict[str, Any]]]:
        now = self._clock()
        ready = sorted((at, key) for key, (at, _) in self._data.deadlines.items() if at <= now)[
            :limit
        ]
        return [(key, self._data.deadlines.pop(key)[1]) for _, key in ready]

    async def next_deadline(self) -> float | None:
        if not self._data.deadlines:
            return None
        return max(0.0, min(at for at, _ in self._data.deadlines.values()) - self._clock())

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

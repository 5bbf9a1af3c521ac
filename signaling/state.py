"""Shared state of the counter: the queue, agent presence, which node holds which call.

Everything that several server nodes behind a load balancer must agree on goes
through :class:`SharedState`. :class:`InMemoryState` carries it for a single
node; a PostgreSQL (``SELECT ... FOR UPDATE SKIP LOCKED`` on a queue table) or
Redis (sorted set + hash, Lua for :meth:`claim`) implementation can replace it
without touching the broker. Media never goes through here: it stays on the
node that holds the call.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field, replace
from typing import Protocol


@dataclass(frozen=True)
class QueueEntry:
    session_id: str
    business: str
    #: wall-clock (epoch seconds) time the customer first joined; ordering key
    enqueued_at: float
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


@dataclass(frozen=True)
class AgentPresence:
    agent_id: int
    username: str
    display_name: str
    skills: frozenset[str]
    status: str  # ready | away | offered | busy
    node_id: str = ""
    #: when the agent last became ready (longest-idle agent gets the next customer)
    ready_since: float = 0.0
    extra: dict[str, str] = field(default_factory=dict)


class SharedState(Protocol):
    """The small interface multi-node deployments implement on PostgreSQL or Redis."""

    async def enqueue(self, entry: QueueEntry) -> None: ...
    async def update_entry(self, session_id: str, **changes: object) -> QueueEntry | None: ...
    async def dequeue(self, session_id: str) -> QueueEntry | None: ...
    async def queue(self) -> list[QueueEntry]: ...
    async def claim(self, session_id: str, agent_id: int) -> bool: ...
    async def put_agent(self, presence: AgentPresence) -> None: ...
    async def remove_agent(self, agent_id: int) -> None: ...
    async def agents(self) -> list[AgentPresence]: ...
    async def set_call_node(self, session_id: str, node_id: str) -> None: ...
    async def call_node(self, session_id: str) -> str | None: ...
    async def clear_call(self, session_id: str) -> None: ...


class InMemoryState:
    """Single-node :class:`SharedState`."""

    def __init__(self) -> None:
        self._queue: dict[str, QueueEntry] = {}
        self._agents: dict[int, AgentPresence] = {}
        self._calls: dict[str, str] = {}
        self._lock = asyncio.Lock()

    async def enqueue(self, entry: QueueEntry) -> None:
        self._queue[entry.session_id] = entry

    async def update_entry(self, session_id: str, **changes: object) -> QueueEntry | None:
        entry = self._queue.get(session_id)
        if entry is None:
            return None
        entry = replace(entry, **changes)  # type: ignore[arg-type]
        self._queue[session_id] = entry
        return entry

    async def dequeue(self, session_id: str) -> QueueEntry | None:
        return self._queue.pop(session_id, None)

    async def queue(self) -> list[QueueEntry]:
        return sorted(self._queue.values(), key=lambda e: e.order)

    async def claim(self, session_id: str, agent_id: int) -> bool:
        """Atomically mark an unoffered, reachable entry as offered to ``agent_id``."""
        async with self._lock:
            entry = self._queue.get(session_id)
            if entry is None or entry.offered_to is not None or not entry.reachable:
                return False
            self._queue[session_id] = replace(entry, offered_to=agent_id)
            return True

    async def put_agent(self, presence: AgentPresence) -> None:
        self._agents[presence.agent_id] = presence

    async def remove_agent(self, agent_id: int) -> None:
        self._agents.pop(agent_id, None)

    async def agents(self) -> list[AgentPresence]:
        return list(self._agents.values())

    async def set_call_node(self, session_id: str, node_id: str) -> None:
        self._calls[session_id] = node_id

    async def call_node(self, session_id: str) -> str | None:
        return self._calls.get(session_id)

    async def clear_call(self, session_id: str) -> None:
        self._calls.pop(session_id, None)

"""The node registry: which server processes of the counter are alive, on the database.

Every node holds a lease on its id in the ``node`` table and renews it with a
heartbeat (every third of :attr:`NodeRegistry.lease_s`). Liveness is judged by
the database's own clock, never a node's, so clock skew between hosts does not
make a live node look dead. A node

- refuses to start when a live node holds its id (a second process configured
  with the same ``VCOUNTER_NODE_ID``; the default id is unique per process); a
  process on this host that is no longer running holds no id;
- at start and at every heartbeat, closes as ``failed`` the sessions left open
  by nodes that are not alive (killed, or lost their database connection for
  longer than the lease) once ``grace_s`` more has passed (their customers may
  rejoin through another node meanwhile, which takes the sessions over), and
  sessions left open under its own id by an earlier run; sessions of live nodes
  are never touched;
- releases its id when it stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import psutil
from sqlalchemy import text
from sqlmodel import Session as DbSession
from sqlmodel import col, select

from signaling.state import NodeInfo

from .db import Database, Node, advisory_lock_key
from .session_log import close_orphaned_sessions

logger = logging.getLogger(__name__)

#: the PostgreSQL advisory lock taken while a node claims its id
REGISTRY_LOCK_KEY = advisory_lock_key("node-registry")


class NodeIdInUse(Exception):
    """A live node holds the id this node was configured with."""


@dataclass(frozen=True)
class NodeView:
    """One registered node as operators see it."""

    id: str
    host: str
    pid: int
    address: str
    started_at: datetime
    heartbeat_at: datetime
    #: seconds since its last heartbeat, by the database's clock
    silent_s: float
    alive: bool
    draining: bool
    load: dict[str, Any]

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "host": self.host,
            "pid": self.pid,
            "address": self.address,
            "started_at": self.started_at.isoformat(),
            "heartbeat_at": self.heartbeat_at.isoformat(),
            "silent_s": round(self.silent_s, 1),
            "alive": self.alive,
            "draining": self.draining,
            "load": self.load,
        }


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _holder_may_live(row: Node) -> bool:
    """False when the process that registered ``row`` is known to be gone: it ran on this host and
    its pid is not running (a node restarted after a crash need not wait for its old lease), or it
    is this very process (an earlier application object, as tests make)."""
    if row.host != socket.gethostname():
        return True
    return row.pid != os.getpid() and psutil.pid_exists(row.pid)


def database_now(s: DbSession) -> datetime:
    """The database server's clock (UTC)."""
    if s.get_bind().dialect.name == "sqlite":
        raw = s.execute(text("SELECT strftime('%Y-%m-%d %H:%M:%f', 'now')")).scalar_one()
        return datetime.fromisoformat(raw).replace(tzinfo=UTC)
    return _aware(s.execute(text("SELECT now()")).scalar_one())


def _lock(s: DbSession) -> None:
    """Serialise claims of ids across processes for the rest of the transaction."""
    if s.get_bind().dialect.name == "postgresql":
        s.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": REGISTRY_LOCK_KEY})
    else:
        s.execute(text("UPDATE node SET id = id WHERE 0"))  # takes SQLite's write lock now


def _views(s: DbSession, lease_s: float) -> list[NodeView]:
    now = database_now(s)
    views = []
    for row in s.exec(select(Node).order_by(col(Node.id))):
        silent = (now - _aware(row.heartbeat_at)).total_seconds()
        views.append(
            NodeView(
                row.id,
                row.host,
                row.pid,
                row.address,
                _aware(row.started_at),
                _aware(row.heartbeat_at),
                max(0.0, silent),
                silent <= lease_s,
                row.draining,
                row.load_info,
            )
        )
    return views


def list_nodes(s: DbSession, lease_s: float) -> list[NodeView]:
    """Every registered node with its liveness."""
    return _views(s, lease_s)


class NodeRegistry:
    """This node's lease in the registry, renewed until :meth:`aclose`."""

    def __init__(
        self,
        db: Database,
        node_id: str,
        *,
        lease_s: float = 15.0,
        grace_s: float = 0.0,
        address: str = "",
        load: Callable[[], dict[str, Any]] | None = None,
    ) -> None:
        self.db = db
        self.node_id = node_id
        self.lease_s = lease_s
        #: seconds past a dead node's lease before its sessions are closed: its customers may come
        #: back through another node meanwhile, which takes their sessions over
        self.grace_s = grace_s
        self.address = address
        self._load = load or dict
        self._task: asyncio.Task[None] | None = None
        self.draining = False
        #: the sessions of dead nodes (and of this id's earlier run) :meth:`start` closed
        self.closed_at_start: list[str] = []
        #: called with the ids of the sessions of dead nodes each heartbeat closed
        self.on_closed: list[Callable[[list[str]], Awaitable[None]]] = []

    async def start(self) -> list[str]:
        """Claim the id (:class:`NodeIdInUse` if a live node holds it) and close the sessions of
        dead nodes and of this id's earlier run; returns the ids of the sessions closed."""
        closed = await self.db.run(self._claim)
        self.closed_at_start = closed
        self._task = asyncio.get_running_loop().create_task(
            self._beat(), name=f"node-heartbeat-{self.node_id}"
        )
        return closed

    def _claim(self, s: DbSession) -> list[str]:
        _lock(s)
        now = database_now(s)
        row = s.get(Node, self.node_id)
        if row is not None:
            silent = (now - _aware(row.heartbeat_at)).total_seconds()
            if silent <= self.lease_s and _holder_may_live(row):
                raise NodeIdInUse(
                    f"node id {self.node_id!r} is held by a live node ({row.host}, pid {row.pid}, last "
                    f"heartbeat {silent:.0f} s ago): give this node another VCOUNTER_NODE_ID, or leave "
                    "it unset for a unique one"
                )
            s.delete(row)
            s.flush()
        s.add(
            Node(
                id=self.node_id,
                host=socket.gethostname(),
                pid=os.getpid(),
                started_at=now,
                heartbeat_at=now,
                address=self.address,
                load=json.dumps(self._load()),
            )
        )
        s.flush()
        return self._sweep(s, now, own_earlier_run=True)

    def _sweep(self, s: DbSession, now: datetime, *, own_earlier_run: bool = False) -> list[str]:
        """Forget nodes that are not alive and close their sessions (the caller holds the lock);
        with ``own_earlier_run``, also the sessions left open under this node's id."""
        keep = set()
        for row in s.exec(select(Node)):
            silent = (now - _aware(row.heartbeat_at)).total_seconds()
            if row.id == self.node_id or silent <= self.lease_s + self.grace_s:
                keep.add(
                    row.id
                )  # alive, or dead so recently that its customers may still come back
            else:
                logger.warning(
                    "node %s (%s, pid %d) missed its heartbeat for %.0f s: it is dead",
                    row.id,
                    row.host,
                    row.pid,
                    silent,
                )
                s.delete(row)
        if own_earlier_run:
            keep.discard(self.node_id)
        return close_orphaned_sessions(s, keep, now=now)

    def _heartbeat(self, s: DbSession) -> list[str]:
        _lock(s)
        now = database_now(s)
        row = s.get(Node, self.node_id)
        if row is None:  # removed by another node that thought us dead: register again
            logger.warning(
                "node %s: its registration was gone (it missed heartbeats): registering again",
                self.node_id,
            )
            return self._claim(s)
        row.heartbeat_at = now
        # ``vcounter drain`` sets the flag in the database; a node that drains by itself (SIGTERM)
        # keeps it set
        if self.draining and not row.draining:
            row.draining = True
        elif row.draining != self.draining:
            logger.warning(
                "node %s: %s",
                self.node_id,
                "draining: no new sessions here"
                if row.draining
                else "draining ended: taking new sessions again",
            )
            self.draining = row.draining
        row.load = json.dumps(self._load())
        s.add(row)
        return self._sweep(s, now)

    async def _beat(self) -> None:
        while True:
            await asyncio.sleep(self.lease_s / 3)
            try:
                closed = await self.db.run(self._heartbeat)
            except Exception:
                logger.exception("node %s: heartbeat failed", self.node_id)
                continue
            if closed:
                logger.warning(
                    "closed %d session(s) of dead nodes: %s", len(closed), ", ".join(closed)
                )
                for callback in self.on_closed:
                    try:
                        await callback(closed)
                    except Exception:
                        logger.exception("node %s: acting on closed sessions failed", self.node_id)

    async def view(self, node_id: str) -> NodeView | None:
        """One registered node with its liveness and address."""

        def find(s: DbSession) -> NodeView | None:
            return next((v for v in _views(s, self.lease_s) if v.id == node_id), None)

        return await self.db.run(find)

    async def drain(self) -> None:
        """Take no new sessions from now on (the ones held go on), and say so in the registry."""
        self.draining = True

        def write(s: DbSession) -> None:
            row = s.get(Node, self.node_id)
            if row is not None:
                row.draining = True
                s.add(row)

        await self.db.run(write)

    async def set_address(self, address: str) -> None:
        """Where other nodes reach this one (once the listening port is known)."""
        self.address = address

        def write(s: DbSession) -> None:
            row = s.get(Node, self.node_id)
            if row is not None:
                row.address = address
                s.add(row)

        await self.db.run(write)

    async def node(self, node_id: str) -> NodeInfo | None:
        """A registered node as the message bus asks (:class:`signaling.state.NodeDirectory`)."""
        view = await self.view(node_id)
        if view is None:
            return None
        return NodeInfo(
            node_id=view.id,
            info={"address": view.address, "draining": view.draining, **view.load},
            registered_at=view.started_at.timestamp(),
            seen_at=view.heartbeat_at.timestamp(),
            expires_at=view.heartbeat_at.timestamp() + self.lease_s,
            alive=view.alive,
        )

    async def aclose(self) -> None:
        """Stop the heartbeat and release the id. Safe to call twice."""
        task, self._task = self._task, None
        if task is None:
            return
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

        def release(s: DbSession) -> None:
            row = s.get(Node, self.node_id)
            if row is not None and row.pid == os.getpid() and row.host == socket.gethostname():
                s.delete(row)

        with contextlib.suppress(Exception):
            await self.db.run(release)


def set_draining(s: DbSession, node_id: str, draining: bool) -> bool:
    """Mark node ``node_id`` as draining (or not) in the registry; False when there is no such node.
    The node reads the flag at its next heartbeat."""
    row = s.get(Node, node_id)
    if row is None:
        return False
    row.draining = draining
    s.add(row)
    return True

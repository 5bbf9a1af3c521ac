"""The message bus between server nodes: one interface, an in-process and a Redis carrier.

A node sends a JSON object to another node's inbox with :meth:`Bus.send`, or to
every node with :meth:`Bus.broadcast`, and receives with :meth:`Bus.subscribe`,
which hands every message addressed to it to one handler. The carrier is chosen
at start and the caller never asks which it has:

* :class:`LocalBus` (here): in the process. Every bus on one
  :class:`LocalNetwork` is a node; a bus made alone is a single node talking to
  itself. Used on one node and in tests.
* :class:`~signaling.redis_bus.RedisBus`: between processes, through Redis
  (a stream per node for :meth:`~Bus.send`, pub/sub for :meth:`~Bus.broadcast`).

What a handler can rely on, with either carrier:

* **Point to point is at least once, in order.** A message waits in the inbox
  until the receiving node subscribes (it may start after the sender sent). It
  counts as delivered once the handler returned; if the handler raised, or the
  node stopped while it ran, the message comes again (``redelivered=True``)
  after ``retry_after_s``, or as soon as a node of that id subscribes again, up
  to ``max_deliveries`` times; then it is dropped with an error in the log.
  Handlers must therefore be idempotent (:attr:`BusMessage.id` names a
  message). A redelivered message may come after newer ones.
* **Broadcast is at most once**, to every node subscribed at that moment, the
  sender included: it carries updates that the next one supersedes (queue
  positions, load), so a node that was not listening simply gets the next.
  A handler that raises on a broadcast is logged; the message is not retried.
* **One handler call at a time** per bus, broadcasts and inbox together.
* Every message carries its sender (``from``), an id and the sender's send
  time, so :attr:`BusMessage.latency_s` measures the bus (plus the clock offset
  between the two nodes). With a :class:`~signaling.state.NodeDirectory` the
  receiver checks the sender: a message from a node that is not a live node of
  the registry is still delivered, with ``known_sender=False``, for the handler
  to ignore and log.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from .ids import new_id
from .state import NodeDirectory, json_object

logger = logging.getLogger(__name__)

#: messages an inbox keeps for a node that does not read them; older ones are dropped
INBOX_MAXLEN = 10_000
#: seconds after which a message whose handler failed is delivered again
RETRY_AFTER_S = 30.0
#: deliveries of one message before it is dropped
MAX_DELIVERIES = 5


@dataclass(frozen=True)
class BusMessage:
    """One message as the receiving node's handler gets it."""

    #: unique id given by the sender; the same on every redelivery
    id: str
    #: node id of the sender (``from`` on the wire)
    sender: str
    #: the receiving node for :meth:`Bus.send`, None for :meth:`Bus.broadcast`
    target: str | None
    #: sender's wall clock (epoch seconds) when it sent the message
    sent_at: float
    #: receiver's wall clock when the message was handed to the handler
    received_at: float
    #: the JSON object that was sent
    body: dict[str, Any]
    #: the sender is a live node of the registry (always True without a directory)
    known_sender: bool = True
    #: an earlier delivery of this message failed or was cut short
    redelivered: bool = False

    @property
    def broadcast(self) -> bool:
        return self.target is None

    @property
    def latency_s(self) -> float:
        """Seconds from send to handler, including the offset between the two clocks."""
        return self.received_at - self.sent_at


Handler = Callable[[BusMessage], Awaitable[None]]


class Bus(Protocol):
    """Node-to-node messages; see the module documentation for the delivery promises."""

    @property
    def node_id(self) -> str:
        """The node this bus receives for and sends as."""
        ...

    async def send(self, node_id: str, message: Mapping[str, Any]) -> str:
        """Put a JSON object in ``node_id``'s inbox; returns the message id."""
        ...

    async def broadcast(self, message: Mapping[str, Any]) -> str:
        """Send a JSON object to every node listening now, this one included; returns its id."""
        ...

    async def subscribe(self, handler: Handler) -> None:
        """Start handing this node's messages to ``handler``; once per bus.

        Returns when the bus is listening: a broadcast sent after that reaches it.
        """
        ...

    async def aclose(self) -> None:
        """Stop receiving (reader tasks cancelled and awaited); idempotent.

        A message whose handler was cut short stays in the inbox for the next
        subscriber of this node id.
        """
        ...


@dataclass(frozen=True)
class Envelope:
    """A message as it travels: what the sender wrote, before the receiver looks at it."""

    id: str
    sender: str
    target: str | None
    sent_at: float
    body: dict[str, Any]

    @classmethod
    def new(cls, sender: str, target: str | None, message: Mapping[str, Any]) -> Envelope:
        return cls(new_id(12), sender, target, time.time(), json_object(message))

    def fields(self) -> dict[str, str]:
        """Flat string fields (a Redis stream entry)."""
        return {
            "id": self.id,
            "from": self.sender,
            "to": self.target or "",
            "sent_at": repr(self.sent_at),
            "body": json.dumps(self.body),
        }

    @classmethod
    def from_fields(cls, fields: Mapping[str, str]) -> Envelope:
        """The inverse of :meth:`fields`; ``KeyError``/``ValueError`` if malformed."""
        body = json.loads(fields["body"])
        if not isinstance(body, dict):
            raise ValueError("a bus message body is a JSON object")
        return cls(
            fields["id"], fields["from"], fields["to"] or None, float(fields["sent_at"]), body
        )

    def to_json(self) -> str:
        return json.dumps(self.fields())

    @classmethod
    def from_json(cls, raw: str) -> Envelope:
        fields = json.loads(raw)
        if not isinstance(fields, dict):
            raise ValueError("a bus envelope is a JSON object")
        return cls.from_fields(fields)

    def received(self, *, known_sender: bool, redelivered: bool = False) -> BusMessage:
        return BusMessage(
            self.id,
            self.sender,
            self.target,
            self.sent_at,
            time.time(),
            self.body,
            known_sender,
            redelivered,
        )


class SenderCheck:
    """Whether a sender is a live node, asked of the directory and remembered briefly.

    A live sender is remembered for ``known_ttl_s``, an unknown one for
    ``unknown_ttl_s`` (a node that just registered is soon recognised). When the
    directory cannot be asked, the sender counts as known: a registry hiccup
    must not make nodes ignore each other.
    """

    def __init__(
        self,
        directory: NodeDirectory | None,
        *,
        known_ttl_s: float = 1.0,
        unknown_ttl_s: float = 0.25,
    ) -> None:
        self._directory = directory
        self._known_ttl_s = known_ttl_s
        self._unknown_ttl_s = unknown_ttl_s
        self._cache: dict[str, tuple[bool, float]] = {}

    async def known(self, node_id: str) -> bool:
        if self._directory is None:
            return True
        now = time.monotonic()
        cached = self._cache.get(node_id)
        if cached is not None:
            alive, at = cached
            if now - at < (self._known_ttl_s if alive else self._unknown_ttl_s):
                return alive
        try:
            info = await self._directory.node(node_id)
        except Exception:
            logger.warning("bus: could not look node %s up in the registry", node_id, exc_info=True)
            return True
        alive = info is not None and info.alive
        if len(self._cache) > 10_000:
            self._cache.clear()
        self._cache[node_id] = (alive, now)
        return alive


def reader_done(task: asyncio.Task[None]) -> None:
    """Log a bus reader task that ended other than by being cancelled (it should not end)."""
    if not task.cancelled() and (error := task.exception()) is not None:
        logger.error("bus reader %s stopped", task.get_name(), exc_info=error)


# -- in-process carrier ----------------------------------------------------------------


@dataclass
class _Pending:
    envelope: Envelope
    #: deliveries that were started
    deliveries: int = 0
    #: loop time before which it is not delivered again
    not_before: float = 0.0


class _Inbox:
    def __init__(self, maxlen: int) -> None:
        self.pending: deque[_Pending] = deque(maxlen=maxlen)
        self.wakeup = asyncio.Event()

    def post(self, item: _Pending) -> None:
        self.pending.append(item)
        self.wakeup.set()


class LocalNetwork:
    """The nodes of one process: an inbox per node id and the buses listening now."""

    def __init__(self, *, maxlen: int = INBOX_MAXLEN) -> None:
        self._maxlen = maxlen
        self._inboxes: dict[str, _Inbox] = {}
        self._listening: dict[str, LocalBus] = {}

    def inbox(self, node_id: str) -> _Inbox:
        inbox = self._inboxes.get(node_id)
        if inbox is None:
            inbox = self._inboxes[node_id] = _Inbox(self._maxlen)
        return inbox

    def listen(self, bus: LocalBus) -> None:
        if bus.node_id in self._listening:
            raise RuntimeError(f"node {bus.node_id} already has a subscribed bus on this network")
        self._listening[bus.node_id] = bus

    def leave(self, bus: LocalBus) -> None:
        if self._listening.get(bus.node_id) is bus:
            del self._listening[bus.node_id]

    def broadcast(self, envelope: Envelope) -> None:
        for bus in list(self._listening.values()):
            bus._broadcasts.append(envelope)
            self.inbox(bus.node_id).wakeup.set()


class LocalBus:
    """:class:`Bus` inside one process (see the module documentation).

    Buses made on the same ``network`` reach each other; without one, the bus
    is a network of its own.
    """

    def __init__(
        self,
        node_id: str,
        network: LocalNetwork | None = None,
        *,
        directory: NodeDirectory | None = None,
        retry_after_s: float = RETRY_AFTER_S,
        max_deliveries: int = MAX_DELIVERIES,
    ) -> None:
        self._node_id = node_id
        self._network = network or LocalNetwork()
        self._senders = SenderCheck(directory)
        self._retry_after_s = retry_after_s
        self._max_deliveries = max_deliveries
        self._inbox = self._network.inbox(node_id)
        self._broadcasts: deque[Envelope] = deque()
        self._retries: deque[_Pending] = deque()
        self._current: _Pending | None = None
        self._handler: Handler | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False

    @property
    def node_id(self) -> str:
        return self._node_id

    @property
    def network(self) -> LocalNetwork:
        return self._network

    async def send(self, node_id: str, message: Mapping[str, Any]) -> str:
        envelope = Envelope.new(self._node_id, node_id, message)
        self._network.inbox(node_id).post(_Pending(envelope))
        return envelope.id

    async def broadcast(self, message: Mapping[str, Any]) -> str:
        envelope = Envelope.new(self._node_id, None, message)
        self._network.broadcast(envelope)
        return envelope.id

    async def subscribe(self, handler: Handler) -> None:
        if self._closed:
            raise RuntimeError("the bus is closed")
        if self._handler is not None:
            raise RuntimeError("the bus already has a handler")
        self._network.listen(self)
        self._handler = handler
        task = asyncio.create_task(self._read(handler), name=f"bus-{self._node_id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        task.add_done_callback(reader_done)

    def _take(self, now: float) -> _Pending | Envelope | None:
        if self._broadcasts:
            return self._broadcasts.popleft()
        if self._retries and self._retries[0].not_before <= now:
            return self._retries.popleft()
        if self._inbox.pending:
            return self._inbox.pending.popleft()
        return None

    async def _read(self, handler: Handler) -> None:
        loop = asyncio.get_running_loop()
        while True:
            item = self._take(loop.time())
            if item is None:
                self._inbox.wakeup.clear()
                timeout = self._retries[0].not_before - loop.time() if self._retries else None
                try:
                    async with asyncio.timeout(timeout):
                        await self._inbox.wakeup.wait()
                except TimeoutError:
                    pass
                continue
            if isinstance(item, Envelope):
                await self._deliver_broadcast(handler, item)
            else:
                await self._deliver(handler, item)

    async def _deliver_broadcast(self, handler: Handler, envelope: Envelope) -> None:
        message = envelope.received(known_sender=await self._senders.known(envelope.sender))
        try:
            await handler(message)
        except Exception:
            logger.exception(
                "bus %s: handler failed on broadcast %s from %s",
                self._node_id,
                envelope.id,
                envelope.sender,
            )

    async def _deliver(self, handler: Handler, item: _Pending) -> None:
        envelope = item.envelope
        if item.deliveries >= self._max_deliveries:
            self._drop(item)
            return
        item.deliveries += 1
        # cleared only when the handler returns or raises: if the bus is closed while
        # it runs, aclose() finds the message here and puts it back in the inbox
        self._current = item
        try:
            message = envelope.received(
                known_sender=await self._senders.known(envelope.sender),
                redelivered=item.deliveries > 1,
            )
            await handler(message)
        except Exception:
            if item.deliveries >= self._max_deliveries:
                logger.exception(
                    "bus %s: handler failed on message %s from %s",
                    self._node_id,
                    envelope.id,
                    envelope.sender,
                )
                self._drop(item)
            else:
                logger.exception(
                    "bus %s: handler failed on message %s from %s (delivery %d, again in %.1f s)",
                    self._node_id,
                    envelope.id,
                    envelope.sender,
                    item.deliveries,
                    self._retry_after_s,
                )
                item.not_before = asyncio.get_running_loop().time() + self._retry_after_s
                self._retries.append(item)
        self._current = None

    def _drop(self, item: _Pending) -> None:
        logger.error(
            "bus %s: message %s from %s dropped after %d deliveries",
            self._node_id,
            item.envelope.id,
            item.envelope.sender,
            item.deliveries,
        )

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        # what was not handled goes back to the inbox, for the next bus of this node id
        unfinished = ([self._current] if self._current is not None else []) + list(self._retries)
        self._current = None
        self._retries.clear()
        for item in reversed(unfinished):
            item.not_before = 0.0
            self._inbox.pending.appendleft(item)
        self._network.leave(self)

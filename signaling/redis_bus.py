"""The :class:`~signaling.bus.Bus` between processes, through Redis.

* **Point to point: a stream per node.** :meth:`RedisBus.send` appends to
  ``<prefix>inbox:<node>`` (``XADD`` with an approximate ``MAXLEN``). The
  receiving node reads it in a consumer group (``XREADGROUP``, blocking) under
  its node id, and acknowledges a message (``XACK``) only once the handler has
  returned. A message whose handler raised stays pending and is claimed again
  (``XAUTOCLAIM``) once it has been idle ``retry_after_s``; a node that
  restarts under the same id first reads what it left pending. The stream
  persists while the receiver is down, so nothing sent to it is lost; an inbox
  nobody sends to for ``inbox_ttl_s`` expires (its node is long gone), and the
  consumer group is made again if a live node's inbox ever expired.
* **Broadcast: pub/sub** on ``<prefix>broadcast``. Broadcasts carry updates
  that the next one supersedes (queue positions, load reports), so delivery to
  the nodes listening at that moment is what they need: it costs one
  ``PUBLISH`` whatever the number of nodes, and stores nothing per node. What
  must reach every node is sent to each one with :meth:`RedisBus.send` instead.

The client must decode responses; :func:`~signaling.redis_state.connect` makes
one as it should be (no socket timeout, which a blocking read would also hit).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.exceptions import RedisError, ResponseError
from redis.typing import EncodableT, FieldT

from .bus import (
    INBOX_MAXLEN,
    MAX_DELIVERIES,
    RETRY_AFTER_S,
    Envelope,
    Handler,
    SenderCheck,
    reader_done,
)
from .redis_state import check_client, connect
from .state import NodeDirectory

logger = logging.getLogger(__name__)

#: the consumer group that reads a node's inbox (one per inbox; the consumer is the node id)
GROUP = "bus"
#: seconds of silence after which nobody's inbox is kept
INBOX_TTL_S = 24 * 3600.0
#: seconds to wait before retrying after Redis failed, doubling up to the maximum
BACKOFF_S = (0.2, 5.0)


class RedisBus:
    """:class:`~signaling.bus.Bus` on Redis for node ``node_id`` (see the module documentation)."""

    def __init__(
        self,
        client: Redis,
        node_id: str,
        *,
        prefix: str = "vcounter:",
        directory: NodeDirectory | None = None,
        owns_client: bool = False,
        maxlen: int = INBOX_MAXLEN,
        retry_after_s: float = RETRY_AFTER_S,
        max_deliveries: int = MAX_DELIVERIES,
        inbox_ttl_s: float = INBOX_TTL_S,
        block_s: float = 2.0,
    ) -> None:
        check_client(client, "RedisBus")
        self._r = client
        self._node_id = node_id
        self._prefix = prefix
        self._owns_client = owns_client
        self._senders = SenderCheck(directory)
        self._maxlen = maxlen
        self._retry_ms = max(1, round(retry_after_s * 1000))
        self._max_deliveries = max_deliveries
        self._inbox_ttl_ms = max(1, round(inbox_ttl_s * 1000))
        self._block_ms = max(1, round(block_s * 1000))
        self._inbox = self.inbox_key(node_id)
        self._channel = prefix + "broadcast"
        self._handler: Handler | None = None
        self._handler_lock = asyncio.Lock()
        self._pubsub: PubSub | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False

    @classmethod
    def from_url(cls, url: str, node_id: str, **kwargs: Any) -> RedisBus:
        """A bus on its own client (:func:`~signaling.redis_state.connect`) to ``url``, closed with it."""
        return cls(connect(url), node_id, owns_client=True, **kwargs)

    @property
    def node_id(self) -> str:
        return self._node_id

    def inbox_key(self, node_id: str) -> str:
        return f"{self._prefix}inbox:{node_id}"

    # -- sending -----------------------------------------------------------------------

    async def send(self, node_id: str, message: Mapping[str, Any]) -> str:
        envelope = Envelope.new(self._node_id, node_id, message)
        key = self.inbox_key(node_id)
        # a copy of the type xadd() asks for (dict is invariant: a dict[str, str] does not fit)
        fields: dict[FieldT, EncodableT] = {k: v for k, v in envelope.fields().items()}
        async with self._r.pipeline(transaction=True) as pipe:
            pipe.xadd(key, fields, maxlen=self._maxlen, approximate=True)
            pipe.pexpire(key, self._inbox_ttl_ms)
            await pipe.execute()
        return envelope.id

    async def broadcast(self, message: Mapping[str, Any]) -> str:
        envelope = Envelope.new(self._node_id, None, message)
        await self._r.publish(self._channel, envelope.to_json())
        return envelope.id

    # -- receiving ---------------------------------------------------------------------

    async def subscribe(self, handler: Handler) -> None:
        if self._closed:
            raise RuntimeError("the bus is closed")
        if self._handler is not None:
            raise RuntimeError("the bus already has a handler")
        self._handler = handler
        await self._ensure_group()
        pubsub = self._pubsub = self._r.pubsub()
        await pubsub.subscribe(self._channel)
        # the confirmation: from here on, a broadcast reaches this node
        while (confirmed := await pubsub.get_message(timeout=5.0)) is not None:
            if confirmed["type"] == "subscribe":
                break
        else:
            raise RuntimeError("Redis did not confirm the broadcast subscription")
        self._spawn(self._read_inbox(handler), f"bus-inbox-{self._node_id}")
        self._spawn(self._read_broadcasts(handler, pubsub), f"bus-broadcast-{self._node_id}")

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        task: asyncio.Task[None] = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        task.add_done_callback(reader_done)

    async def _ensure_group(self) -> None:
        try:
            await self._r.xgroup_create(self._inbox, GROUP, id="0", mkstream=True)
        except ResponseError as e:
            if "BUSYGROUP" not in str(e):
                raise

    async def _read_inbox(self, handler: Handler) -> None:
        loop = asyncio.get_running_loop()
        backoff = BACKOFF_S[0]
        history = True  # first what this node id left pending (a restart)
        next_sweep = loop.time() + self._retry_ms / 2000
        while not self._closed:
            try:
                if history:
                    await self._read_history(handler)
                    history = False
                if loop.time() >= next_sweep:
                    await self._reclaim(handler)
                    next_sweep = loop.time() + min(self._retry_ms / 2000, 5.0)
                block = max(1, min(self._block_ms, round((next_sweep - loop.time()) * 1000)))
                reply = await self._r.xreadgroup(
                    GROUP, self._node_id, {self._inbox: ">"}, count=100, block=block
                )
                for stream_id, fields in _entries(reply):
                    await self._deliver(handler, stream_id, fields, redelivered=False)
                backoff = BACKOFF_S[0]
            except ResponseError as e:
                if "NOGROUP" in str(e) or "no longer exists" in str(e):
                    logger.warning("bus %s: inbox was gone, making it again", self._node_id)
                    await self._retry_later(self._ensure_group)
                    history = True
                else:
                    logger.warning("bus %s: inbox read failed: %s", self._node_id, e)
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, BACKOFF_S[1])
            except (RedisError, OSError) as e:
                logger.warning(
                    "bus %s: inbox read failed (%s), again in %.1f s", self._node_id, e, backoff
                )
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, BACKOFF_S[1])

    async def _retry_later(self, step: Callable[[], Awaitable[None]]) -> None:
        try:
            await step()
        except (RedisError, OSError) as e:
            logger.warning("bus %s: %s", self._node_id, e)
            await asyncio.sleep(BACKOFF_S[0])

    async def _read_history(self, handler: Handler) -> None:
        """Deliver again what this consumer read but did not acknowledge before."""
        last = "0"
        while True:
            reply = await self._r.xreadgroup(GROUP, self._node_id, {self._inbox: last}, count=100)
            entries = _entries(reply)
            if not entries:
                return
            for stream_id, fields in entries:
                await self._deliver(handler, stream_id, fields, redelivered=True)
            last = entries[-1][0]

    async def _reclaim(self, handler: Handler) -> None:
        """Deliver again messages pending longer than ``retry_after_s``; drop worn-out ones."""
        pending = await self._r.xpending_range(
            self._inbox, GROUP, min="-", max="+", count=100, idle=self._retry_ms
        )
        for item in pending:
            if int(item["times_delivered"]) >= self._max_deliveries:
                logger.error(
                    "bus %s: message %s dropped after %d deliveries",
                    self._node_id,
                    item["message_id"],
                    item["times_delivered"],
                )
                await self._r.xack(self._inbox, GROUP, item["message_id"])
        start = "0-0"
        while True:
            reply = await self._r.xautoclaim(
                self._inbox,
                GROUP,
                self._node_id,
                min_idle_time=self._retry_ms,
                start_id=start,
                count=100,
            )
            start, claimed = reply[0], reply[1]
            for stream_id, fields in claimed:
                await self._deliver(handler, stream_id, fields, redelivered=True)
            if start == "0-0" or not claimed:
                return

    async def _deliver(
        self,
        handler: Handler,
        stream_id: str,
        fields: Mapping[str, str] | None,
        *,
        redelivered: bool,
    ) -> None:
        if not fields:  # trimmed away (MAXLEN) while pending
            await self._r.xack(self._inbox, GROUP, stream_id)
            return
        try:
            envelope = Envelope.from_fields(fields)
        except (KeyError, ValueError):
            logger.error("bus %s: malformed message %s dropped", self._node_id, stream_id)
            await self._r.xack(self._inbox, GROUP, stream_id)
            return
        message = envelope.received(
            known_sender=await self._senders.known(envelope.sender), redelivered=redelivered
        )
        try:
            async with self._handler_lock:
                await handler(message)
        except Exception:
            logger.exception(
                "bus %s: handler failed on message %s from %s (delivered again in %.1f s)",
                self._node_id,
                envelope.id,
                envelope.sender,
                self._retry_ms / 1000,
            )
            return
        await self._r.xack(self._inbox, GROUP, stream_id)

    async def _read_broadcasts(self, handler: Handler, pubsub: PubSub) -> None:
        backoff = BACKOFF_S[0]
        while not self._closed:
            try:
                raw = await pubsub.get_message(
                    ignore_subscribe_messages=True, timeout=self._block_ms / 1000
                )
                backoff = BACKOFF_S[0]
            except (RedisError, OSError) as e:
                logger.warning(
                    "bus %s: broadcast read failed (%s), again in %.1f s", self._node_id, e, backoff
                )
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, BACKOFF_S[1])
                continue
            if raw is None or raw.get("type") != "message":
                continue
            try:
                envelope = Envelope.from_json(raw["data"])
            except (KeyError, ValueError, TypeError):
                logger.error("bus %s: malformed broadcast dropped", self._node_id)
                continue
            message = envelope.received(known_sender=await self._senders.known(envelope.sender))
            try:
                async with self._handler_lock:
                    await handler(message)
            except Exception:
                logger.exception(
                    "bus %s: handler failed on broadcast %s from %s",
                    self._node_id,
                    envelope.id,
                    envelope.sender,
                )

    # -- lifecycle ---------------------------------------------------------------------

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        # a client with a socket timeout can lose a cancellation (see connect()):
        # cancel again until the readers are gone; they also stop at the closed flag
        while self._tasks:
            for task in list(self._tasks):
                task.cancel()
            await asyncio.wait(list(self._tasks), timeout=1.0)
        if self._pubsub is not None:
            await self._pubsub.aclose()
            self._pubsub = None
        if self._owns_client:
            await self._r.aclose()


def _entries(reply: Any) -> list[tuple[str, dict[str, str]]]:
    """The entries of an ``XREADGROUP`` reply: ``[[stream, [(id, fields), ...]], ...]``."""
    if not reply:
        return []
    streams = reply.values() if isinstance(reply, dict) else (entries for _, entries in reply)
    return [(stream_id, fields or {}) for entries in streams for stream_id, fields in entries]

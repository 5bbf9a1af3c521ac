"""A participant's connection held by another node, as a broker :class:`~signaling.broker.Channel`.

When a participant's WebSocket is on node B and the session it belongs to on
node A, A talks to it through a :class:`RemoteChannel`: every message A sends
goes over the bus to B as ``{"t": "deliver", "kind", "to", "data"}`` (``data``
the message's JSON text), and B's edge writes it to the socket; ``close`` goes
as ``{"t": "close", ...}``, and ``release`` (A is done with the participant, the
connection stays on B) as ``{"t": "released", ...}``. Messages keep their order: one writer task per
channel sends them one after another into B's inbox, which is ordered.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from pydantic import BaseModel

from . import messages as m
from .bus import Bus

logger = logging.getLogger(__name__)

#: messages a remote channel holds for a bus that does not take them; then it gives up
MAX_BACKLOG = 1000


class RemoteChannel:
    """Sends to a participant whose connection is on node ``node_id`` (``kind`` ``agent`` or
    ``customer``, ``to`` the id that node knows the connection by)."""

    def __init__(self, bus: Bus, node_id: str, kind: str, to: str, label: str = "") -> None:
        self.bus = bus
        self.node_id = node_id
        self.kind = kind
        self.to = to
        self.label = label or f"{kind} {to} on {node_id}"
        self._queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(maxsize=MAX_BACKLOG)
        self._closing = False
        self._writer = asyncio.get_running_loop().create_task(
            self._write(), name=f"relay-{self.label}"
        )

    def send(self, message: BaseModel) -> None:
        if self._closing:
            return
        self._put({"t": "deliver", "kind": self.kind, "to": self.to, "data": m.dump(message)})

    def close(self, code: int, reason: str) -> None:
        if self._closing:
            return
        self._closing = True
        self._put({"t": "close", "kind": self.kind, "to": self.to, "code": code, "reason": reason})

    def release(self, **detail: Any) -> None:
        """The session's node is done with this participant (its connection stays open where it
        is): after the messages queued so far, ``{"t": "released", "kind", "to", **detail}``."""
        if self._closing:
            return
        self._closing = True
        self._put({"t": "released", "kind": self.kind, "to": self.to, **detail})

    def _put(self, body: dict[str, Any]) -> None:
        try:
            self._queue.put_nowait(body)
        except asyncio.QueueFull:
            logger.warning(
                "%s: the bus is not taking messages, dropping the connection", self.label
            )
            self._closing = True

    async def _write(self) -> None:
        while True:
            body = await self._queue.get()
            try:
                await self.bus.send(self.node_id, body)
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("%s: could not relay a message", self.label)
            if body["t"] in ("close", "released"):
                return

    async def aclose(self) -> None:
        """Send what is queued (for at most 2 s), then stop the writer. Safe to call twice."""
        if not self._writer.done():
            try:
                await asyncio.wait_for(self._drained(), timeout=2)
            except TimeoutError:
                pass
            self._writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._writer

    async def _drained(self) -> None:
        while not self._queue.empty() and not self._writer.done():
            await asyncio.sleep(0.01)

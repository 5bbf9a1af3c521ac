"""What one client may take of the counter: customers queued per address, ID-photo uploads, the
time a customer's media may take to start.

Anonymous customers need no login, so each limit is counted per network address (an IPv4
address, or an IPv6 /64: one subscriber's prefix) and, where there is one, per session. The
counts live in the counter's shared state (:class:`signaling.state.SharedState` counters), so
every node sees the same ones; what only the node holding a session can see (one upload at a time,
a call's media) is kept on that node.

- :class:`CustomerCap`: ``customers_per_address`` customer connections that joined or rejoined a
  session, from one address, at once. Each holds a *slot* (a counter key: the first hit in its
  window owns it) from its ``join``/``rejoin`` until its session is over, or until the rejoin
  window has passed after the connection closed (the session may come back meanwhile, and a
  dropped session still waits in the queue). A rejoin on the node where the dropped connection's
  slot waits takes that slot over. A slot a node could not give back (the node died) lapses after
  :data:`SLOT_HOLD_S`.
- :class:`UploadLimits`: ``identity_uploads_per_session`` and ``identity_uploads_per_address``
  ID photos per ``identity_upload_window_s``, counted before the body is read, and one upload of a
  session checked at a time: no image reaches a face worker past them.
- :class:`MediaStartWatch`: a customer in a call whose agent is there must have a connected media
  connection within ``customer_media_start_s`` (sending no ``offer``, or offering candidates that
  never connect, would hold the agent forever); the call is then ended.

If the shared state cannot be reached, the caps are not counted (the join fails on the queue
anyway): a limit never stops the counter.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import ipaddress
import logging
from collections.abc import AsyncIterator, Iterator

from aiohttp import web

from signaling import messages as m
from signaling.broker import Broker
from signaling.exceptions import SignalingError
from signaling.media_hub import MediaHub
from signaling.state import SharedState

from .appkeys import BROKER, CONFIG, HUB
from .exceptions import TooManyRequests

logger = logging.getLogger(__name__)

#: seconds a customer slot lives at most when nobody gives it back (its node died)
SLOT_HOLD_S = 4 * 3600.0
#: seconds a limit's shared-state operation may take before it is skipped
STATE_TIMEOUT_S = 3.0


def network_of(address: str | None) -> str:
    """The network a per-address limit counts: the IPv4 address, or the IPv6 address's /64."""
    try:
        ip = ipaddress.ip_address(address or "")
    except ValueError:
        return address or "-"
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:32]


class CustomerCap:
    """At most ``per_address`` customer connections holding a session, per network address."""

    def __init__(self, state: SharedState, per_address: int, rejoin_window_s: float) -> None:
        self.state = state
        self.per_address = per_address
        self.rejoin_window_s = rejoin_window_s
        #: slots of closed connections, freed after the rejoin window: task -> slot
        self._pending: dict[asyncio.Task[None], str] = {}
        #: of those, the ones whose session may come back here: session id -> task
        self._parked: dict[str, asyncio.Task[None]] = {}
        self._closed = False

    async def take(self, address: str | None) -> str | None:
        """A slot for a new ``join``/``rejoin`` from ``address``; None when there is no cap (or the
        shared state cannot be reached). Raises ``too_many_customers`` when every slot is held."""
        if self.per_address <= 0 or self._closed:
            return None
        prefix = f"customers:{_digest(network_of(address))}"
        try:
            async with asyncio.timeout(STATE_TIMEOUT_S):
                for index in range(self.per_address):
                    key = f"{prefix}:{index}"
                    if await self.state.hit(key, SLOT_HOLD_S) == 1:
                        return key
        except Exception as exc:
            logger.warning(
                "customer cap not counted (shared state unavailable: %s: %s)",
                exc.__class__.__name__,
                exc,
            )
            return None
        raise SignalingError(
            f"{self.per_address} customers are already waiting or in a call from your network: "
            "please try again when one of them is served",
            code="too_many_customers",
            fatal=True,
        )

    async def give_back(self, slot: str | None) -> None:
        """Free ``slot`` now (its session is over, or it never started)."""
        if slot is None:
            return
        try:
            async with asyncio.timeout(STATE_TIMEOUT_S):
                await self.state.reset(slot)
        except Exception as exc:
            logger.warning("customer slot not freed (%s: %s)", exc.__class__.__name__, exc)

    def free(self, slot: str | None) -> None:
        """Free ``slot`` soon, whatever becomes of the caller (a handler being cancelled)."""
        if slot is not None and not self._closed:
            self._schedule(slot, 0.0)

    def park(self, slot: str | None, session_id: str | None) -> None:
        """The connection holding ``slot`` closed while its session (``session_id``, if this node
        knows it) may still come back: the slot is freed after the rejoin window, unless a rejoin
        here takes it over first (:meth:`unpark`)."""
        if slot is None or self._closed:
            return
        if session_id is not None and (previous := self._parked.pop(session_id, None)):
            # an older connection of the session closed later: its slot goes now
            older = self._pending.pop(previous, None)
            previous.cancel()
            if older is not None:
                self._schedule(older, 0.0)
        task = self._schedule(slot, self.rejoin_window_s)
        if session_id is not None:
            self._parked[session_id] = task

    def parked(self, session_id: str) -> bool:
        return session_id in self._parked

    def unpark(self, session_id: str) -> str | None:
        """The parked slot of ``session_id``, for the connection that rejoined it (or None)."""
        task = self._parked.pop(session_id, None)
        if task is None:
            return None
        slot = self._pending.pop(task, None)
        task.cancel()
        return slot

    def _schedule(self, slot: str, delay: float) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(
            self._free_later(slot, delay), name="customer-slot"
        )
        self._pending[task] = slot
        task.add_done_callback(self._done)
        return task

    async def _free_later(self, slot: str, delay: float) -> None:
        await asyncio.sleep(delay)
        await self.give_back(slot)

    def _done(self, task: asyncio.Task[None]) -> None:
        if self._pending.pop(task, None) is not None:
            for session_id, parked in list(self._parked.items()):
                if parked is task:
                    del self._parked[session_id]

    async def aclose(self) -> None:
        """Free at once the slots waiting to be freed (the node stops). Safe to call twice."""
        self._closed = True
        pending, self._pending, self._parked = dict(self._pending), {}, {}
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        for slot in pending.values():
            await self.give_back(slot)


class UploadLimits:
    """ID-photo uploads per session and per address in a window, and one at a time per session."""

    def __init__(
        self, state: SharedState, *, per_session: int, per_address: int, window_s: float
    ) -> None:
        self.state = state
        self.per_session = per_session
        self.per_address = per_address
        self.window_s = window_s
        #: sessions whose upload is being checked on this node (a session's uploads all reach its
        #: node: ``server.cluster.session_home``)
        self._checking: set[str] = set()

    async def _over(self, key: str, limit: int) -> bool:
        if limit <= 0:
            return False
        try:
            async with asyncio.timeout(STATE_TIMEOUT_S):
                return await self.state.hit(key, self.window_s) > limit
        except Exception as exc:
            logger.warning("upload limit not counted (%s: %s)", exc.__class__.__name__, exc)
            return False

    def _refused(self, what: str, limit: int) -> TooManyRequests:
        minutes = max(1, round(self.window_s / 60))
        return TooManyRequests(
            f"too many ID photos {what} ({limit} in {minutes} minutes): please wait a few "
            "minutes and try again",
            code="too_many_uploads",
        )

    async def count_address(self, address: str | None) -> None:
        """Count one upload from ``address``; :class:`TooManyRequests` past the limit."""
        key = f"uploads:addr:{_digest(network_of(address))}"
        if await self._over(key, self.per_address):
            raise self._refused("from your network", self.per_address)

    async def count_session(self, session_id: str) -> None:
        """Count one upload for ``session_id``; :class:`TooManyRequests` past the limit."""
        if await self._over(f"uploads:session:{session_id}", self.per_session):
            raise self._refused("for this session", self.per_session)

    @contextlib.contextmanager
    def one_at_a_time(self, session_id: str) -> Iterator[None]:
        """While one upload of ``session_id`` is read and checked, another is refused (429)."""
        if session_id in self._checking:
            raise TooManyRequests(
                "the previous ID photo of this session is still being checked: wait for its answer",
                code="upload_in_progress",
            )
        self._checking.add(session_id)
        try:
            yield
        finally:
            self._checking.discard(session_id)


class MediaStartWatch:
    """Ends a call whose customer has no connected media for ``limit_s`` while the agent is there."""

    def __init__(self, broker: Broker, hub: MediaHub, limit_s: float) -> None:
        self.broker = broker
        self.hub = hub
        self.limit_s = limit_s
        #: loop time each call's customer was first seen without connected media
        self._since: dict[str, float] = {}
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self.limit_s > 0 and self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self._watch(), name="customer-media-start"
            )

    async def _watch(self) -> None:
        interval = min(1.0, self.limit_s / 4)
        while True:
            await asyncio.sleep(interval)
            try:
                await self.check()
            except Exception:
                logger.exception("customer media start check failed")

    def _waiting(self) -> list[str]:
        """Active calls whose customer is connected, without connected media, with the agent there."""
        waiting = []
        for session in self.broker.sessions:
            if (
                session.state != "active"
                or session.channel is None
                or session.agent is None
                or "customer" in session.media_lost  # the media watchdog handles a lost connection
            ):
                continue
            agent = self.broker.agent(session.agent.id)
            if agent is None or agent.session_id != session.id:
                continue  # the agent is away (its rejoin window): nobody is held
            media = self.hub.find(session.id)
            participant = media.participants.get("customer") if media is not None else None
            if participant is None or participant.connected_at is None:
                waiting.append(session.id)
        return waiting

    async def check(self) -> None:
        now = asyncio.get_running_loop().time()
        waiting = self._waiting()
        for session_id in list(self._since):
            if session_id not in waiting:
                del self._since[session_id]
        for session_id in waiting:
            since = self._since.setdefault(session_id, now)
            if now - since >= self.limit_s:
                del self._since[session_id]
                await self._end(session_id, now - since)

    async def _end(self, session_id: str, waited_s: float) -> None:
        session = self.broker.session(session_id)
        if session is None or session.state != "active":
            return
        logger.warning(
            "session %s: the customer's media did not start within %.0f s: ending the call",
            session_id,
            self.limit_s,
        )
        await self.broker.log_event(session_id, "customer_media_timeout", waited_s=round(waited_s))
        self.broker.send(
            session,
            "customer",
            m.Error(
                code="media_timeout",
                message=f"your camera and microphone did not connect within "
                f"{self.limit_s:.0f} s: the call is ended, please join again",
            ),
        )
        self.broker.send(
            session,
            "agent",
            m.Error(
                code="customer_media_timeout",
                message=f"the customer's media did not connect within {self.limit_s:.0f} s: "
                "the call is ended",
            ),
        )
        try:
            await self.broker.customer_hangup(session)
        except SignalingError:
            pass  # ended meanwhile

    async def aclose(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


class Limits:
    """The node's limits on clients (``app[LIMITS]``)."""

    def __init__(self, customers: CustomerCap, uploads: UploadLimits, media: MediaStartWatch):
        self.customers = customers
        self.uploads = uploads
        self.media = media

    async def aclose(self) -> None:
        await self.media.aclose()
        await self.customers.aclose()


LIMITS: web.AppKey[Limits] = web.AppKey("limits")


async def limits_ctx(app: web.Application) -> AsyncIterator[None]:
    """The limits, counted in the broker's shared state (after ``media_ctx``)."""
    config, broker = app[CONFIG], app[BROKER]
    limits = Limits(
        CustomerCap(broker.state, config.customers_per_address, config.rejoin_window_s),
        UploadLimits(
            broker.state,
            per_session=config.identity_uploads_per_session,
            per_address=config.identity_uploads_per_address,
            window_s=config.identity_upload_window_s,
        ),
        MediaStartWatch(broker, app[HUB], config.customer_media_start_s),
    )
    limits.media.start()
    app[LIMITS] = limits
    try:
        yield
    finally:
        await limits.aclose()

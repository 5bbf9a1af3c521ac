"""The WebSocket edge: one socket per participant, every frame validated here.

Each connection gets a :class:`WsChannel` (an outgoing queue drained by one
writer task, so a slow client never blocks the broker) and a
:class:`RateLimiter`. Frames are parsed with ``signaling.messages``; a bad
frame is answered with one ``error`` message, and the socket is closed only
where continuing is unsafe (oversized frames, floods, strangers' sessions,
missing authentication).

A customer socket must ``join`` or ``rejoin`` within ``customer_join_timeout_s``, and holds
one of its address's ``customers_per_address`` slots while it has a session
(:mod:`server.limits`). An agent socket lives as long as its login token: it is closed
when the token is logged out (at once on this node, within :data:`TOKEN_CHECK_S` on the
others), expires, or its user is disabled.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import weakref
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import WSMsgType, web
from pydantic import BaseModel
from sqlmodel import Session as DbSession
from sqlmodel import select

from signaling import messages as m
from signaling.broker import CLOSE_POLICY, AgentConn, AgentUser, Broker, Channel, Session
from signaling.exceptions import InvalidMessage, NotAuthenticated, SignalingError

from . import auth
from .appkeys import APPOINTMENTS, BROKER, CHANNELS, CLUSTER, CONFIG, DB, FLOWS, IDENTITY, NODES
from .db import CallSession, SessionEvent
from .flow_service import FlowService
from .limits import LIMITS

logger = logging.getLogger(__name__)

CLOSE_TOO_BIG = 1009
CLOSE_UNAUTHENTICATED = 4401
#: seconds an agent socket without cookie has to send ``auth``
AUTH_TIMEOUT_S = 10.0
#: frames the server reads at most (bigger ones are refused with ``too_large``)
READ_LIMIT = 1024 * 1024
#: seconds between two checks that an agent socket's login token is still valid
TOKEN_CHECK_S = 15.0
#: session states after which a customer's slot is free
ENDED_STATES = ("ended", "abandoned", "failed")


class RateLimiter:
    """Token bucket: ``rate`` messages per second, bursts up to ``burst``.

    Every refused message counts as a strike; ``max_strikes`` strikes close the socket.
    """

    def __init__(self, rate: float = 20.0, burst: float = 40.0, max_strikes: int = 20) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.max_strikes = max_strikes
        self.strikes = 0
        self._last = time.monotonic()

    def allow(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self._last) * self.rate)
        self._last = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        self.strikes += 1
        return False

    @property
    def exhausted(self) -> bool:
        return self.strikes >= self.max_strikes


class WsChannel:
    """:class:`signaling.broker.Channel` over an aiohttp WebSocket."""

    def __init__(self, ws: web.WebSocketResponse, label: str) -> None:
        self.ws = ws
        self.label = label
        #: an agent socket: the SHA-256 of the login token it authenticated with
        self.token_hash: str | None = None
        self._queue: asyncio.Queue[str | tuple[int, str]] = asyncio.Queue(maxsize=1000)
        self._writer = asyncio.get_running_loop().create_task(
            self._write(), name=f"ws-writer-{label}"
        )
        self._closing = False

    def send(self, message: BaseModel) -> None:
        if self._closing:
            return
        try:
            self._queue.put_nowait(m.dump(message))
        except asyncio.QueueFull:
            logger.warning("%s: client is not reading, closing", self.label)
            self.close(CLOSE_POLICY, "not reading")

    def close(self, code: int, reason: str) -> None:
        if self._closing:
            return
        self._closing = True
        with contextlib.suppress(asyncio.QueueFull):
            self._queue.put_nowait((code, reason))

    async def _write(self) -> None:
        try:
            while True:
                item = await self._queue.get()
                if isinstance(item, tuple):
                    code, reason = item
                    await self.ws.close(code=code, message=reason.encode()[:120])
                    return
                await self.ws.send_str(item)
        except (ConnectionError, RuntimeError):
            pass  # the client went away; the reader notices

    async def aclose(self) -> None:
        """Flush what is queued, then stop the writer."""
        self.close(1000, "bye")
        try:
            await asyncio.wait_for(asyncio.shield(self._writer), timeout=2)
        except (TimeoutError, asyncio.CancelledError):
            self._writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._writer


def _error(channel: Channel, exc: SignalingError) -> None:
    channel.send(m.Error(code=exc.code, message=exc.message, fatal=exc.fatal))
    if exc.fatal:
        code = (
            CLOSE_TOO_BIG
            if exc.code == "too_large"
            else (CLOSE_UNAUTHENTICATED if exc.code == "not_authenticated" else CLOSE_POLICY)
        )
        channel.close(code, exc.code)


async def _frames(
    ws: web.WebSocketResponse, channel: WsChannel, limiter: RateLimiter
) -> AsyncIterator[str | bytes]:
    """Yield text frames that passed the size and rate checks."""
    async for msg in ws:
        if msg.type == WSMsgType.TEXT or msg.type == WSMsgType.BINARY:
            data = msg.data
            size = m.byte_size(data)
            if size > m.MAX_MESSAGE_BYTES:
                _error(
                    channel,
                    InvalidMessage(
                        f"message of {size} bytes exceeds the {m.MAX_MESSAGE_BYTES}-byte limit",
                        code="too_large",
                        fatal=True,
                    ),
                )
                return
            if not limiter.allow():
                if limiter.exhausted:
                    _error(
                        channel,
                        SignalingError(
                            "too many messages: connection closed", code="rate_limited", fatal=True
                        ),
                    )
                    return
                channel.send(
                    m.Error(
                        code="rate_limited", message="too many messages: slow down (20 per second)"
                    )
                )
                continue
            yield data
        elif msg.type == WSMsgType.ERROR:
            logger.info("%s: websocket error %s", channel.label, ws.exception().__class__.__name__)
            return


FLOW_CUSTOMER_MESSAGES = (
    m.ConsentAccept,
    m.ConsentDecline,
    m.DisclosureConfirm,
    m.QuestionnaireSubmit,
    m.DocumentRead,
    m.SignatureSubmit,
)


def _flows(app: web.Application) -> FlowService:
    flows = app.get(FLOWS)
    if flows is None:
        raise SignalingError(
            "business flows are not loaded on this server", code="flows_unavailable"
        )
    return flows


IDENTITY_MESSAGES = (
    m.IdentityVerify,
    m.LivenessStart,
    m.CaptureSnapshot,
    m.CaptureReference,
    m.ManualVerification,
)


async def _identity_request(
    app: web.Application, session: Session, user: AgentUser, msg: object
) -> None:
    """An agent's identity action on their current call (the work runs in the background)."""
    identity = app.get(IDENTITY)
    if isinstance(msg, m.ManualVerification):
        if identity is None:
            await app[BROKER].log_event(
                session.id,
                "identity_manual",
                verified=msg.verified,
                reason=msg.reason,
                by=user.username,
            )
            flows = app.get(FLOWS)
            if flows is not None:
                flows.record_manual(session, msg.verified, msg.reason, user.username)
        else:
            await identity.manual_verification(session, msg.verified, msg.reason, user.username)
        return
    if identity is None:
        raise SignalingError(
            "face checks are switched off on this server", code="identity_unavailable"
        )
    if session.state != "active":
        raise SignalingError("identity checks need an active call", code="bad_state")
    if isinstance(msg, m.IdentityVerify):
        await identity.verify(session)
    elif isinstance(msg, m.LivenessStart):
        await identity.start_liveness(session)
    elif isinstance(msg, m.CaptureSnapshot):
        await identity.snapshot(session, user.username)
    elif isinstance(msg, m.CaptureReference):
        await identity.capture_reference(session, user.username)


#: session states after which an agent may send the call's wrap-up
WRAPPED_STATES = ("ended", "failed")


async def _wrap_up(app: web.Application, channel: Channel, user: AgentUser, msg: m.WrapUp) -> None:
    """Put the agent's wrap-up of a call of theirs that is over on the session's timeline, once.

    The database says whose call it was and whether it is wrapped up already, so the agent's node
    answers wherever the call ran."""

    def check(s: DbSession) -> str | None:
        row = s.get(CallSession, msg.session_id)
        if row is None or row.agent_id != user.id:
            return "that session is not a call of yours"
        if row.state not in WRAPPED_STATES:
            return "that call is not over yet: wrap up after it ended"
        done = s.exec(
            select(SessionEvent.id).where(
                SessionEvent.session_id == msg.session_id, SessionEvent.kind == "wrap_up"
            )
        ).first()
        return "that call is wrapped up already" if done is not None else None

    refused = await app[DB].run(check)
    if refused is not None:
        logger.info("session %s: wrap-up by %s refused: %s", msg.session_id, user.username, refused)
        raise SignalingError(refused, code="wrap_up_refused")
    data: dict[str, object] = {
        "disposition": msg.disposition,
        "notes": msg.notes,
        "by": user.username,
    }
    try:
        # not the broker's best-effort log_event: the agent is told only what was stored
        await app[BROKER].log.event(msg.session_id, "wrap_up", data)
    except Exception:
        logger.exception("session %s: could not store the wrap-up", msg.session_id)
        raise SignalingError(
            "the wrap-up could not be saved: try again", code="wrap_up_failed"
        ) from None
    logger.info("session %s: wrapped up by %s (%s)", msg.session_id, user.username, msg.disposition)
    channel.send(m.WrapUpSaved(session_id=msg.session_id, disposition=msg.disposition))


def _websocket() -> web.WebSocketResponse:
    return web.WebSocketResponse(heartbeat=10.0, max_msg_size=READ_LIMIT)


class CustomerEndpoint:
    """What one customer connection's messages do, whichever transport brings the frames.

    :meth:`handle` takes one frame that passed the edge's size and rate checks;
    :meth:`closed` runs when the connection is gone.
    """

    def __init__(self, app: web.Application, channel: Channel, address: str | None = None) -> None:
        self.app = app
        self.broker = app[BROKER]
        self.channel = channel
        #: the customer's address: None for a connection another node relays here (it counts it)
        self.address = address
        self.session: Session | None = None
        #: (node, relay id) when the session lives on another node and this connection is relayed
        self.relay: tuple[str, str] | None = None
        #: the address's customer slot this connection holds (``server.limits.CustomerCap``)
        self.slot: str | None = None
        #: the session a relayed ``rejoin`` named (its slot is parked under it when this closes)
        self._rejoined: str | None = None
        #: a frame is being handled (a join under way is not timed out)
        self.busy = False

    async def handle(self, raw: str | bytes) -> bool:
        """Act on one frame; False when the connection must close (a fatal error was sent)."""
        cluster = self.app.get(CLUSTER)
        if self.relay is not None and cluster is not None:
            await cluster.customer_frame(*self.relay, _text(raw))
            return True
        self.busy = True
        msg: object = None
        try:
            msg = m.parse_customer_message(raw)
            if isinstance(msg, m.Join | m.Rejoin) and self.session is None:
                await self._take_slot(msg)
            if isinstance(msg, m.Join) and self.session is None:
                place = await cluster.placement() if cluster is not None else None
                if place is not None and cluster is not None:
                    # the session lives on a less loaded node from the start
                    self.relay = (place, await cluster.open_customer_relay(self, place, _text(raw)))
                    return True
                if self.app[NODES].draining:
                    raise SignalingError(
                        "the service is restarting: please try again in a minute",
                        code="temporarily_unavailable",
                    )
            if cluster is not None and isinstance(msg, m.Rejoin) and self.session is None:
                home = await self._home_elsewhere(msg.session_id)
                if home is not None and await cluster.node_alive(home):
                    self.relay = (home, await cluster.open_customer_relay(self, home, _text(raw)))
                    return True
                if home is not None:  # its node died: this node takes the session over
                    holder = await cluster.adopt(msg.session_id, msg.rejoin_token, home)
                    if holder is not None:  # another node took it over first
                        self.relay = (
                            holder,
                            await cluster.open_customer_relay(self, holder, _text(raw)),
                        )
                        return True
            await self._message(msg)
        except SignalingError as exc:
            _error(self.channel, exc)
            return not exc.fatal
        finally:
            self.busy = False
            if self.session is None and self.relay is None and isinstance(msg, m.Join | m.Rejoin):
                # cancelled while the broker made the session (the peer left at once): find it
                self.session = next(
                    (s for s in self.broker.sessions if s.channel is self.channel), None
                )
            if self.session is None and self.relay is None and self.slot is not None:
                slot, self.slot = self.slot, None  # the join or rejoin did not happen
                self.app[LIMITS].customers.free(slot)
            elif self.relay is not None and isinstance(msg, m.Rejoin) and self._rejoined is None:
                self._rejoined = msg.session_id
                if self.slot is None and self.address is not None:
                    self.slot = self.app[LIMITS].customers.unpark(msg.session_id)
        return True

    async def _take_slot(self, msg: m.Join | m.Rejoin) -> None:
        """Hold one of the address's customer slots for this connection's session (raises
        ``too_many_customers``). A rejoin whose closed connection's slot waits on this node takes
        that one over instead, once the rejoin succeeded (:meth:`_message`)."""
        if self.address is None or self.slot is not None:
            return
        cap = self.app[LIMITS].customers
        if isinstance(msg, m.Rejoin) and cap.parked(msg.session_id):
            return
        self.slot = await cap.take(self.address)

    async def _home_elsewhere(self, session_id: str) -> str | None:
        """The node holding ``session_id`` when it is another one (its connection is relayed there)."""
        if self.broker.session(session_id) is not None:
            return None
        home = await self.broker.state.call_node(session_id)
        return home if home and home != self.broker.config.node_id else None

    async def _message(self, msg: object) -> None:
        broker, channel, session = self.broker, self.channel, self.session
        if isinstance(msg, m.Ping):
            channel.send(m.Pong())
        elif isinstance(msg, m.Join):
            if session is not None:
                raise SignalingError("already in a session on this connection", code="bad_state")
            broker.check_business(msg.business)
            if not msg.recording_consent:
                raise SignalingError(
                    "calls are recorded as banking regulation requires: accept the "
                    "recording notice (recording_consent: true) to join",
                    code="consent_required",
                )
            appointments = self.app[APPOINTMENTS]
            appointment = None
            if msg.appointment is not None:
                appointment = await appointments.claim(msg.appointment, msg.business)
            self.session = session = await broker.customer_join(
                channel,
                msg.business,
                appointment.display_name if appointment else msg.display_name,
                face_consent=msg.face_consent,
            )
            _label(channel, f"customer {session.id}")
            if appointment is not None:
                await appointments.joined(appointment, session)
        elif isinstance(msg, m.Rejoin):
            if session is not None:
                raise SignalingError("already in a session on this connection", code="bad_state")
            self.session = session = await broker.customer_rejoin(
                channel, msg.session_id, msg.rejoin_token
            )
            _label(channel, f"customer {session.id}")
            if self.address is not None:
                cap = self.app[LIMITS].customers
                parked = cap.unpark(session.id)
                if self.slot is None:
                    self.slot = parked
                else:
                    cap.free(parked)
        elif session is None:
            raise SignalingError("send join or rejoin first", code="bad_state")
        elif isinstance(msg, m.Cancel):
            await broker.customer_cancel(session)
        elif isinstance(msg, m.Hangup):
            await broker.customer_hangup(session)
        elif isinstance(msg, m.Offer):
            await broker.offer(session, "customer", msg.sdp)
        elif isinstance(msg, m.RequestKeyframe):
            broker.request_keyframe(session, "customer")
        elif isinstance(msg, FLOW_CUSTOMER_MESSAGES):
            await _flows(self.app).customer_message(session, msg)
        elif isinstance(msg, m.FaceConsent):
            identity = self.app.get(IDENTITY)
            if identity is None:
                await broker.set_face_consent(session, msg.accepted)
            else:
                await identity.set_consent(session, msg.accepted)

    async def closed(self) -> None:
        """The connection is gone: the broker (here, or the relay's node) starts the rejoin window;
        the connection's customer slot is freed with its session, or after the rejoin window."""
        cluster = self.app.get(CLUSTER)
        slot, self.slot = self.slot, None
        cap = self.app[LIMITS].customers
        # the slot first: the handler may be cancelled at the first await (the peer is gone)
        if self.relay is not None and cluster is not None:
            cap.park(slot, self._rejoined)  # the session lives on another node
            await cluster.close_customer_relay(*self.relay)
            return
        session = self.session
        if (
            session is None
            or session.state in ENDED_STATES
            or session.channel not in (None, self.channel)
        ):
            cap.free(slot)  # over, or held by the connection that rejoined it
        else:
            cap.park(slot, session.id)
        if session is not None:
            await self.broker.detached(
                self.broker.customer_disconnected(session, self.channel),
                f"customer-gone-{session.id}",
            )


def _text(raw: str | bytes) -> str:
    return raw if isinstance(raw, str) else raw.decode("utf-8", "replace")


def _label(channel: Channel, label: str) -> None:
    if isinstance(channel, WsChannel):
        channel.label = label


async def _join_deadline(endpoint: CustomerEndpoint, channel: WsChannel, seconds: float) -> None:
    """Close a customer socket that has not joined or rejoined a session within ``seconds``."""
    await asyncio.sleep(seconds)
    while endpoint.busy:
        await asyncio.sleep(0.5)
    if endpoint.session is None and endpoint.relay is None:
        logger.info("%s: no join within %.0f s: closing", channel.label, seconds)
        _error(
            channel,
            SignalingError(
                f"send join or rejoin within {seconds:.0f} s of connecting",
                code="join_timeout",
                fatal=True,
            ),
        )


async def customer_ws(request: web.Request) -> web.WebSocketResponse:
    ws = _websocket()
    await ws.prepare(request)
    channel = WsChannel(ws, "customer")
    request.app[CHANNELS].add(channel)
    endpoint = CustomerEndpoint(request.app, channel, request.remote or "")
    timeout = request.app[CONFIG].customer_join_timeout_s
    deadline = (
        asyncio.get_running_loop().create_task(
            _join_deadline(endpoint, channel, timeout), name="customer-join-deadline"
        )
        if timeout > 0
        else None
    )
    try:
        async for raw in _frames(ws, channel, RateLimiter()):
            if not await endpoint.handle(raw):
                break
    finally:
        # nothing awaits before closed(): aiohttp cancels the handler once its peer is gone
        if deadline is not None:
            deadline.cancel()
        await endpoint.closed()
        await channel.aclose()
        if deadline is not None:
            await asyncio.gather(deadline, return_exceptions=True)
    return ws


async def _authenticate_agent(
    request: web.Request, ws: web.WebSocketResponse, channel: WsChannel, limiter: RateLimiter
) -> tuple[AgentUser, str] | None:
    """The agent and the login token it authenticated with, or None (the socket is closing)."""
    db = request.app[DB]
    token = request.cookies.get("vc_session")
    user = await auth.user_for_token(db, token)
    if user is None:
        try:
            async with asyncio.timeout(AUTH_TIMEOUT_S):
                async for raw in _frames(ws, channel, limiter):
                    try:
                        msg = m.parse_agent_message(raw)
                    except SignalingError as exc:
                        _error(channel, exc)
                        if exc.fatal:
                            return None
                        continue
                    if isinstance(msg, m.Ping):
                        channel.send(m.Pong())
                        continue
                    if not isinstance(msg, m.Auth):
                        _error(channel, NotAuthenticated("log in first: send auth with your token"))
                        return None
                    token = msg.token
                    user = await auth.user_for_token(db, token)
                    break
        except TimeoutError:
            _error(channel, NotAuthenticated("no auth message within 10 s"))
            return None
        if user is None:
            if not ws.closed:
                _error(channel, NotAuthenticated("invalid or expired token: log in again"))
            return None
    if user.role != "agent":
        _error(
            channel,
            SignalingError("only agents can use the agent workbench", code="forbidden", fatal=True),
        )
        return None
    assert token is not None  # a user was found for it
    agent = AgentUser(
        id=user.id or 0,
        username=user.username,
        display_name=user.display_name,
        skills=user.skill_set,
    )
    return agent, token


def _logged_out(channel: Channel, message: str) -> None:
    _error(channel, NotAuthenticated(message))


def close_agent_sockets(app: web.Application, token: str) -> int:
    """Close this node's agent sockets authenticated with ``token`` (it was logged out); how many."""
    digest = auth.token_hash(token)
    closed = 0
    channels: weakref.WeakSet[Any] = app[CHANNELS]
    for channel in list(channels):
        if isinstance(channel, WsChannel) and channel.token_hash == digest:
            _logged_out(channel, "you logged out: log in again")
            closed += 1
    return closed


async def _watch_token(app: web.Application, channel: WsChannel, token: str) -> None:
    """Close the socket once its login token no longer opens a session (logged out on another
    node, expired, the user disabled)."""
    while True:
        await asyncio.sleep(TOKEN_CHECK_S)
        try:
            user = await auth.user_for_token(app[DB], token)
        except Exception:
            logger.exception("%s: could not check the login token", channel.label)
            continue
        if user is None:
            logger.info("%s: login ended: closing", channel.label)
            _logged_out(channel, "your login ended (logged out or expired): log in again")
            return


class AgentEndpoint:
    """What one authenticated agent connection's messages do, whichever transport brings them."""

    def __init__(self, app: web.Application, channel: Channel, user: AgentUser) -> None:
        self.app = app
        self.broker: Broker = app[BROKER]
        self.channel = channel
        self.user = user
        self.agent: AgentConn | None = None

    async def opened(self) -> None:
        self.agent = agent = await self.broker.agent_connected(self.user, self.channel)
        cluster = self.app.get(CLUSTER)
        if cluster is not None and agent.session_id is None and agent.proxy_of is None:
            try:
                await cluster.agent_back(agent)  # a call of theirs open on another node
            except Exception:
                logger.exception(
                    "agent %s: could not look for a call to resume", self.user.username
                )

    async def handle(self, raw: str | bytes) -> bool:
        """Act on one frame; False when the connection must close (a fatal error was sent).

        While the agent is offered or serves a customer of another node, its frames (but
        pings) go to that node, which serves them."""
        try:
            msg = m.parse_agent_message(raw)
            agent, cluster = self.agent, self.app.get(CLUSTER)
            if (
                agent is not None
                and agent.remote_node is not None
                and cluster is not None
                and not isinstance(msg, m.Ping | m.Auth)
            ):
                await cluster.agent_frame(agent.remote_node, agent.user.id, _text(raw))
                return True
            await self._message(msg)
        except SignalingError as exc:
            _error(self.channel, exc)
            return not exc.fatal
        return True

    async def _message(self, msg: object) -> None:
        broker, agent, user = self.broker, self.agent, self.user
        assert agent is not None, "opened() first"
        if isinstance(msg, m.Ping):
            self.channel.send(m.Pong())
        elif isinstance(msg, m.Auth):
            # a browser authenticated by cookie also sends its token: same user, nothing to do
            again = await auth.user_for_token(self.app[DB], msg.token)
            if again is None or again.id != user.id:
                raise SignalingError(
                    "this connection is authenticated as another user", code="forbidden", fatal=True
                )
        elif isinstance(msg, m.SetStatus):
            await broker.agent_set_status(agent, msg.status)
        elif isinstance(msg, m.Accept):
            await broker.agent_accept(agent, msg.session_id)
        elif isinstance(msg, m.Decline):
            await broker.agent_decline(agent, msg.session_id)
        elif isinstance(msg, m.Hangup):
            await broker.agent_hangup(agent)
        elif isinstance(msg, m.Offer):
            await broker.offer(broker.session_of_agent(agent), "agent", msg.sdp)
        elif isinstance(msg, m.RequestKeyframe):
            broker.request_keyframe(broker.session_of_agent(agent), "agent")
        elif isinstance(msg, IDENTITY_MESSAGES):
            await _identity_request(self.app, broker.session_of_agent(agent), user, msg)
        elif isinstance(msg, m.StepNext):
            await _flows(self.app).agent_next(
                broker.session_of_agent(agent), msg.step_id, user.username
            )
        elif isinstance(msg, m.MarkConfirmed):
            await _flows(self.app).agent_mark_confirmed(
                broker.session_of_agent(agent), msg.step_id, user.username
            )
        elif isinstance(msg, m.PushDocument):
            await _flows(self.app).push_document(
                broker.session_of_agent(agent), msg.document_id, user.username
            )
        elif isinstance(msg, m.WrapUp):
            await _wrap_up(self.app, self.channel, user, msg)

    async def closed(self) -> None:
        agent = self.agent
        if agent is not None:
            await self.broker.detached(
                self.broker.agent_disconnected(agent), f"agent-gone-{agent.user.username}"
            )


async def agent_ws(request: web.Request) -> web.WebSocketResponse:
    ws = _websocket()
    await ws.prepare(request)
    channel = WsChannel(ws, "agent")
    request.app[CHANNELS].add(channel)
    limiter = RateLimiter()
    endpoint: AgentEndpoint | None = None
    watch: asyncio.Task[None] | None = None
    try:
        authenticated = await _authenticate_agent(request, ws, channel, limiter)
        if authenticated is None:
            return ws
        user, token = authenticated
        channel.label = f"agent {user.username}"
        channel.token_hash = auth.token_hash(token)
        watch = asyncio.get_running_loop().create_task(
            _watch_token(request.app, channel, token), name=f"agent-token-{user.username}"
        )
        endpoint = AgentEndpoint(request.app, channel, user)
        await endpoint.opened()
        async for raw in _frames(ws, channel, limiter):
            if not await endpoint.handle(raw):
                break
    finally:
        # nothing awaits before closed(): aiohttp cancels the handler once its peer is gone
        if watch is not None:
            watch.cancel()
        if endpoint is not None:
            await endpoint.closed()
        await channel.aclose()
        if watch is not None:
            await asyncio.gather(watch, return_exceptions=True)
    return ws

"""Session brokering: customers queue, agents are offered them, calls start and end.

The :class:`Broker` is transport-agnostic: the server's WebSocket edge
validates each message (``signaling.messages``) and calls one broker method per
message; the broker answers through :class:`Channel` objects whose ``send`` never
blocks. Persistent records (sessions, participants, the event timeline) go to a
:class:`SessionLog` that the server implements on the database; the queue and
agent presence go through :class:`~signaling.state.SharedState`.

State machine of a session::

    queued -> offered -> active -> ended
      ^  <------'          |
      '--------------------'      (agent dropped and not back within the rejoin window:
                                   back to the head of the queue)
    queued / offered -> abandoned  (customer cancelled or did not come back in time)
    active -> failed               (a party's media did not come back in time: media_failed)

The media watchdog checks every active call about once a second: a party
whose peer connection failed, or which sent no media for ``media_timeout_s``,
is asked for a new offer (``media_restart``) while the other party is told
(``media_lost``); media back is ``media_restored``, and media not back within
``rejoin_window_s`` ends the call.

A party whose connection drops has ``rejoin_window_s`` to come back to the same
call: a customer with its rejoin token, an agent by connecting again (the call
is given back to them, also through another node). With several nodes, a
session whose node died is taken over (:meth:`Broker.adopt`) by the node its
customer or agent reaches first; a cut call resumes there with its agent.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import math
import secrets
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Literal, Protocol, TypeVar

from pydantic import BaseModel

from . import messages as m
from .bus import Bus, SenderCheck
from .exceptions import Forbidden, InvalidMessage, InvalidState, NotFound, SignalingError
from .ids import new_id
from .media_hub import IceServerConfig, MediaHub, ParticipantMedia, Role, is_role, other
from .relay import RemoteChannel
from .state import AgentPresence, InMemoryState, NodeDirectory, QueueEntry, SharedState

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: close codes sent with fatal errors
CLOSE_POLICY = 1008
CLOSE_REPLACED = 4409
#: seconds at least between two ``media_restart`` asks that got no new offer
MEDIA_RESTART_RETRY_S = 5.0
#: seconds past the offer timeout an agent waits for another node to take up its offer
REMOTE_ANSWER_MARGIN_S = 5.0
#: seconds a shared-state operation may take before the broker goes on without it
STATE_TIMEOUT_S = 3.0
#: with other nodes: an agent's presence lapses this long after its node stops renewing it
PRESENCE_TTL_S = 15.0
#: with other nodes: seconds between two checks of presence and of the nodes relayed agents serve
HOUSEKEEPING_S = 2.0
#: why an offer taken back failed the customer, who is then being connected to another agent
#: (``queue_update.status``: ``transferring``)
OFFER_FAILED = ("declined", "timeout", "agent_lost")
#: seconds past a cool-down's end the matching wakes (the state's clock is read over the network)
COOLDOWN_MARGIN_S = 0.05


class Channel(Protocol):
    """One participant's connection; ``send`` queues and never blocks."""

    def send(self, message: BaseModel) -> None: ...
    def close(self, code: int, reason: str) -> None: ...


class SessionLog(Protocol):
    """Where the broker writes what must outlive the process (the server's database)."""

    async def session_created(self, session: Session) -> None: ...
    async def session_changed(self, session: Session) -> None: ...
    async def event(self, session_id: str, kind: str, data: dict[str, object]) -> None: ...
    async def record(self, session_id: str) -> SessionRecord | None:
        """What is kept of an open session, for taking it over from a node that died."""
        ...


class NullLog:
    """A :class:`SessionLog` that keeps nothing (headless tools, unit use)."""

    async def session_created(self, session: Session) -> None:
        return None

    async def session_changed(self, session: Session) -> None:
        return None

    async def event(self, session_id: str, kind: str, data: dict[str, object]) -> None:
        return None

    async def record(self, session_id: str) -> SessionRecord | None:
        return None


@dataclass(frozen=True)
class BrokerConfig:
    #: seconds a dropped customer may take to rejoin
    rejoin_window_s: float = 30.0
    #: seconds an agent has to accept an offered customer
    offer_timeout_s: float = 20.0
    #: seconds of wrap-up after a call before the workbench sets its agent ready again (told to
    #: the agent in ``authenticated``; the agent is away meanwhile)
    wrap_up_s: float = 30.0
    #: seconds without a media frame from a connected party before its media counts as lost
    #: (0: only a failed peer connection counts)
    media_timeout_s: float = 8.0
    #: seconds after an agent declined a customer before it is offered that customer again (when
    #: nobody else took them meanwhile)
    offer_cooldown_s: float = 20.0
    #: seconds of waiting after which a customer is flagged to the agents (``queue_stats.long_wait``)
    long_wait_s: float = 180.0
    #: average handling time assumed until calls have been measured
    default_handle_s: float = 180.0
    node_id: str = "node-1"
    ice_servers: tuple[IceServerConfig, ...] = ()
    #: the business type ids customers may join (the server fills it from its catalogue);
    #: None accepts any well-formed id (headless tools, unit use)
    businesses: frozenset[str] | None = None


@dataclass(frozen=True)
class AgentUser:
    """An authenticated agent, as the server's auth layer resolved it."""

    id: int
    username: str
    display_name: str
    skills: frozenset[str]


def _agent_body(user: AgentUser) -> dict[str, object]:
    """An agent as a bus message carries it."""
    return {
        "id": user.id,
        "username": user.username,
        "display_name": user.display_name,
        "skills": sorted(user.skills),
    }


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class SessionRecord:
    """What the database keeps of a session: enough for another node to take it over."""

    id: str
    business: str
    display_name: str
    token_hash: str
    #: epoch seconds
    created_at: float
    #: ``queued``, ``offered`` or ``active``
    state: str
    face_consent: bool = False
    #: the agent of an active call
    agent: AgentUser | None = None


MediaLossReason = Literal["failed", "stalled"]


@dataclass(eq=False)
class MediaLoss:
    """One party's media stopped during a call; the call fails unless it is back in time."""

    #: ``failed`` (peer connection failed) or ``stalled`` (no media for media_timeout_s)
    reason: MediaLossReason
    #: loop time the loss was noticed
    since: float
    #: loop time of the last ``media_restart`` sent, and the hub connection it asked to replace
    asked_at: float
    asked_of: ParticipantMedia | None = None
    restarts: int = 1


@dataclass(eq=False)
class Session:
    id: str
    business: str
    display_name: str
    token_hash: str = field(repr=False)
    created_at: float  # epoch seconds
    state: str = "queued"
    end_reason: str | None = None
    agent: AgentUser | None = None
    started_at: float | None = None
    ended_at: float | None = None
    channel: Channel | None = field(default=None, repr=False)
    drop_task: asyncio.Task[None] | None = field(default=None, repr=False)
    last_queue_update: tuple[int, int, int, str, bool] | None = None
    #: an offer of this waiting customer failed (declined, missed, its agent gone): the customer is
    #: told they are being connected to another agent until a call starts
    transferring: bool = False
    #: wakes the matching when an agent's cool-down on this customer is over
    cooldown_task: asyncio.Task[None] | None = field(default=None, repr=False)
    #: the customer consents to face verification (separate from the recording notice)
    face_consent: bool = False
    #: parties whose media is lost during the call, by role
    media_lost: dict[str, MediaLoss] = field(default_factory=dict, repr=False)
    #: the appointment the bank booked for this customer, if they came through one
    appointment_id: str | None = None
    #: runs while the agent of the active call is away (the rejoin window), then requeues
    agent_window: asyncio.Task[None] | None = field(default=None, repr=False)
    #: epoch seconds the call was cut by its node's death, until it resumes on this node (its
    #: recording, identity checks and flow start again when the agent is back)
    interrupted_at: float | None = None

    @property
    def connected(self) -> bool:
        return self.channel is not None


@dataclass(eq=False)
class AgentConn:
    user: AgentUser
    channel: Channel = field(repr=False)
    status: str = "away"
    ready_since: float = 0.0
    #: session offered to or in a call with this agent
    session_id: str | None = None
    offer_task: asyncio.Task[None] | None = field(default=None, repr=False)
    #: on the agent's own node: the node holding that session, when it is another one
    remote_node: str | None = None
    #: on the session's node: the node whose connection this stands for (a relayed agent)
    proxy_of: str | None = None


class Broker:
    def __init__(
        self,
        hub: MediaHub,
        *,
        config: BrokerConfig | None = None,
        state: SharedState | None = None,
        log: SessionLog | None = None,
        bus: Bus | None = None,
        directory: NodeDirectory | None = None,
    ) -> None:
        self.hub = hub
        self.config = config or BrokerConfig()
        self.state: SharedState = state or InMemoryState()
        #: the other nodes of the counter (None: this node is the whole counter)
        self.bus = bus
        self._nodes = SenderCheck(directory)
        self._housekeeping: asyncio.Task[None] | None = None
        self.log: SessionLog = log or NullLog()
        self._sessions: dict[str, Session] = {}
        self._ended: OrderedDict[str, Session] = OrderedDict()
        self._agents: dict[int, AgentConn] = {}
        self._lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()
        self._watchdog: asyncio.Task[None] | None = None
        #: wakes when the next waiting customer reaches ``long_wait_s`` (agents are told)
        self._long_waits: asyncio.Task[None] | None = None
        self._closed = False
        #: callbacks run when a call becomes active / ends (recorder, identity hook in here)
        self.on_call_started: list[Callable[[Session], Awaitable[None]]] = []
        self.on_call_ended: list[Callable[[Session], Awaitable[None]]] = []
        #: the session is over (ended, abandoned or failed), whether or not a call took place
        self.on_session_closed: list[Callable[[Session], Awaitable[None]]] = []
        #: a party came back to a call that went on without it (its page needs the call's state)
        self.on_party_back: list[Callable[[Session, str], Awaitable[None]]] = []

    # -- helpers -------------------------------------------------------------------

    async def detached(self, coro: Awaitable[None], name: str) -> None:
        """Run ``coro`` to completion even if the caller is cancelled.

        aiohttp cancels a WebSocket handler when its peer disconnects; the
        cleanup that handler starts (requeueing, ending calls) must still finish.
        """
        await asyncio.shield(self._spawn(coro, name))

    def _spawn(self, coro: Awaitable[None], name: str) -> asyncio.Task[None]:
        task = asyncio.ensure_future(coro)
        task.set_name(name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    @staticmethod
    def _cancel(task: asyncio.Task[None] | None) -> None:
        if task is not None and task is not asyncio.current_task():
            task.cancel()

    def _ice_servers(self) -> list[m.IceServer]:
        return [
            m.IceServer(urls=s.urls, username=s.username, credential=s.credential)
            for s in self.config.ice_servers
        ]

    async def _event(self, session_id: str, kind: str, /, **data: object) -> None:
        try:
            await self.log.event(session_id, kind, data)
        except Exception:
            logger.exception("session %s: could not record event %s", session_id, kind)

    async def _changed(self, session: Session) -> None:
        try:
            await self.log.session_changed(session)
        except Exception:
            logger.exception("session %s: could not record state %s", session.id, session.state)

    async def _shared(self, what: str, operation: Awaitable[T], default: T) -> T:
        """``operation`` on the shared state, or ``default`` when the state cannot be reached (Redis
        down or cut off): calls in progress go on without it, and it is logged."""
        try:
            async with asyncio.timeout(STATE_TIMEOUT_S):
                return await operation
        except Exception as exc:
            logger.warning(
                "shared state unavailable (%s): %s: %s", what, exc.__class__.__name__, exc
            )
            return default

    def session(self, session_id: str) -> Session | None:
        return self._sessions.get(session_id)

    def customer_session(self, session_id: str, token: str) -> Session:
        """The live session that ``token`` (the customer's rejoin token) opens, else Forbidden.

        How HTTP requests made by the customer's page (an ID photo upload)
        prove they come from that session's customer.
        """
        session = self._sessions.get(session_id)
        if session is None or not hmac.compare_digest(session.token_hash, hash_token(token)):
            raise Forbidden("that session does not exist or the token does not match")
        return session

    async def set_face_consent(self, session: Session, accepted: bool) -> None:
        if session.face_consent != accepted:
            session.face_consent = accepted
            await self._changed(session)
            await self._event(session.id, "face_consent", accepted=accepted)

    async def log_event(self, session_id: str, kind: str, /, **data: object) -> None:
        """Put an event on the session's timeline (and the recording's, during a call)."""
        await self._event(session_id, kind, **data)

    def send(self, session: Session, role: str, message: BaseModel) -> bool:
        """Send a message to one party of ``session`` if connected."""
        channel = self._channel(session, role)
        if channel is None:
            return False
        channel.send(message)
        return True

    def agent(self, agent_id: int) -> AgentConn | None:
        return self._agents.get(agent_id)

    @property
    def sessions(self) -> list[Session]:
        return list(self._sessions.values())

    # -- customers -----------------------------------------------------------------

    def check_business(self, business: str) -> None:
        """Refuse a business this broker does not serve (``invalid_message``, naming those it does)."""
        known = self.config.businesses
        if known is not None and business not in known:
            raise InvalidMessage(
                f"invalid 'join' message: business: unknown business {business[:40]!r} "
                f"(one of {', '.join(sorted(known))})"
            )

    async def customer_join(
        self, channel: Channel, business: str, display_name: str, *, face_consent: bool = False
    ) -> Session:
        """Queue a customer for ``business``; refused unless :meth:`check_business` accepts it."""
        self.check_business(business)
        token = secrets.token_urlsafe(32)
        session = Session(
            id=new_id(12),
            business=business,
            display_name=display_name,
            token_hash=hash_token(token),
            created_at=time.time(),
            channel=channel,
            face_consent=face_consent,
        )
        async with self._lock:
            self._sessions[session.id] = session
            await self.log.session_created(session)
            # the state's clock orders the queue: nodes' clocks may differ
            try:
                async with asyncio.timeout(STATE_TIMEOUT_S):
                    await self.state.enqueue(
                        QueueEntry(session.id, business, node_id=self.config.node_id)
                    )
                    await self.state.set_call_node(session.id, self.config.node_id)
            except Exception as exc:
                logger.warning(
                    "session %s: the queue cannot be reached (%s): join refused", session.id, exc
                )
                del self._sessions[session.id]
                session.state, session.end_reason, session.ended_at = (
                    "abandoned",
                    "service_unavailable",
                    time.time(),
                )
                await self._changed(session)
                raise InvalidState(
                    "the service is temporarily unavailable: please try again in a moment",
                    code="temporarily_unavailable",
                ) from None
            await self._event(session.id, "queued", business=business)
            await self._event(session.id, "face_consent", accepted=face_consent)
            logger.info("session %s: customer joined the %s queue", session.id, business)
            channel.send(
                m.Joined(
                    session_id=session.id,
                    rejoin_token=token,
                    business=business,
                    rejoin_window_s=int(self.config.rejoin_window_s),
                )
            )
            await self._dispatch()
            await self._broadcast_queue()
        await self._queue_changed()
        return session

    async def adopt(
        self, record: SessionRecord, from_node: str, *, since: float | None = None
    ) -> str:
        """Take over a session whose node ``from_node`` died (its customer or its agent came back
        through this node); returns the node holding it afterwards: this one, or another that
        took it over first (the caller relays there).

        A waiting session keeps its place in the queue. A call cut by the death stays a call
        with its agent: it resumes here when the agent is back within the rejoin window
        (a new recording leg; ``since``, epoch seconds, is when the dead node was last heard
        of), else the customer goes to the head of the queue. The caller checked that
        ``from_node`` is dead; a customer then rejoins as for any rejoin."""
        async with self._lock:
            return await self._adopt(record, from_node, since)

    async def _adopt(self, record: SessionRecord, from_node: str, since: float | None) -> str:
        here = self.config.node_id
        if record.id in self._sessions:
            return here
        holder = await self.state.move_call(record.id, from_node, here)
        if holder != here:
            return holder
        session = Session(
            id=record.id,
            business=record.business,
            display_name=record.display_name,
            token_hash=record.token_hash,
            created_at=record.created_at,
            face_consent=record.face_consent,
        )
        self._sessions[session.id] = session
        was = record.state
        if was == "active" and record.agent is not None:
            await self.state.dequeue(session.id)
            session.state = "active"
            session.agent = record.agent
            session.started_at = time.time()
            session.interrupted_at = since if since is not None else time.time()
            session.agent_window = self._spawn(
                self._agent_window(session), f"agent-window-{session.id}"
            )
            session.drop_task = self._spawn(self._drop_after_window(session), f"drop-{session.id}")
        else:
            entry = await self.state.entry(session.id)
            if entry is not None and was in ("queued", "offered"):
                await self.state.update_entry(
                    session.id, node_id=here, offered_to=None, reachable=False
                )
            else:
                await self.state.enqueue(
                    QueueEntry(
                        session.id,
                        session.business,
                        session.created_at,
                        priority=0 if was == "active" else 1,
                        node_id=here,
                        reachable=False,
                    )
                )
        await self._changed(session)
        await self._event(session.id, "session_adopted", from_node=from_node, state=was)
        logger.warning(
            "session %s: taken over from node %s, which is gone (was %s)",
            session.id,
            from_node,
            was,
        )
        if session.state == "active" and session.agent is not None:
            agent = self._agents.get(session.agent.id)
            if agent is not None and agent.proxy_of is None and self._free_or_cut(agent, session):
                await self._resume_agent(agent, session)
        return here

    @staticmethod
    def _free_or_cut(agent: AgentConn, session: Session) -> bool:
        """The agent has no other customer: free, or still in this call relayed to a dead node."""
        if agent.session_id is None:
            return agent.status in ("away", "ready")
        return agent.session_id == session.id and agent.remote_node is not None

    async def customer_rejoin(self, channel: Channel, session_id: str, token: str) -> Session:
        async with self._lock:
            session = self._sessions.get(session_id) or self._ended.get(session_id)
            if session is None or not hmac.compare_digest(session.token_hash, hash_token(token)):
                logger.info(
                    "rejoin refused for session id %.8s...: unknown or wrong token", session_id
                )
                raise Forbidden("that session does not exist or the rejoin token does not match")
            if session.state in ("ended", "abandoned", "failed"):
                channel.send(
                    m.CallEnded(session_id=session.id, reason=session.end_reason or session.state)
                )
                raise InvalidState(
                    "this session has already ended", code="session_ended", fatal=True
                )
            self._cancel(session.drop_task)
            session.drop_task = None
            old = session.channel
            session.channel = channel
            if old is not None and old is not channel:
                old.send(
                    m.Error(
                        code="replaced", message="this session was resumed elsewhere", fatal=True
                    )
                )
                old.close(CLOSE_REPLACED, "session resumed elsewhere")
            session.last_queue_update = None
            channel.send(m.Rejoined(session_id=session.id, state=session.state))
            await self._event(session.id, "customer_rejoined", state=session.state)
            logger.info("session %s: customer rejoined (%s)", session.id, session.state)
            if session.state in ("queued", "offered"):
                await self._shared(
                    "rejoin", self.state.update_entry(session.id, reachable=True), None
                )
                await self._dispatch()
                await self._broadcast_queue()
            elif session.state == "active" and session.agent is not None:
                channel.send(self._call_started(session, for_role="customer"))
                agent = self._agents.get(session.agent.id)
                if agent is not None and agent.session_id == session.id:
                    agent.channel.send(m.PeerReconnected())
                    for hook in self.on_party_back:
                        await hook(session, "customer")
                else:  # the agent is away too: they have the window to come back
                    channel.send(m.PeerReconnecting(window_s=int(self.config.rejoin_window_s)))
        return session

    async def customer_cancel(self, session: Session) -> None:
        async with self._lock:
            if session.state not in ("queued", "offered"):
                raise InvalidState(f"cannot cancel a session that is {session.state}")
            await self._finish(session, "abandoned", "customer_cancelled")

    async def customer_callback(
        self, session: Session, store: Callable[[Session], Awaitable[None]]
    ) -> None:
        """The waiting customer asked to be called back instead: ``store`` keeps the request (the
        server's database), then the session ends ``abandoned`` with ``callback_requested``. Not
        once the call started (``InvalidState``); nothing is stored then."""
        async with self._lock:
            if session.state not in ("queued", "offered"):
                raise InvalidState(
                    f"only a waiting customer can ask for a call-back (the session is {session.state})"
                )
            await store(session)
            await self._event(session.id, "callback_requested", business=session.business)
            await self._finish(session, "abandoned", "callback_requested")

    async def customer_hangup(self, session: Session) -> None:
        async with self._lock:
            if session.state in ("queued", "offered"):
                await self._finish(session, "abandoned", "customer_cancelled")
            elif session.state == "active":
                await self._finish(session, "ended", "customer_hangup")
            else:
                raise InvalidState(f"no call to hang up (session is {session.state})")

    async def customer_disconnected(self, session: Session, channel: Channel) -> None:
        async with self._lock:
            if session.channel is not channel or session.state in ("ended", "abandoned", "failed"):
                return
            session.channel = None
            logger.info("session %s: customer connection lost (%s)", session.id, session.state)
            await self._event(session.id, "customer_disconnected", state=session.state)
            if session.state in ("queued", "offered"):
                entry = await self._shared(
                    "customer lost", self.state.update_entry(session.id, reachable=False), None
                )
                if entry is not None and entry.offered_to is not None:
                    await self._withdraw_offer(
                        session, entry.offered_to, "customer_lost", penalise=False
                    )
                await self._broadcast_queue()
            elif session.state == "active":
                # the rejoin window now runs instead of the media watchdog's
                session.media_lost.pop("customer", None)
                await self.hub.disconnect(session.id, "customer")
                if session.agent is not None and (agent := self._agents.get(session.agent.id)):
                    agent.channel.send(
                        m.PeerReconnecting(window_s=int(self.config.rejoin_window_s))
                    )
            session.drop_task = self._spawn(self._drop_after_window(session), f"drop-{session.id}")

    async def _drop_after_window(self, session: Session) -> None:
        await asyncio.sleep(self.config.rejoin_window_s)
        async with self._lock:
            if session.channel is not None or session.state in ("ended", "abandoned", "failed"):
                return
            session.drop_task = None
            if session.state == "active":
                await self._finish(session, "ended", "customer_lost")
            else:
                await self._finish(session, "abandoned", "customer_lost")

    # -- agents --------------------------------------------------------------------

    async def agent_connected(self, user: AgentUser, channel: Channel) -> AgentConn:
        previous = self._agents.get(user.id)
        if previous is not None:
            previous.channel.send(
                m.Error(code="replaced", message="you logged in from another window", fatal=True)
            )
            previous.channel.close(CLOSE_REPLACED, "logged in elsewhere")
            await self.agent_disconnected(previous)
        agent = AgentConn(user=user, channel=channel)
        async with self._lock:
            self._agents[user.id] = agent
            await self._put_presence(agent)
            channel.send(
                m.Authenticated(
                    username=user.username,
                    display_name=user.display_name,
                    skills=sorted(user.skills),
                    wrap_up_s=self.config.wrap_up_s,
                )
            )
            channel.send(m.StatusChanged(status=m.AgentStatus.AWAY))
            channel.send(await self._queue_stats())
            logger.info("agent %s connected", user.username)
            held = self._held_call(user.id)
            if held is not None:
                await self._resume_agent(agent, held)
        return agent

    def _held_call(self, agent_id: int) -> Session | None:
        """This node's active call whose agent ``agent_id`` is away (within the rejoin window)."""
        for session in self._sessions.values():
            if (
                session.state == "active"
                and session.agent is not None
                and session.agent.id == agent_id
                and session.agent_window is not None
            ):
                return session
        return None

    async def _agent_left_call(self, session: Session) -> None:
        """The agent's connection is gone mid-call: the call waits for them for the rejoin window
        (the customer is told), the recording goes on (caller holds the lock)."""
        await self._event(
            session.id,
            "agent_disconnected",
            agent=session.agent.username if session.agent else None,
        )
        session.media_lost.pop("agent", None)
        await self.hub.disconnect(session.id, "agent")
        if session.channel is not None:
            session.channel.send(m.PeerReconnecting(window_s=int(self.config.rejoin_window_s)))
        self._cancel(session.agent_window)
        session.agent_window = self._spawn(
            self._agent_window(session), f"agent-window-{session.id}"
        )

    async def _agent_window(self, session: Session) -> None:
        await asyncio.sleep(self.config.rejoin_window_s)
        async with self._lock:
            if session.agent_window is not asyncio.current_task():
                return
            session.agent_window = None
            if session.state != "active":
                return
            logger.info("session %s: the agent did not come back in time", session.id)
            await self._requeue_at_head(session)
            await self._dispatch()
            await self._broadcast_queue()

    async def _resume_agent(self, agent: AgentConn, session: Session) -> None:
        """The call's agent is back (caller holds the lock): on with the call; a call cut by its
        node's death starts again here (recording, identity checks, flow) before the parties are
        told, and does not go on if it cannot be recorded (the customer goes to the head of the
        queue)."""
        self._cancel(session.agent_window)
        session.agent_window = None
        self._cancel(agent.offer_task)
        agent.offer_task = None
        agent.session_id = session.id
        agent.remote_node = None
        await self._set_agent_status(agent, "busy")
        cut_s = None
        if session.interrupted_at is not None:
            cut_s = max(0.0, time.time() - session.interrupted_at)
            session.interrupted_at = None
            failed = await self._start_hooks(session, agent)
            if failed is not None:
                code, text = failed
                await self._requeue_at_head(session)
                if session.channel is not None:
                    session.channel.send(m.Error(code=code, message=text))
                agent.session_id = None
                agent.channel.send(m.CallEnded(session_id=session.id, reason=code))
                await self._set_agent_status(agent, "away")
                await self._dispatch()
                await self._broadcast_queue()
                return
        agent.channel.send(self._call_started(session, for_role="agent"))
        if session.channel is not None:
            session.channel.send(m.PeerReconnected())
        self._start_watchdog()
        if cut_s is not None:
            await self._event(
                session.id,
                "call_resumed",
                agent=agent.user.username,
                interrupted_s=round(cut_s, 1),
            )
            logger.info(
                "session %s: call resumed with %s after %.1f s",
                session.id,
                agent.user.username,
                cut_s,
            )
        else:
            await self._event(session.id, "agent_rejoined", agent=agent.user.username)
            logger.info("session %s: agent %s is back", session.id, agent.user.username)
            for hook in self.on_party_back:
                await hook(session, "agent")
        await self._broadcast_queue()

    async def _put_presence(self, agent: AgentConn) -> None:
        if agent.proxy_of is not None:
            return  # the agent's own node publishes its presence
        self._start_housekeeping()
        await self._shared(
            "agent presence",
            self.state.put_agent(
                AgentPresence(
                    agent_id=agent.user.id,
                    username=agent.user.username,
                    display_name=agent.user.display_name,
                    skills=agent.user.skills,
                    status=agent.status,
                    node_id=self.config.node_id,
                    ready_since=agent.ready_since,
                ),
                ttl_s=PRESENCE_TTL_S if self.bus is not None else None,
            ),
            None,
        )

    # -- with other nodes: presence renewal, nodes that died ---------------------------

    def _start_housekeeping(self) -> None:
        if (
            self.bus is not None
            and not self._closed
            and (self._housekeeping is None or self._housekeeping.done())
        ):
            self._housekeeping = self._spawn(self._keep_house(), "broker-housekeeping")

    async def _keep_house(self) -> None:
        last_presence = 0.0
        while True:
            await asyncio.sleep(HOUSEKEEPING_S)
            try:
                now = time.monotonic()
                if now - last_presence >= PRESENCE_TTL_S / 3:
                    last_presence = now
                    for agent in [a for a in self._agents.values() if a.proxy_of is None]:
                        await self._put_presence(agent)
                for agent in [a for a in self._agents.values() if a.remote_node is not None]:
                    node = agent.remote_node
                    if node is not None and not await self._nodes.known(node):
                        await self._remote_node_lost(agent)
            except Exception:
                logger.exception("broker housekeeping failed")

    async def _remote_node_lost(self, agent: AgentConn) -> None:
        """The node holding the session this node's agent was offered or serving died."""
        async with self._lock:
            node, session_id = agent.remote_node, agent.session_id
            if node is None or session_id is None or self._agents.get(agent.user.id) is not agent:
                return
            logger.warning(
                "agent %s: node %s holding session %s is gone",
                agent.user.username,
                node,
                session_id,
            )
            if agent.status == "busy" and await self._carry_on(agent, session_id, node):
                return
            if agent.status == "busy":
                agent.channel.send(m.CallEnded(session_id=session_id, reason="node_lost"))
            else:
                agent.channel.send(m.OfferWithdrawn(session_id=session_id, reason="node_lost"))
            self._cancel(agent.offer_task)
            agent.offer_task = None
            agent.remote_node = agent.session_id = None
            await self._set_agent_status(agent, "away")
            await self._broadcast_queue()

    async def _carry_on(self, agent: AgentConn, session_id: str, dead: str) -> bool:
        """The call ``agent`` serves lost its node: resume it here (this node takes the session
        over) or on the survivor that took it over first. False when nothing can be resumed
        (caller holds the lock)."""
        record = await self._shared("take over", self.log.record(session_id), None)
        if record is None or record.state != "active" or record.agent is None:
            return False
        if record.agent.id != agent.user.id:
            return False
        try:
            holder = await self._adopt(record, dead, None)
        except Exception:
            logger.exception("session %s: could not take the call over", session_id)
            return False
        if holder == self.config.node_id:
            return agent.session_id == session_id and agent.remote_node is None
        if await self._nodes.known(holder):
            await self.resume_elsewhere(agent, session_id, holder, locked=True)
            return True
        return False

    async def resume_elsewhere(
        self, agent: AgentConn, session_id: str, node_id: str, *, locked: bool = False
    ) -> None:
        """This node's agent is back for its call that lives on node ``node_id``: that node
        resumes it through a stand-in, as for an offer; ``resume_failed`` if it cannot."""
        assert self.bus is not None
        if not locked:
            async with self._lock:
                await self.resume_elsewhere(agent, session_id, node_id, locked=True)
            return
        if self._agents.get(agent.user.id) is not agent:
            return
        self._cancel(agent.offer_task)
        agent.offer_task = None
        agent.session_id = session_id
        agent.remote_node = node_id
        agent.status = "busy"
        logger.info(
            "session %s: agent %s resumes the call on node %s",
            session_id,
            agent.user.username,
            node_id,
        )
        await self._bus_send(
            node_id, {"t": "resume", "session_id": session_id, "agent": _agent_body(agent.user)}
        )

    async def remote_resume(
        self, sender: str, session_id: str, user: AgentUser
    ) -> AgentConn | None:
        """Node ``sender``'s agent is back for its call held here: resume the call through a
        stand-in. None (and ``resume_failed`` sent) when there is no such call waiting for it."""
        assert self.bus is not None
        async with self._lock:
            session = self._sessions.get(session_id)
            present = self._agents.get(user.id)
            if (
                session is None
                or session.state != "active"
                or session.agent is None
                or session.agent.id != user.id
                or (present is not None and present.proxy_of is None)
            ):
                await self._bus_send(
                    sender, {"t": "resume_failed", "agent_id": user.id, "session_id": session_id}
                )
                return None
            if present is not None and isinstance(present.channel, RemoteChannel):
                # the agent's stand-in for a node it left (its goodbye may still be on the way)
                self._spawn(present.channel.aclose(), f"relay-replaced-{user.username}")
            proxy = self._stand_in(sender, user)
            await self._resume_agent(proxy, session)
            return proxy

    async def remote_resume_failed(self, agent_id: int, session_id: str) -> None:
        """The call this node's agent came back for is over: the agent is free (and away)."""
        async with self._lock:
            agent = self._agents.get(agent_id)
            if agent is None or agent.remote_node is None or agent.session_id != session_id:
                return
            agent.remote_node = agent.session_id = None
            agent.channel.send(m.CallEnded(session_id=session_id, reason="call_over"))
            await self._set_agent_status(agent, "away")
            await self._broadcast_queue()

    async def _set_agent_status(self, agent: AgentConn, status: str) -> None:
        if status == "ready" and agent.status != "ready":
            agent.ready_since = time.time()
        agent.status = status
        await self._put_presence(agent)
        agent.channel.send(m.StatusChanged(status=m.AgentStatus(status)))
        if agent.proxy_of is not None and status in ("ready", "away") and agent.session_id is None:
            self._release_proxy(agent, status)

    def _release_proxy(self, agent: AgentConn, status: str) -> None:
        """A relayed agent is done with this node's session: its own node takes it back."""
        if self._agents.get(agent.user.id) is agent:
            del self._agents[agent.user.id]
        if isinstance(agent.channel, RemoteChannel):
            agent.channel.release(status=status)
            self._spawn(agent.channel.aclose(), f"release-{agent.user.username}")
        logger.info("agent %s: back to node %s (%s)", agent.user.username, agent.proxy_of, status)

    async def agent_set_status(self, agent: AgentConn, status: str) -> None:
        async with self._lock:
            if agent.status in ("offered", "busy"):
                raise InvalidState(
                    f"you are {agent.status}: finish or decline the current customer first"
                )
            await self._set_agent_status(agent, status)
            if status == "ready":
                await self._dispatch()
            await self._broadcast_queue()

    async def agent_accept(self, agent: AgentConn, session_id: str) -> None:
        async with self._lock:
            if agent.status != "offered" or agent.session_id != session_id:
                raise InvalidState(
                    "that customer is not offered to you (the offer may have expired)"
                )
            session = self._sessions.get(session_id)
            if session is None or session.state != "offered":
                raise InvalidState("that customer is no longer waiting")
            self._cancel(agent.offer_task)
            agent.offer_task = None
            session.state = "active"
            session.agent = agent.user
            session.started_at = time.time()
            await self._set_agent_status(agent, "busy")
            await self._event(session.id, "call_started", agent=agent.user.username)
            logger.info("session %s: agent %s accepted", session.id, agent.user.username)
            # the parties are told (and the database) that the call started once every hook has
            # started, the recording first: a call that cannot be recorded does not go on
            failed = await self._start_hooks(session, agent)
            if failed is not None:
                code, text = failed
                # undo what the hooks before it started; the customer keeps their place
                await self.hub.end_call(session.id)
                for ended in self.on_call_ended:
                    try:
                        await ended(session)
                    except Exception:
                        logger.exception("session %s: a call-ended hook failed", session.id)
                session.state, session.agent, session.started_at = "queued", None, None
                session.last_queue_update = None
                await self._changed(session)  # it said "offered"
                await self._shared(
                    "call not started",
                    self.state.release_offer(session.id, agent.user.id, penalise=False),
                    None,
                )
                await self._event(session.id, "requeued", reason=code)
                if session.channel is not None:
                    session.channel.send(m.Error(code=code, message=text))
                agent.session_id = None
                agent.channel.send(m.OfferWithdrawn(session_id=session.id, reason=code))
                # away: offered this customer again at once, the agent would not see why
                await self._set_agent_status(agent, "away")
                await self._dispatch()
                await self._broadcast_queue()
                return
            await self._changed(session)
            session.transferring = False
            self._cancel(session.cooldown_task)
            session.cooldown_task = None
            await self._shared("accept", self.state.dequeue(session_id), None)
            await self._shared(
                "accept", self.state.set_call_node(session_id, self.config.node_id), None
            )
            if session.channel is not None:
                session.channel.send(self._call_started(session, for_role="customer"))
            agent.channel.send(self._call_started(session, for_role="agent"))
            self._start_watchdog()
            await self._broadcast_queue()

    async def _start_hooks(self, session: Session, agent: AgentConn) -> tuple[str, str] | None:
        """Run the call-started hooks (the recording first); ``(code, text)`` of the first that
        failed (then the call must not go on: it cannot be recorded), else None."""
        for hook in self.on_call_started:
            try:
                await hook(session)
            except Exception as exc:
                if isinstance(exc, SignalingError):  # a reason for the parties
                    code, text, trace = exc.code, exc.message, False
                else:
                    code, text, trace = "call_not_started", "the call could not start", True
                logger.error(
                    "session %s: the call with %s cannot start (%s): %s",
                    session.id,
                    agent.user.username,
                    code,
                    exc,
                    exc_info=trace,
                )
                await self._event(session.id, "call_not_started", reason=code, message=text)
                return code, text
        return None

    async def agent_decline(self, agent: AgentConn, session_id: str) -> None:
        async with self._lock:
            if agent.status != "offered" or agent.session_id != session_id:
                raise InvalidState("that customer is not offered to you")
            session = self._sessions[session_id]
            await self._event(session.id, "offer_declined", agent=agent.user.username)
            await self._withdraw_offer(session, agent.user.id, "declined", penalise=True)
            self._start_cooldown(session)
            await self._set_agent_status(agent, "ready")
            await self._dispatch()
            await self._broadcast_queue()

    async def _offer_timeout(self, agent: AgentConn, session_id: str) -> None:
        await asyncio.sleep(self.config.offer_timeout_s)
        async with self._lock:
            if agent.status != "offered" or agent.session_id != session_id:
                return
            agent.offer_task = None
            session = self._sessions.get(session_id)
            logger.info("session %s: offer to %s timed out", session_id, agent.user.username)
            if session is not None:
                await self._event(session_id, "offer_timeout", agent=agent.user.username)
                # not a refusal of this customer: the agent is set away, and once back is offered
                # them again like anyone (else the only agent of a skill never is)
                await self._withdraw_offer(session, agent.user.id, "timeout", penalise=False)
            # an agent who does not answer is not at the desk
            await self._set_agent_status(agent, "away")
            await self._dispatch()
            await self._broadcast_queue()

    async def _withdraw_offer(
        self, session: Session, agent_id: int, reason: str, *, penalise: bool
    ) -> None:
        """Take an outstanding offer back; the customer keeps their place in the queue."""
        await self._shared(
            "withdraw offer",
            self.state.release_offer(session.id, agent_id, penalise=penalise),
            None,
        )
        if session.state == "offered":
            session.state = "queued"
            await self._changed(session)
        agent = self._agents.get(agent_id)
        if agent is not None and agent.session_id == session.id:
            self._cancel(agent.offer_task)
            agent.offer_task = None
            agent.session_id = None
            agent.channel.send(m.OfferWithdrawn(session_id=session.id, reason=reason))
            if reason in ("customer_lost", "customer_cancelled"):
                await self._set_agent_status(agent, "ready")
        if reason in OFFER_FAILED and session.state == "queued":
            session.transferring = True

    def _start_cooldown(self, session: Session) -> None:
        """Wake the matching when an agent's cool-down on ``session`` is over: the agent who
        declined is offered the customer again when nobody else took them meanwhile (caller holds
        the lock, so the timer it replaces is not offering at this moment)."""
        self._cancel(session.cooldown_task)
        session.cooldown_task = None
        if not self._closed and self.config.offer_cooldown_s >= 0:
            session.cooldown_task = self._spawn(
                self._cooldowns_over(session), f"offer-cooldown-{session.id}"
            )

    async def _cooldowns_over(self, session: Session) -> None:
        """Until no pass on ``session`` is cooling down: sleep to the end of the next one, then
        offer to this node's ready agents and tell the other nodes (theirs may match now)."""
        cooldown = self.config.offer_cooldown_s
        while session.state in ("queued", "offered"):
            entry = await self._shared("cool-down", self.state.entry(session.id), None)
            now = await self._shared("cool-down", self.state.now(), None)
            if entry is None or now is None:
                return
            ends = [at + cooldown - now for at in entry.passed_by.values() if at + cooldown > now]
            if not ends:
                return
            await asyncio.sleep(min(ends) + COOLDOWN_MARGIN_S)
            async with self._lock:
                if session.state not in ("queued", "offered"):
                    return
                await self._dispatch()
                await self._broadcast_queue()
            await self._queue_changed()

    async def agent_hangup(self, agent: AgentConn) -> None:
        async with self._lock:
            session = self._sessions.get(agent.session_id or "")
            if agent.status != "busy" or session is None:
                raise InvalidState("you are not in a call")
            await self._finish(session, "ended", "agent_hangup")

    async def agent_disconnected(self, agent: AgentConn) -> None:
        async with self._lock:
            if self._agents.get(agent.user.id) is not agent:
                return
            del self._agents[agent.user.id]
            if agent.proxy_of is None:
                await self._shared("agent gone", self.state.remove_agent(agent.user.id), None)
            elif isinstance(agent.channel, RemoteChannel):
                self._spawn(agent.channel.aclose(), f"relay-gone-{agent.user.username}")
            logger.info("agent %s disconnected (%s)", agent.user.username, agent.status)
            if (
                agent.remote_node is not None
                and agent.session_id is not None
                and self.bus is not None
            ):
                # the session's node drops its stand-in (withdraws the offer, or requeues the call)
                self._cancel(agent.offer_task)
                await self._bus_send(
                    agent.remote_node, {"t": "agent_gone", "agent_id": agent.user.id}
                )
            session = self._sessions.get(agent.session_id or "")
            if session is not None and agent.status == "offered":
                await self._withdraw_offer(session, agent.user.id, "agent_lost", penalise=False)
            elif session is not None and agent.status == "busy" and session.state == "active":
                await self._agent_left_call(session)
            agent.session_id = None
            await self._dispatch()
            await self._broadcast_queue()

    async def _requeue_at_head(self, session: Session) -> None:
        self._cancel(session.agent_window)
        session.agent_window = None
        session.interrupted_at = None
        await self._event(
            session.id, "agent_lost", agent=session.agent.username if session.agent else None
        )
        session.media_lost.clear()
        await self.hub.end_call(session.id)
        for hook in self.on_call_ended:
            await hook(session)
        session.state = "queued"
        session.agent = None
        session.started_at = None
        session.last_queue_update = None
        session.transferring = False
        await self._changed(session)
        await self._shared(
            "requeue",
            self.state.enqueue(
                QueueEntry(
                    session.id,
                    session.business,
                    session.created_at,
                    priority=0,
                    node_id=self.config.node_id,
                    reachable=session.channel is not None,
                )
            ),
            None,
        )
        await self._event(session.id, "requeued", reason="agent_lost")
        logger.info("session %s: agent lost, customer back at the head of the queue", session.id)
        if session.channel is not None:
            session.channel.send(m.Requeued(reason="agent_lost"))

    # -- media ---------------------------------------------------------------------

    async def offer(self, session: Session, role: Role, sdp: str) -> None:
        """A participant's SDP offer: connect it to the hub and send the answer."""
        if session.state != "active":
            raise InvalidState("media can only be negotiated during a call")
        answer = await self.hub.connect(session.id, role, sdp)
        if session.state != "active":
            await self.hub.disconnect(session.id, role)
            raise InvalidState("the call ended during negotiation")
        channel = self._channel(session, role)
        if channel is not None:
            channel.send(m.Answer(sdp=answer))
        await self._event(session.id, "media_negotiated", role=role)

    def request_keyframe(self, session: Session, role: str) -> None:
        """``role`` asks the other party's encoder for a keyframe."""
        media = self.hub.find(session.id)
        if media is not None:
            media.tap("agent" if role == "customer" else "customer", "video").request_keyframe()

    async def media_state(self, session_id: str, role: str, state: str) -> None:
        """Called by the hub when a participant's current peer connection changes state."""
        if state in ("connected", "failed"):
            await self._event(session_id, f"media_{state}", role=role)
        if state != "failed" or not is_role(role):
            return
        async with self._lock:
            session = self._sessions.get(session_id)
            if session is None or session.state != "active" or self._channel(session, role) is None:
                return
            loss = session.media_lost.get(role)
            if loss is None:
                await self._media_lost(session, role, "failed")
            elif self._participant(session, role) is not loss.asked_of:
                self._ask_media_restart(session, role, loss)  # the new connection failed too

    # -- media watchdog ------------------------------------------------------------

    @property
    def calls_without_media(self) -> int:
        """Active calls in which a party's media is lost (for /healthz)."""
        return sum(1 for s in self._sessions.values() if s.state == "active" and s.media_lost)

    def _start_watchdog(self) -> None:
        if self._watchdog is None or self._watchdog.done():
            self._watchdog = self._spawn(self._watch_media(), "media-watchdog")

    async def _watch_media(self) -> None:
        timeout = self.config.media_timeout_s
        interval = min(1.0, timeout / 4) if timeout > 0 else 1.0
        while True:
            await asyncio.sleep(interval)
            async with self._lock:
                for session in [s for s in self._sessions.values() if s.state == "active"]:
                    try:
                        await self._check_media(session)
                    except Exception:
                        logger.exception("session %s: media check failed", session.id)

    def _participant(self, session: Session, role: str) -> ParticipantMedia | None:
        media = self.hub.find(session.id)
        return media.participants.get(role) if media is not None else None

    async def _check_media(self, session: Session) -> None:
        """One watchdog pass over an active call (caller holds the lock)."""
        media = self.hub.find(session.id)
        if media is None:
            return
        now = asyncio.get_running_loop().time()
        timeout = self.config.media_timeout_s
        roles: tuple[Role, ...] = ("customer", "agent")
        for role in roles:
            if self._channel(session, role) is None:
                continue  # reconnecting: the rejoin window applies instead
            silence = media.silence(role, now)
            stalled = timeout > 0 and silence is not None and silence >= timeout
            loss = session.media_lost.get(role)
            participant = media.participants.get(role)
            if loss is None:
                if stalled and participant is not None:
                    await self._media_lost(
                        session,
                        role,
                        "stalled",
                        silent_s=round(silence or 0.0, 1),
                        connection=participant.pc.connectionState,
                    )
            elif media.media_back(role, loss.since):
                await self._media_restored(session, role, loss, now)
            elif now - loss.since >= self.config.rejoin_window_s:
                logger.warning(
                    "session %s: %s media not back within %.0f s",
                    session.id,
                    role,
                    self.config.rejoin_window_s,
                )
                await self._finish(session, "failed", "media_failed")
                return
            elif participant is loss.asked_of:
                if now - loss.asked_at >= max(timeout, MEDIA_RESTART_RETRY_S):
                    self._ask_media_restart(session, role, loss)  # no new offer yet: ask again
            elif stalled:
                self._ask_media_restart(session, role, loss)  # the new connection is silent too

    async def _media_lost(
        self, session: Session, role: Role, reason: MediaLossReason, **data: object
    ) -> None:
        now = asyncio.get_running_loop().time()
        loss = MediaLoss(
            reason=reason, since=now, asked_at=now, asked_of=self._participant(session, role)
        )
        session.media_lost[role] = loss
        if reason == "stalled":
            await self._event(session.id, "media_stalled", role=role, **data)
        logger.warning("session %s: %s media %s, asking for a new offer", session.id, role, reason)
        self.send(
            session,
            other(role),
            m.MediaLost(role=role, reason=reason, window_s=int(self.config.rejoin_window_s)),
        )
        self.send(session, role, m.MediaRestart(reason=reason))

    def _ask_media_restart(self, session: Session, role: Role, loss: MediaLoss) -> None:
        loss.asked_at = asyncio.get_running_loop().time()
        loss.asked_of = self._participant(session, role)
        loss.restarts += 1
        logger.info(
            "session %s: %s media still lost, asking again (%d)", session.id, role, loss.restarts
        )
        self.send(session, role, m.MediaRestart(reason=loss.reason))

    async def _media_restored(
        self, session: Session, role: Role, loss: MediaLoss, now: float
    ) -> None:
        del session.media_lost[role]
        await self._event(
            session.id,
            "media_restored",
            role=role,
            after_s=round(now - loss.since, 1),
            restarts=loss.restarts,
        )
        logger.info(
            "session %s: %s media restored after %.1f s", session.id, role, now - loss.since
        )
        for party in ("customer", "agent"):
            self.send(session, party, m.MediaRestored(role=role))

    def session_of_agent(self, agent: AgentConn) -> Session:
        session = self._sessions.get(agent.session_id or "")
        if session is None or session.agent is None or session.agent.id != agent.user.id:
            raise NotFound("you have no call")
        return session

    def _channel(self, session: Session, role: str) -> Channel | None:
        if role == "customer":
            return session.channel
        agent = self._agents.get(session.agent.id) if session.agent else None
        return agent.channel if agent is not None else None

    def _call_started(self, session: Session, *, for_role: str) -> m.CallStarted:
        if for_role == "customer":
            assert session.agent is not None
            peer = m.Peer(display_name=session.agent.display_name, role="agent")
        else:
            peer = m.Peer(
                display_name=session.display_name, role="customer", business=session.business
            )
        return m.CallStarted(session_id=session.id, peer=peer, ice_servers=self._ice_servers())

    # -- queue ---------------------------------------------------------------------

    async def _dispatch(self) -> None:
        """Offer each ready agent of this node, longest idle first, the longest-waiting customer of
        its skills in the counter's queue (on whichever node that customer is); nothing while the
        queue cannot be reached."""
        try:
            async with asyncio.timeout(STATE_TIMEOUT_S * 4):
                await self._dispatch_ready()
        except Exception as exc:
            logger.warning(
                "no offers: the queue cannot be reached (%s: %s)", exc.__class__.__name__, exc
            )

    async def _dispatch_ready(self) -> None:
        ready = sorted(
            (a for a in self._agents.values() if a.status == "ready" and a.proxy_of is None),
            key=lambda a: a.ready_since,
        )
        for agent in ready:
            while (
                entry := await self.state.claim_next(
                    agent.user.id, agent.user.skills, cooldown_s=self.config.offer_cooldown_s
                )
            ) is not None:
                session = self._sessions.get(entry.session_id)
                if session is not None and session.state == "queued":
                    await self._offer(agent, session)
                    break
                if session is not None:  # an entry the state kept while it was unreachable
                    logger.warning(
                        "session %s: dropping a queue entry of a %s session",
                        session.id,
                        session.state,
                    )
                    await self.state.dequeue(entry.session_id)
                    continue
                if self.bus is not None and entry.node_id not in ("", self.config.node_id):
                    if await self._nodes.known(entry.node_id):
                        await self._offer_remote(agent, entry)
                        break
                    # its node died: the customer is not connected until they come back (adopt)
                    await self.state.update_entry(
                        entry.session_id, offered_to=None, reachable=False
                    )
                    continue
                # an entry of this node without its session (it ended meanwhile): not a customer
                logger.warning("session %s: dropping a stale queue entry", entry.session_id)
                await self.state.dequeue(entry.session_id)

    async def _offer_remote(self, agent: AgentConn, entry: QueueEntry) -> None:
        """Offer ``agent`` a customer waiting on another node: that node runs the offer and, if it
        is accepted, the call; this one relays the agent's messages to it."""
        assert self.bus is not None
        agent.session_id = entry.session_id
        agent.remote_node = entry.node_id
        await self._set_agent_status(agent, "offered")
        logger.info(
            "session %s: offering to agent %s through node %s",
            entry.session_id,
            agent.user.username,
            entry.node_id,
        )
        await self._bus_send(
            entry.node_id,
            {
                "t": "offer",
                "session_id": entry.session_id,
                "agent": _agent_body(agent.user),
            },
        )
        agent.offer_task = self._spawn(
            self._remote_offer_unanswered(agent, entry), f"remote-offer-{entry.session_id}"
        )

    async def _remote_offer_unanswered(self, agent: AgentConn, entry: QueueEntry) -> None:
        """The customer's node never took the offer up (it died, or the bus lost it): the agent is
        free again and the customer keeps their place."""
        await asyncio.sleep(self.config.offer_timeout_s + REMOTE_ANSWER_MARGIN_S)
        async with self._lock:
            if (
                agent.remote_node != entry.node_id
                or agent.session_id != entry.session_id
                or agent.status != "offered"
                or self._agents.get(agent.user.id) is not agent
            ):
                return
            agent.offer_task = None
            logger.warning(
                "session %s: node %s did not answer the offer to %s",
                entry.session_id,
                entry.node_id,
                agent.user.username,
            )
            await self.state.release_offer(entry.session_id, agent.user.id, penalise=False)
            agent.remote_node = agent.session_id = None
            await self._set_agent_status(agent, "ready")
            await self._dispatch()

    async def _bus_send(self, node_id: str, body: dict[str, object]) -> None:
        assert self.bus is not None
        try:
            await self.bus.send(node_id, body)
        except Exception:
            logger.exception("could not send %s to node %s", body.get("t"), node_id)

    async def _queue_changed(self) -> None:
        """Tell the other nodes the queue changed: their ready agents may match, their customers'
        positions may move."""
        if self.bus is not None:
            try:
                await self.bus.broadcast({"t": "queue_changed"})
            except Exception:
                logger.exception("could not announce a queue change")

    # -- the other nodes -----------------------------------------------------------------

    async def remote_offer(self, sender: str, session_id: str, user: AgentUser) -> AgentConn | None:
        """An agent of node ``sender`` claimed a customer of this node: offer it, through a
        stand-in whose messages go to that node. None (and the claim released) when the
        customer is no longer waiting here."""
        assert self.bus is not None
        async with self._lock:
            session = self._sessions.get(session_id)
            entry = await self.state.entry(session_id)
            if (
                session is None
                or session.state != "queued"
                or entry is None
                or entry.offered_to != user.id
            ):
                if entry is not None and entry.offered_to == user.id:
                    await self.state.release_offer(session_id, user.id, penalise=False)
                await self._bus_send(
                    sender, {"t": "offer_failed", "agent_id": user.id, "session_id": session_id}
                )
                return None
            previous = self._agents.get(user.id)
            if previous is not None and previous.proxy_of is None:
                previous.channel.send(
                    m.Error(
                        code="replaced", message="you logged in from another window", fatal=True
                    )
                )
                previous.channel.close(CLOSE_REPLACED, "logged in elsewhere")
            proxy = self._stand_in(sender, user)
            await self._offer(proxy, session)
            return proxy

    def _stand_in(self, sender: str, user: AgentUser) -> AgentConn:
        """An agent of node ``sender`` here: what it is sent goes to that node."""
        assert self.bus is not None
        proxy = AgentConn(
            user=user,
            proxy_of=sender,
            status="ready",
            channel=RemoteChannel(
                self.bus, sender, "agent", str(user.id), label=f"agent {user.username} on {sender}"
            ),
        )
        self._agents[user.id] = proxy
        return proxy

    async def remote_offer_failed(self, agent_id: int, session_id: str) -> None:
        """The customer this node's agent claimed on another node was gone: the agent is ready again."""
        async with self._lock:
            agent = self._agents.get(agent_id)
            if agent is None or agent.remote_node is None or agent.session_id != session_id:
                return
            self._cancel(agent.offer_task)
            agent.offer_task = None
            agent.remote_node = agent.session_id = None
            await self._set_agent_status(agent, "ready")
            await self._dispatch()

    async def remote_released(self, sender: str, agent_id: int, status: str) -> None:
        """Node ``sender`` is done with this node's agent (offer over, call ended). Usually the
        agent's new status, delivered just before, released it already (:meth:`deliver`)."""
        agent = self._agents.get(agent_id)
        if agent is None or agent.remote_node != sender:
            return
        self._take_back(agent, status if status in ("ready", "away") else "away")

    def _take_back(self, agent: AgentConn, status: str) -> None:
        """This node serves its agent again, with ``status``; offers and positions follow."""
        self._cancel(agent.offer_task)
        agent.offer_task = None
        agent.remote_node = agent.session_id = None
        if status == "ready" and agent.status != "ready":
            agent.ready_since = time.time()
        agent.status = status
        self._spawn(self._taken_back(agent), f"taken-back-{agent.user.username}")

    async def _taken_back(self, agent: AgentConn) -> None:
        async with self._lock:
            if self._agents.get(agent.user.id) is not agent:
                return
            await self._put_presence(agent)
            await self._dispatch()
            await self._broadcast_queue()

    def deliver(self, sender: str, agent_id: int, text: str) -> bool:
        """A message node ``sender`` sends to this node's agent; its status is mirrored here, and a
        status of ``ready`` or ``away`` (the other node only sends those when it is done with the
        agent) gives the agent back to this node before the agent can act on it."""
        agent = self._agents.get(agent_id)
        if agent is None or agent.remote_node != sender:
            return False
        if '"type":"status"' in text:
            status = m.AgentStatus(json.loads(text)["status"]).value
            if status in ("ready", "away"):
                self._take_back(agent, status)
            else:
                agent.status = status
                self._spawn(self._put_presence(agent), f"presence-{agent.user.username}")
        agent.channel.send(m.Relayed(text=text))
        return True

    async def remote_agent_gone(self, sender: str, agent_id: int) -> None:
        """The connection of node ``sender``'s agent that this node relays for is gone."""
        agent = self._agents.get(agent_id)
        if agent is not None and agent.proxy_of == sender:
            await self.agent_disconnected(agent)

    async def forget(self, session_ids: list[str]) -> None:
        """Sessions of dead nodes that nobody took over were closed (in the database): their
        queue entries and placements go, so waiting customers move up and counts are true."""
        async with self._lock:
            gone = [sid for sid in session_ids if sid not in self._sessions]
            for session_id in gone:
                await self._shared("forget", self.state.dequeue(session_id), None)
                await self._shared("forget", self.state.clear_call(session_id), None)
            if gone:
                await self._broadcast_queue()
        if gone:
            await self._queue_changed()

    async def queue_changed_elsewhere(self) -> None:
        """Another node changed the queue: offer to this node's ready agents, update positions."""
        async with self._lock:
            await self._dispatch()
            await self._broadcast_queue()

    async def _offer(self, agent: AgentConn, session: Session) -> None:
        session.state = "offered"
        await self._changed(session)
        agent.session_id = session.id
        await self._set_agent_status(agent, "offered")
        await self._event(session.id, "offered", agent=agent.user.username)
        logger.info("session %s: offered to agent %s", session.id, agent.user.username)
        agent.channel.send(
            m.CustomerOffer(
                session_id=session.id,
                business=session.business,
                display_name=session.display_name,
                waited_s=int(time.time() - session.created_at),
                expires_in_s=int(self.config.offer_timeout_s),
            )
        )
        agent.offer_task = self._spawn(
            self._offer_timeout(agent, session.id), f"offer-{session.id}"
        )

    async def average_handle_s(self, business: str | None = None) -> float:
        """Average handling time of the counter's recent calls of ``business`` (all businesses when
        it has none yet), or the configured default before any call was measured."""
        for scope in (business, None) if business is not None else (None,):
            average = await self._shared(
                "wait estimate", self.state.average_handle_time(scope), None
            )
            if average is not None:
                return average
        return self.config.default_handle_s

    async def _waiting_counts(self, queue: list[QueueEntry] | None = None) -> dict[str, int]:
        counts = dict.fromkeys(sorted(self.config.businesses or ()), 0)
        if queue is None:
            queue = await self._shared("queue stats", self.state.queue(), [])
        for entry in queue:
            counts[entry.business] = counts.get(entry.business, 0) + 1
        return counts

    async def _queue_stats(
        self, queue: list[QueueEntry] | None = None, now: float | None = None
    ) -> m.QueueStats:
        """What agents see of the queue: how many wait per business, the longest wait of each,
        and the businesses whose longest wait reached ``long_wait_s``."""
        if queue is None:
            queue = await self._shared("queue stats", self.state.queue(), [])
        if now is None:
            now = await self._shared("queue stats", self.state.now(), time.time())
        longest: dict[str, float] = {}
        for entry in queue:
            waited = max(0.0, now - entry.enqueued_at)
            longest[entry.business] = max(longest.get(entry.business, 0.0), waited)
        return m.QueueStats(
            waiting=await self._waiting_counts(queue),
            longest_wait_s={b: int(s) for b, s in longest.items()},
            long_wait=sorted(b for b, s in longest.items() if s >= self.config.long_wait_s),
        )

    def _watch_long_waits(self, queue: list[QueueEntry], now: float) -> None:
        """Have the agents told when the next waiting customer reaches ``long_wait_s``."""
        if self._closed or (self._long_waits is not None and not self._long_waits.done()):
            return
        limit = self.config.long_wait_s
        if any(now - e.enqueued_at < limit for e in queue):
            self._long_waits = self._spawn(self._long_waits_reached(), "broker-long-waits")

    async def _long_waits_reached(self) -> None:
        limit = self.config.long_wait_s
        while True:
            queue = await self._shared("long waits", self.state.queue(), None)
            now = await self._shared("long waits", self.state.now(), None)
            if not queue or now is None:
                return
            ahead = [e.enqueued_at + limit - now for e in queue if now - e.enqueued_at < limit]
            if not ahead:
                return  # every customer is flagged already; the next broadcast starts this again
            await asyncio.sleep(min(ahead) + COOLDOWN_MARGIN_S)
            async with self._lock:
                await self._broadcast_queue()

    async def _broadcast_queue(self) -> None:
        """Send each waiting customer its position and estimate if they changed, and the agents
        the queue's figures (nothing while the queue cannot be reached)."""
        try:
            async with asyncio.timeout(STATE_TIMEOUT_S * 2):
                queue = await self.state.queue()
                agents = await self.state.agents()
                now = await self.state.now()
                stats = await self._queue_stats(queue, now)
        except Exception as exc:
            logger.warning(
                "no queue updates: the queue cannot be reached (%s: %s)",
                exc.__class__.__name__,
                exc,
            )
            return
        handles: dict[str, float] = {}
        positions: dict[str, int] = {}
        for entry in queue:
            positions[entry.business] = positions.get(entry.business, 0) + 1
            session = self._sessions.get(entry.session_id)
            if session is None or session.channel is None:
                continue
            position = positions[entry.business]
            staffed = sum(1 for a in agents if entry.business in a.skills and a.status != "away")
            available = sum(1 for a in agents if entry.business in a.skills and a.status == "ready")
            if entry.business not in handles:
                handles[entry.business] = await self.average_handle_s(entry.business)
            estimate = int(math.ceil(position / max(1, staffed)) * handles[entry.business])
            trying = entry.offered_to is not None or available > 0
            status: Literal["waiting", "transferring"] = (
                "transferring" if session.transferring and trying else "waiting"
            )
            long_wait = now - entry.enqueued_at >= self.config.long_wait_s
            update = (position, estimate, available, status, long_wait)
            if update != session.last_queue_update:
                session.last_queue_update = update
                session.channel.send(
                    m.QueueUpdate(
                        position=position,
                        estimated_wait_s=estimate,
                        agents_available=available,
                        status=status,
                        long_wait=long_wait,
                    )
                )
        self._watch_long_waits(queue, now)
        for agent in self._agents.values():
            if agent.proxy_of is None:
                agent.channel.send(stats)

    # -- ending --------------------------------------------------------------------

    async def _finish(self, session: Session, state: str, reason: str) -> None:
        """End a session for everyone (caller holds the lock)."""
        was_active = session.state == "active"
        entry = await self._shared("end", self.state.dequeue(session.id), None)
        if entry is not None and entry.offered_to is not None:
            await self._withdraw_offer(session, entry.offered_to, reason, penalise=False)
        self._cancel(session.drop_task)
        session.drop_task = None
        self._cancel(session.agent_window)
        session.agent_window = None
        self._cancel(session.cooldown_task)
        session.cooldown_task = None
        session.media_lost.clear()
        session.state = state
        session.end_reason = reason
        session.ended_at = time.time()
        if was_active and session.started_at is not None:
            await self._shared(
                "handling time",
                self.state.record_handle_time(
                    session.business, session.ended_at - session.started_at
                ),
                None,
            )
        await self._changed(session)
        await self._event(session.id, state, reason=reason)
        logger.info("session %s: %s (%s)", session.id, state, reason)
        ended = m.CallEnded(session_id=session.id, reason=reason)
        if session.channel is not None:
            session.channel.send(ended)
        if was_active:
            if session.agent is not None and (agent := self._agents.get(session.agent.id)):
                agent.channel.send(ended)
                agent.session_id = None
                await self._set_agent_status(agent, "away")
            await self.hub.end_call(session.id)
            await self._shared("end", self.state.clear_call(session.id), None)
            for hook in self.on_call_ended:
                await hook(session)
        if not was_active:
            await self._shared("end", self.state.clear_call(session.id), None)
        self._sessions.pop(session.id, None)
        self._ended[session.id] = session
        while len(self._ended) > 1000:
            self._ended.popitem(last=False)
        for hook in self.on_session_closed:
            await hook(session)
        await self._broadcast_queue()
        await self._queue_changed()

    async def aclose(self) -> None:
        """End every session (server shutdown); idempotent."""
        if self._closed:
            return
        self._closed = True
        async with self._lock:
            for session in list(self._sessions.values()):
                if session.state == "active":
                    await self._finish(session, "ended", "server_shutdown")
                else:
                    await self._finish(session, "abandoned", "server_shutdown")
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

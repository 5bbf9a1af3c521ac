"""This node's part in a counter of several nodes: the bus messages of the others, routed.

The queue and agent presence are shared (Redis); a session lives on the node
where the customer joined, and its offer, call, media, recording and flow run
there. A participant whose WebSocket is on another node is *relayed*:

- an **agent** on node B who claims a customer of node A: B sends ``offer``;
  A offers the customer to a stand-in of the agent (``Broker.remote_offer``)
  and serves the agent's relayed frames (``agent_frame``) with the same
  :class:`~server.ws.AgentEndpoint` code a local socket has; what A sends the
  agent comes back as ``deliver`` and B writes it to the socket; when the offer
  or call is over A sends ``released`` and B serves the agent itself again;
  ``agent_gone`` when B loses the socket; an agent back (reconnected, or its
  call's node died and another took the session over) for its call on A sends
  ``resume``, and A resumes the call through a new stand-in (or ``resume_failed``);
- a **customer** whose socket reaches B for a session of A (a rejoin through
  the load balancer): B relays the whole connection (``customer_open``,
  ``customer_frame``, ``customer_gone``), A serves it with a
  :class:`~server.ws.CustomerEndpoint` and answers with ``deliver``/``close``.

``queue_changed`` (broadcast) makes every node offer to its ready agents and
update its customers' positions. A relayed connection whose other node dies is
closed with :data:`CLOSE_NODE_GONE`, so the client reconnects at once (and a
surviving node takes its session over). A message from a node that is not alive in the
registry, or about a connection this node does not hold, is ignored and logged.
"""

from __future__ import annotations

import asyncio
import functools
import hmac
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import aiohttp
from aiohttp import web
from sqlmodel import Session as DbSession
from sqlmodel import col, select

from signaling import messages as m
from signaling.broker import AgentConn, AgentUser, hash_token
from signaling.bus import Bus, BusMessage
from signaling.ids import new_id
from signaling.relay import RemoteChannel

from .appkeys import BROKER, CLUSTER, CONFIG, DB, METRICS, NODES
from .db import CallSession, Recording
from .exceptions import ServerError
from .node_registry import NodeView, list_nodes
from .session_log import session_record

if TYPE_CHECKING:
    from .ws import AgentEndpoint, CustomerEndpoint


def _agent_user(raw: dict[str, Any]) -> AgentUser:
    """An agent as a bus message carries it."""
    return AgentUser(
        id=int(raw["id"]),
        username=str(raw["username"]),
        display_name=str(raw["display_name"]),
        skills=frozenset(raw["skills"]),
    )


logger = logging.getLogger(__name__)

#: set on a request one node passes to another (which then never passes it on)
FORWARDED_HEADER = "X-Vcounter-Forwarded-By"
#: headers that belong to one connection, not to the request
_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
    }
)


#: a node places a new session elsewhere when it holds this many more sessions than another node
PLACEMENT_MARGIN = 2
#: close code of a relayed connection whose session's node died (the client reconnects)
CLOSE_NODE_GONE = 1012
#: seconds between two checks that the nodes this node relays customers to are alive
EDGE_CHECK_S = 2.0


def _load(view: NodeView) -> int:
    return int(view.load.get("sessions", 0) or 0)


class ServiceUnavailable(ServerError):
    status = 503
    code = "temporarily_unavailable"


def recording_home(
    handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """A handler of ``/...{recording_id}...`` that runs on the node whose disk holds the recording,
    when recordings are on each node's own disk (``file:`` storage): on another node of the counter
    the request is forwarded there. With a shared store (S3) every node serves every recording."""

    @functools.wraps(handler)
    async def wrapper(request: web.Request) -> web.StreamResponse:
        cluster = request.app.get(CLUSTER)
        if (
            cluster is not None
            and FORWARDED_HEADER not in request.headers
            and request.app[CONFIG].storage_url.startswith("file:")
        ):
            home = await cluster.recording_node(request.match_info["recording_id"])
            if home is not None:
                return await cluster.forward(request, home)
        return await handler(request)

    return wrapper


def session_home(
    handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """A handler of ``/...{session_id}...`` that runs on the node holding the session: on another
    node of the counter the request is forwarded there."""

    @functools.wraps(handler)
    async def wrapper(request: web.Request) -> web.StreamResponse:
        cluster = request.app.get(CLUSTER)
        if cluster is not None and FORWARDED_HEADER not in request.headers:
            home = await cluster.home_of(request.match_info["session_id"])
            if home is not None:
                return await cluster.forward(request, home)
        return await handler(request)

    return wrapper


class Cluster:
    """Routes the bus messages addressed to this node."""

    def __init__(self, app: web.Application, bus: Bus) -> None:
        self.app = app
        self.bus = bus
        #: agents of other nodes this node serves a session for, by (node, agent id)
        self._agents: dict[tuple[str, int], AgentEndpoint] = {}
        #: customers of other nodes' sessions relayed to this node, by (node, relay id)
        self._customers: dict[tuple[str, str], CustomerEndpoint] = {}
        #: this node's customer sockets relayed to another node, by relay id
        self._edges: dict[str, CustomerEndpoint] = {}
        self._http: aiohttp.ClientSession | None = None
        self._watch: asyncio.Task[None] | None = None

    @property
    def node_id(self) -> str:
        return self.bus.node_id

    async def start(self) -> None:
        await self.bus.subscribe(self._on_message)
        self._watch = asyncio.get_running_loop().create_task(
            self._watch_edges(), name=f"relay-watch-{self.node_id}"
        )

    async def aclose(self) -> None:
        """Stop watching relays and close the HTTP client of :meth:`forward`. Safe to call twice."""
        watch, self._watch = self._watch, None
        if watch is not None:
            watch.cancel()
            await asyncio.gather(watch, return_exceptions=True)
        http, self._http = self._http, None
        if http is not None:
            await http.close()

    async def _watch_edges(self) -> None:
        """Close this node's customer connections relayed to a node that died: the page
        reconnects, and its rejoin takes the session over."""
        while True:
            await asyncio.sleep(EDGE_CHECK_S)
            try:
                nodes = {e.relay[0] for e in self._edges.values() if e.relay is not None}
                for node in nodes:
                    if await self.node_alive(node):
                        continue
                    for relay, edge in list(self._edges.items()):
                        if edge.relay is not None and edge.relay[0] == node:
                            del self._edges[relay]
                            logger.warning(
                                "node %s holding a relayed customer's session is gone: "
                                "closing the connection so that it reconnects",
                                node,
                            )
                            edge.channel.close(CLOSE_NODE_GONE, "session node gone")
            except Exception:
                logger.exception("checking relayed connections failed")

    async def placement(self) -> str | None:
        """The node a new customer's session should live on when it is not this one: another live
        node that is not draining, when this one drains or carries clearly more (at least
        :data:`PLACEMENT_MARGIN` more sessions than the least loaded)."""
        registry = self.app[NODES]
        views = await self.app[DB].run(lambda s: list_nodes(s, registry.lease_s))
        candidates = [v for v in views if v.alive and not v.draining and v.address != "-"]
        others = [v for v in candidates if v.id != self.node_id]
        if not others:
            return None
        best = min(others, key=lambda v: (_load(v), v.id))
        if registry.draining:
            return best.id
        mine = len(self.app[BROKER].sessions)
        return best.id if mine - _load(best) >= PLACEMENT_MARGIN else None

    # -- HTTP requests about another node's session ---------------------------------------

    async def home_of(self, session_id: str) -> str | None:
        """The live node holding ``session_id`` when it is not this one."""
        if self.app[BROKER].session(session_id) is not None:
            return None
        home = await self.app[BROKER].state.call_node(session_id)
        if not home or home == self.node_id or not await self.node_alive(home):
            return None
        return home

    async def forward(self, request: web.Request, node_id: str) -> web.StreamResponse:
        """Pass ``request`` to node ``node_id`` and its answer back (the request's own credentials go
        along: that node checks them). A forwarded request is never forwarded again."""
        view = await self.app[NODES].view(node_id)
        if view is None or not view.alive or not view.address:
            raise ServiceUnavailable("the node holding this session cannot be reached: try again")
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_BY_HOP}
        headers[FORWARDED_HEADER] = self.node_id
        http = self._client()
        body = await request.read()
        url = view.address.rstrip("/") + request.rel_url.path_qs
        try:
            async with http.request(
                request.method, url, headers=headers, data=body, allow_redirects=False, ssl=False
            ) as answer:
                out = {
                    k: v
                    for k, v in answer.headers.items()
                    if k.lower() not in _HOP_BY_HOP or k.lower() == "content-length"
                }
                response = web.StreamResponse(status=answer.status, headers=out)
                await response.prepare(request)
                # streamed: a recording replay may be large
                async for chunk in answer.content.iter_chunked(256 * 1024):
                    await response.write(chunk)
                await response.write_eof()
                return response
        except aiohttp.ClientError as exc:
            self.app[METRICS].errors.labels("forward").inc()
            logger.warning(
                "could not forward %s %s to node %s: %s", request.method, request.path, node_id, exc
            )
            raise ServiceUnavailable(
                "the node holding this session cannot be reached: try again"
            ) from None

    def _client(self) -> aiohttp.ClientSession:
        if self._http is None:
            self._http = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=60), auto_decompress=False
            )
        return self._http

    async def fetch(self, request: web.Request, node_id: str, path: str) -> bytes | None:
        """GET ``path`` from node ``node_id`` with ``request``'s credentials (that node checks
        them): the body of a 200 answer, else None."""
        view = await self.app[NODES].view(node_id)
        if view is None or not view.alive or not view.address:
            return None
        headers = {
            k: v for k, v in request.headers.items() if k.lower() in ("authorization", "cookie")
        }
        headers[FORWARDED_HEADER] = self.node_id
        http = self._client()
        try:
            async with http.get(
                view.address.rstrip("/") + path, headers=headers, ssl=False
            ) as answer:
                return await answer.read() if answer.status == 200 else None
        except aiohttp.ClientError as exc:
            self.app[METRICS].errors.labels("forward").inc()
            logger.warning("could not fetch %s from node %s: %s", path, node_id, exc)
            return None

    async def recording_node(self, recording_id: str) -> str | None:
        """The live node that made ``recording_id`` when it is another one."""

        def find(s: DbSession) -> str | None:
            row = s.get(Recording, recording_id)
            if row is None:
                return None
            if row.lease_node:
                return row.lease_node
            session = s.get(CallSession, row.session_id)
            return session.node_id if session is not None else None

        node = await self.app[DB].run(find)
        if not node or node == self.node_id or not await self.node_alive(node):
            return None
        return node

    async def node_alive(self, node_id: str) -> bool:
        info = await self.app[NODES].node(node_id)
        return info is not None and info.alive

    async def adopt(self, session_id: str, token: str, from_node: str) -> str | None:
        """Take over ``session_id`` of dead node ``from_node`` for a customer who proved it is theirs
        (``token``); returns the other live node that took it over first, if one did. Nothing is
        taken over for a wrong token or a closed session (the rejoin is then refused as usual)."""
        record = await self.app[DB].run(lambda s: session_record(s, session_id))
        if record is None or not hmac.compare_digest(record.token_hash, hash_token(token)):
            return None
        holder = await self.app[BROKER].adopt(
            record, from_node, since=await self._last_seen(from_node)
        )
        if holder == self.node_id or not await self.node_alive(holder):
            return None
        return holder

    async def _last_seen(self, node_id: str) -> float | None:
        """Epoch seconds of a node's last heartbeat (by this node's clock), if it is known."""
        view = await self.app[NODES].view(node_id)
        return None if view is None else time.time() - view.silent_s

    async def agent_back(self, agent: AgentConn) -> None:
        """``agent`` connected here and has no call on this node: if a call of theirs is open on
        another node, resume it there, or here if that node died."""
        broker = self.app[BROKER]
        user_id = agent.user.id

        def find(s: DbSession) -> tuple[str, str] | None:
            row = s.exec(
                select(CallSession)
                .where(CallSession.agent_id == user_id, CallSession.state == "active")
                .order_by(col(CallSession.started_at).desc())
            ).first()
            return None if row is None else (row.id, row.node_id)

        found = await self.app[DB].run(find)
        if found is None:
            return
        session_id, home = found
        placed = await broker.state.call_node(session_id)
        home = placed or home
        if home == self.node_id:
            return
        if await self.node_alive(home):
            await broker.resume_elsewhere(agent, session_id, home)
            return
        record = await self.app[DB].run(lambda s: session_record(s, session_id))
        if record is None or record.agent is None or record.agent.id != user_id:
            return
        holder = await broker.adopt(record, home, since=await self._last_seen(home))
        if holder != self.node_id and await self.node_alive(holder):
            await broker.resume_elsewhere(agent, session_id, holder)

    # -- this node's sockets relayed elsewhere --------------------------------------------

    async def open_customer_relay(
        self, endpoint: CustomerEndpoint, node_id: str, first: str
    ) -> str:
        """Relay ``endpoint``'s connection to ``node_id``, starting with frame ``first``."""
        relay = new_id(12)
        self._edges[relay] = endpoint
        await self.bus.send(node_id, {"t": "customer_open", "relay": relay, "data": first})
        return relay

    async def customer_frame(self, node_id: str, relay: str, raw: str) -> None:
        await self.bus.send(node_id, {"t": "customer_frame", "relay": relay, "data": raw})

    async def close_customer_relay(self, node_id: str, relay: str) -> None:
        if self._edges.pop(relay, None) is not None:
            await self.bus.send(node_id, {"t": "customer_gone", "relay": relay})

    async def agent_frame(self, node_id: str, agent_id: int, raw: str) -> None:
        await self.bus.send(node_id, {"t": "agent_frame", "agent_id": agent_id, "data": raw})

    # -- messages from the others ----------------------------------------------------------

    async def _on_message(self, msg: BusMessage) -> None:
        body, sender = msg.body, msg.sender
        kind = body.get("t")
        if sender == self.node_id and kind == "queue_changed":
            return
        if not msg.known_sender:
            logger.warning("bus: %s from node %s, which is not a live node: ignored", kind, sender)
            return
        metrics = self.app[METRICS]
        metrics.bus_latency.observe(max(0.0, msg.latency_s))
        try:
            await self._route(sender, kind, body)
        except Exception:
            # the message is taken (a redelivery much later would be stale signaling)
            metrics.errors.labels("bus").inc()
            logger.exception("bus: %s from node %s failed", kind, sender)

    async def _route(self, sender: str, kind: Any, body: dict[str, Any]) -> None:
        broker = self.app[BROKER]
        if kind == "queue_changed":
            await broker.queue_changed_elsewhere()
        elif kind == "offer":
            await self._offer(sender, body)
        elif kind == "offer_failed":
            await broker.remote_offer_failed(int(body["agent_id"]), str(body["session_id"]))
        elif kind == "resume":
            await self._resume(sender, body)
        elif kind == "resume_failed":
            await broker.remote_resume_failed(int(body["agent_id"]), str(body["session_id"]))
        elif kind == "agent_frame":
            endpoint = self._agents.get((sender, int(body["agent_id"])))
            if endpoint is None or endpoint.agent is None or endpoint.agent.proxy_of != sender:
                logger.warning(
                    "bus: a frame of agent %s from node %s, which this node serves no "
                    "session for: ignored",
                    body.get("agent_id"),
                    sender,
                )
                return
            await endpoint.handle(str(body["data"]))
        elif kind == "agent_gone":
            self._agents.pop((sender, int(body["agent_id"])), None)
            await broker.remote_agent_gone(sender, int(body["agent_id"]))
        elif kind == "deliver":
            self._deliver(sender, body)
        elif kind == "close":
            self._close(sender, body)
        elif kind == "released" and body.get("kind") == "agent":
            await broker.remote_released(sender, int(body["to"]), str(body.get("status", "away")))
        elif kind == "customer_open":
            await self._customer_open(sender, body)
        elif kind == "customer_frame":
            customer = self._customers.get((sender, str(body["relay"])))
            if customer is None:
                logger.warning(
                    "bus: a frame of an unknown relayed customer from node %s: ignored", sender
                )
                return
            if not await customer.handle(str(body["data"])):
                self._customers.pop((sender, str(body["relay"])), None)
                await customer.closed()
        elif kind == "customer_gone":
            customer = self._customers.pop((sender, str(body["relay"])), None)
            if customer is not None:
                await customer.closed()
                if isinstance(customer.channel, RemoteChannel):
                    await customer.channel.aclose()
        else:
            logger.warning("bus: unknown message %r from node %s: ignored", kind, sender)

    async def _offer(self, sender: str, body: dict[str, Any]) -> None:
        user = _agent_user(body["agent"])
        proxy = await self.app[BROKER].remote_offer(sender, str(body["session_id"]), user)
        if proxy is not None:
            self._serve(sender, proxy)

    async def _resume(self, sender: str, body: dict[str, Any]) -> None:
        user = _agent_user(body["agent"])
        proxy = await self.app[BROKER].remote_resume(sender, str(body["session_id"]), user)
        if proxy is not None:
            for key in [k for k in self._agents if k[1] == user.id and k[0] != sender]:
                del self._agents[key]  # its stand-in for the node it left
            self._serve(sender, proxy)

    def _serve(self, sender: str, proxy: AgentConn) -> None:
        """Serve the relayed frames of node ``sender``'s agent through ``proxy``."""
        from .ws import AgentEndpoint

        endpoint = AgentEndpoint(self.app, proxy.channel, proxy.user)
        endpoint.agent = proxy
        self._agents[(sender, proxy.user.id)] = endpoint

    async def _customer_open(self, sender: str, body: dict[str, Any]) -> None:
        from .ws import CustomerEndpoint

        relay = str(body["relay"])
        channel = RemoteChannel(
            self.bus, sender, "customer", relay, label=f"customer relayed from {sender}"
        )
        endpoint = CustomerEndpoint(self.app, channel)
        self._customers[(sender, relay)] = endpoint
        if not await endpoint.handle(str(body["data"])):
            self._customers.pop((sender, relay), None)
            await endpoint.closed()

    def _deliver(self, sender: str, body: dict[str, Any]) -> None:
        text = str(body["data"])
        if body.get("kind") == "agent":
            if not self.app[BROKER].deliver(sender, int(body["to"]), text):
                logger.info(
                    "bus: a message from node %s for agent %s, not relayed to it: dropped",
                    sender,
                    body.get("to"),
                )
            return
        edge = self._edges.get(str(body["to"]))
        if edge is None or edge.relay is None or edge.relay[0] != sender:
            logger.info(
                "bus: a message from node %s for a customer connection not here: dropped", sender
            )
            return
        edge.channel.send(m.Relayed(text=text))

    def _close(self, sender: str, body: dict[str, Any]) -> None:
        code, reason = int(body.get("code", 1000)), str(body.get("reason", ""))
        if body.get("kind") == "agent":
            agent = self.app[BROKER].agent(int(body["to"]))
            if agent is not None and agent.remote_node == sender:
                agent.channel.close(code, reason)
            return
        edge = self._edges.get(str(body["to"]))
        if edge is not None and edge.relay is not None and edge.relay[0] == sender:
            edge.channel.close(code, reason)

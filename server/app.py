"""The application factory: ``create_app(config) -> web.Application``."""

from __future__ import annotations

import logging
import weakref
from collections.abc import AsyncIterator

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from business.catalogue import BUSINESS_TYPES
from signaling.broker import Broker, BrokerConfig
from signaling.bus import Bus
from signaling.media_hub import CandidatePolicy, MediaHub
from signaling.state import InMemoryState, SharedState

from . import migrations
from .appkeys import (
    APPOINTMENTS,
    BROKER,
    CHANNELS,
    CLUSTER,
    CONFIG,
    DB,
    FLOWS,
    HUB,
    IDENTITY,
    KEYS,
    LOOP_LAG,
    METRICS,
    NODES,
    RECORDINGS,
    REPLAYS,
    THROTTLE,
)
from .appointments import AppointmentService
from .auth import LoginThrottle
from .cluster import Cluster
from .config import Config, ensure_data_dir
from .db import Database
from .exceptions import ServerError
from .health import LoopLagMonitor
from .limits import limits_ctx
from .metrics import Metrics
from .node_registry import NodeRegistry
from .origin import origin_middleware
from .proxies import parse_networks, trusted_proxies_middleware
from .recording import RecordingService, load_keys
from .routes import setup_routes
from .session_log import DbSessionLog

logger = logging.getLogger(__name__)

CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
    "media-src 'self' blob:; connect-src 'self' wss: ws:; frame-ancestors 'none'; base-uri 'none'"
)


@web.middleware
async def errors_and_headers(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        response = await handler(request)
    except ServerError as exc:
        response = web.json_response({"error": exc.code, "message": exc.message}, status=exc.status)
    except web.HTTPException as exc:
        if exc.status >= 400 and not request.path.startswith("/ws/"):
            response = web.json_response(
                {"error": exc.reason.lower().replace(" ", "_"), "message": exc.reason},
                status=exc.status,
            )
        else:
            raise
    if not isinstance(response, web.WebSocketResponse) and not response.prepared:
        response.headers.setdefault("Content-Security-Policy", CSP)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("X-Frame-Options", "DENY")
        response.headers.setdefault("Referrer-Policy", "no-referrer")
        response.headers.setdefault("Permissions-Policy", "camera=(self), microphone=(self)")
        if request.path.startswith("/api/"):
            response.headers.setdefault("Cache-Control", "no-store")
    return response


def _flow_service(config: Config, db: Database, broker: Broker, identity, signing):  # type: ignore[no-untyped-def]
    """The business flows from ``config.flows_dir`` (a broken flow file stops the start, naming the line)."""
    from business.loader import load_flows
    from recorder.keys import SigningKey

    from .core_banking import LocalCoreBanking
    from .flow_service import FlowRuns, FlowService

    if not config.flows_dir.is_dir():
        logger.warning(
            "no flows directory %s: calls run without a business script", config.flows_dir
        )
        return None
    flows = load_flows(config.flows_dir, account_class=config.account_class)
    logger.info(
        "business flows: %s",
        ", ".join(f"{b} v{f.version} ({len(f.steps)} steps)" for b, f in sorted(flows.items())),
    )
    if signing is None:
        signing = SigningKey.generate()  # recording off (benchmarks): receipts still need a key
    return FlowService(
        config, broker, flows, signing, LocalCoreBanking(db), identity=identity, runs=FlowRuns(db)
    )


# -- resources: one cleanup context each, torn down in reverse order --------------------------
# A context that fails at start leaves the ones before it to be torn down by ``app.cleanup()``
# (``server.cli`` runs the app so that this happens; aiohttp's ``run_app`` does not).


async def database_ctx(app: web.Application) -> AsyncIterator[None]:
    """The database, its schema at this release's revision (upgraded under the nodes' migration
    lock, or, ``db_auto_upgrade`` off, refused when older)."""
    config = app[CONFIG]
    ensure_data_dir(config)
    db = Database(config.db_url)
    try:
        await migrations.prepare(db, upgrade_it=config.db_auto_upgrade)
        app[DB] = db
        yield
    finally:
        db.close()


async def node_ctx(app: web.Application) -> AsyncIterator[None]:
    """This node's lease on its id in the node registry (refused while a live node holds the id);
    sessions that dead nodes, or this id's earlier run, left open are closed as failed."""
    config, db = app[CONFIG], app[DB]

    def load() -> dict[str, int]:
        hub, broker = app.get(HUB), app.get(BROKER)
        return {
            "calls": hub.call_count if hub else 0,
            "sessions": len(broker.sessions) if broker else 0,
        }

    # with other nodes, a dead node's customers have the rejoin window to come back through another
    grace = config.rejoin_window_s if config.redis_url else 0.0
    registry = NodeRegistry(
        db,
        config.node_id,
        lease_s=config.node_lease_s,
        grace_s=grace,
        address=config.node_url,
        load=load,
    )
    orphans = await registry.start()
    if orphans:
        logger.warning(
            "closed %d session(s) left open by a node that is gone: %s",
            len(orphans),
            ", ".join(orphans),
        )
    app[NODES] = registry
    try:
        yield
    finally:
        await registry.aclose()


async def keys_ctx(app: web.Application) -> AsyncIterator[None]:
    """The recording master key and the signing key (created for development when missing)."""
    config = app[CONFIG]
    if config.recording or config.identity:
        app[KEYS] = load_keys(config)
    yield


async def _shared_state(config: Config, directory: NodeRegistry) -> tuple[SharedState, Bus | None]:
    """In memory on a single node; on Redis, with the bus to the other nodes, when configured."""
    if not config.redis_url:
        return InMemoryState(), None
    from signaling.redis_bus import RedisBus
    from signaling.redis_state import RedisState

    state = RedisState.from_url(config.redis_url, prefix=config.redis_prefix)
    try:
        await state.now()
    except Exception as exc:
        await state.aclose()
        shown = config.redis_url.split("@")[-1]
        raise ServerError(
            f"Redis at {shown} cannot be reached ({exc.__class__.__name__}: {exc})"
        ) from None
    bus = RedisBus.from_url(
        config.redis_url, config.node_id, prefix=config.redis_prefix, directory=directory
    )
    return state, bus


async def media_ctx(app: web.Application) -> AsyncIterator[None]:
    """The media hub and the broker (queue, offers, calls) that drives it; with Redis, the shared
    state and the bus that relays to the other nodes."""
    config, db = app[CONFIG], app[DB]
    broker_ref: list[Broker] = []

    async def on_media_state(call_id: str, role: str, state: str) -> None:
        if broker_ref:
            await broker_ref[0].media_state(call_id, role, state)

    state, bus = await _shared_state(config, app[NODES])
    hub = MediaHub(
        ice_servers=list(config.ice_servers),
        media_mode=config.media_mode,  # type: ignore[arg-type]
        on_state=on_media_state,
        candidates=CandidatePolicy(
            parse_networks(config.ice_peer_networks), config.ice_max_candidates
        ),
    )
    try:
        broker = Broker(
            hub,
            config=BrokerConfig(
                rejoin_window_s=config.rejoin_window_s,
                offer_timeout_s=config.offer_timeout_s,
                offer_cooldown_s=config.offer_cooldown_s,
                long_wait_s=config.long_wait_s,
                wrap_up_s=config.wrap_up_seconds,
                media_timeout_s=config.media_timeout_s,
                node_id=config.node_id,
                ice_servers=config.ice_servers,
                businesses=frozenset(BUSINESS_TYPES),
            ),
            log=DbSessionLog(db, config.node_id),
            state=state,
            bus=bus,
            directory=app[NODES],
        )
        broker_ref.append(broker)
        broker.log.listeners.append(app[METRICS].event)  # type: ignore[attr-defined]
        app[HUB], app[BROKER] = hub, broker
        app[NODES].on_closed.append(broker.forget)
        if app[NODES].closed_at_start:
            await broker.forget(app[NODES].closed_at_start)
        app[THROTTLE] = LoginThrottle(state)
        if bus is not None:
            cluster = app[CLUSTER] = Cluster(app, bus)
            await cluster.start()
        try:
            yield
        finally:
            await broker.aclose()
    finally:
        await hub.aclose()
        if CLUSTER in app:
            await app[CLUSTER].aclose()
        if bus is not None:
            await bus.aclose()
        await state.aclose()


async def recordings_ctx(app: web.Application) -> AsyncIterator[None]:
    """Dual recording of every call into the configured store; recordings a crash interrupted are
    finalised first, and the leases of the recordings being made are renewed until shutdown."""
    config, broker = app[CONFIG], app[BROKER]
    master, signing = app[KEYS]
    recordings = RecordingService(
        config,
        app[DB],
        app[HUB],
        master,
        signing,
        log_event=broker.log.event,
        notify=broker.send,
    )
    try:
        await recordings.recover_interrupted()
        recordings.start()
        app[RECORDINGS] = recordings
        broker.on_call_started.append(recordings.call_started)
        broker.on_call_ended.append(recordings.call_ended)
        broker.log.listeners.append(recordings.event)  # type: ignore[attr-defined]
        yield
    finally:
        await recordings.aclose()


async def identity_ctx(app: web.Application) -> AsyncIterator[None]:
    """Face checks: the worker process pool and the service that feeds it live frames."""
    import asyncio

    from identity import FaceWorker
    from recorder.evidence import EvidenceStore

    from .identity_service import IdentityService
    from .recording import object_store

    config, broker = app[CONFIG], app[BROKER]
    master, _ = app[KEYS]
    # the evidence goes where the recordings go (the recording service's store, or one of its own)
    recordings = app.get(RECORDINGS)
    store = recordings.store if recordings is not None else object_store(config)
    worker = FaceWorker(config.identity_workers or None)
    try:
        identity = IdentityService(
            config, broker, app[HUB], EvidenceStore(store.evidence(), master), worker
        )
        try:
            identity.start()
            app[IDENTITY] = identity
            broker.on_call_started.append(identity.call_started)
            broker.on_call_ended.append(identity.call_ended)
            broker.on_session_closed.append(identity.session_closed)
            broker.on_party_back.append(identity.party_back)
            yield
        finally:
            await identity.aclose()
    finally:
        await worker.aclose()
        if recordings is None:
            await asyncio.to_thread(store.close)


async def appointments_ctx(app: web.Application) -> AsyncIterator[None]:
    """Appointments the bank's systems book for customers."""
    app[APPOINTMENTS] = AppointmentService(app[DB], app[BROKER], app.get(IDENTITY))
    yield


async def flows_ctx(app: web.Application) -> AsyncIterator[None]:
    """The business flows enforced during calls (absent without a flows directory)."""
    config, broker = app[CONFIG], app[BROKER]
    signing = app[KEYS][1] if KEYS in app else None
    flows = _flow_service(config, app[DB], broker, app.get(IDENTITY), signing)
    if flows is not None:
        app[FLOWS] = flows
        broker.on_call_started.append(flows.call_started)
        broker.on_session_closed.insert(0, flows.session_closed)
        broker.on_party_back.append(flows.party_back)
    try:
        yield
    finally:
        if flows is not None and flows.saved is not None:
            await flows.saved.aclose()


async def loop_lag_ctx(app: web.Application) -> AsyncIterator[None]:
    """Event-loop lag, sampled for ``/healthz``."""
    monitor = LoopLagMonitor()
    monitor.start()
    try:
        app[LOOP_LAG] = monitor
        config, db = app[CONFIG], app[DB]
        logger.info(
            "node %s ready (media %s, database %s)",
            config.node_id,
            config.media_mode,
            db.engine.url.render_as_string(hide_password=True),
        )
        yield
    finally:
        await monitor.aclose()


def create_app(config: Config) -> web.Application:
    middlewares: list[Middleware] = [errors_and_headers, origin_middleware(config.allowed_origins)]
    if config.trusted_proxies:
        middlewares.insert(0, trusted_proxies_middleware(parse_networks(config.trusted_proxies)))
    app = web.Application(middlewares=middlewares, client_max_size=1024**2)
    app[CONFIG] = config
    app[CHANNELS] = weakref.WeakSet()
    app[METRICS] = Metrics(config.node_id)
    app[REPLAYS] = {}

    app.cleanup_ctx.extend([database_ctx, node_ctx, keys_ctx, media_ctx, limits_ctx])
    if config.recording:
        app.cleanup_ctx.append(recordings_ctx)
    if config.identity:
        app.cleanup_ctx.append(identity_ctx)
    app.cleanup_ctx.extend([appointments_ctx, flows_ctx, loop_lag_ctx])

    async def on_shutdown(app: web.Application) -> None:
        # tell every participant the session ends (and record it) before sockets close
        if BROKER in app:
            await app[BROKER].aclose()
        channels = app[CHANNELS]
        for channel in list(channels):
            channel.close(1001, "server shutting down")

    app.on_shutdown.append(on_shutdown)
    setup_routes(app)
    return app

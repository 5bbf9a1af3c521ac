"""What clients and load balancers ask first: ``GET /api/config`` and ``GET /healthz``."""

from __future__ import annotations

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from business.catalogue import Business

from ..appkeys import BROKER, CONFIG, DB, HUB, IDENTITY, LOOP_LAG, METRICS, NODES, RECORDINGS
from ..exceptions import BadRequest
from ..node_registry import list_nodes


async def client_config(request: web.Request) -> web.Response:
    """What the web pages need before anything else: ICE servers, the businesses and their names."""
    config = request.app[CONFIG]
    return web.json_response(
        {
            "ice_servers": [
                {
                    k: v
                    for k, v in {
                        "urls": s.urls,
                        "username": s.username,
                        "credential": s.credential,
                    }.items()
                    if v is not None
                }
                for s in config.ice_servers
            ],
            "businesses": [
                {"type": b.value, "name_en": b.label.en, "name_zh": b.label.zh} for b in Business
            ],
            "rejoin_window_s": int(config.rejoin_window_s),
        }
    )


async def health(request: web.Request) -> web.Response:
    """For load balancers and benchmarks (unauthenticated: counts and timings only, nothing per session).

    ``?lag_window_s=S`` summarises the loop lag over the last S seconds only
    (at most the monitor's window, 60 s).
    """
    body: dict[str, object] = {
        "status": "ok",
        "node": request.app[CONFIG].node_id,
        "calls": request.app[HUB].call_count,
        "calls_without_media": request.app[BROKER].calls_without_media,
        "sessions": len(request.app[BROKER].sessions),
    }
    monitor = request.app.get(LOOP_LAG)
    if monitor is not None:
        raw = request.query.get("lag_window_s")
        try:
            last_s = float(raw) if raw is not None else None
        except ValueError:
            raise BadRequest("lag_window_s must be a number of seconds") from None
        if last_s is not None and not 0 < last_s < float("inf"):
            raise BadRequest("lag_window_s must be a positive number of seconds")
        body["loop_lag_ms"] = monitor.summary(last_s)
    registry = request.app.get(NODES)
    if registry is not None and registry.draining:
        body["status"] = "draining"  # 503: a balancer's health check sends new clients elsewhere
    if registry is not None:
        views = await request.app[DB].run(lambda s: list_nodes(s, registry.lease_s))
        # ids, liveness and load only: hosts, processes and addresses are not for anonymous callers
        body["nodes"] = [
            {
                "id": n.id,
                "alive": n.alive,
                "draining": n.draining,
                "calls": n.load.get("calls"),
                "sessions": n.load.get("sessions"),
            }
            for n in views
        ]
    recordings = request.app.get(RECORDINGS)
    if recordings is not None and recordings.store.shared:
        # recordings on an object store: {"kind": "s3", "pending_uploads": N, "ok": reachable}
        body["storage"] = recordings.health()
    identity = request.app.get(IDENTITY)
    if identity is not None:
        body["face_workers"] = {
            "workers": identity.worker.max_workers,
            "pending": identity.worker.pending,
        }
    return web.json_response(body, status=503 if body["status"] == "draining" else 200)


async def metrics(request: web.Request) -> web.Response:
    """Prometheus metrics of this node (counts and timings only, like ``/healthz``)."""
    body = await request.app[METRICS].render(request.app[BROKER], request.app[DB])
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


def setup_status_routes(app: web.Application) -> None:
    app.router.add_get("/api/config", client_config)
    app.router.add_get("/healthz", health)
    app.router.add_get("/metrics", metrics)

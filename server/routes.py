"""HTTP routes: pages, login, configuration, health."""

from __future__ import annotations

import logging

from aiohttp import web

from business.catalogue import Business

from . import auth
from .appkeys import BROKER, CONFIG, DB, HUB, IDENTITY, LOOP_LAG, THROTTLE
from .exceptions import BadRequest, Unauthorized
from .request_helpers import COOKIE, bearer_token, current_user, json_body

logger = logging.getLogger(__name__)

def _page(name: str):
    async def handler(request: web.Request) -> web.FileResponse:
        return web.FileResponse(request.app[CONFIG].web_root / name)

    return handler


async def login(request: web.Request) -> web.Response:
    body = await json_body(request)
    username, password = body.get("username"), body.get("password")
    if not isinstance(username, str) or not isinstance(password, str) or not username or not password:
        raise BadRequest("username and password are required")
    throttle = request.app[THROTTLE]
    throttle.check(username)
    config = request.app[CONFIG]
    try:
        token, user = await auth.login(request.app[DB], username, password, config.login_ttl_s)
    except Unauthorized:
        throttle.failed(username)
        logger.info("failed login for %r from %s", username[:64], request.remote)
        raise
    throttle.succeeded(username)
    logger.info("user %s logged in (%s)", user.username, user.role)
    response = web.json_response({
        "token": token,
        "username": user.username,
        "role": user.role,
        "display_name": user.display_name,
        "skills": sorted(user.skill_set),
    })
    response.set_cookie(COOKIE, token, httponly=True, samesite="Strict", secure=config.tls,
                        max_age=config.login_ttl_s, path="/")
    return response


async def logout(request: web.Request) -> web.Response:
    token = bearer_token(request)
    if token:
        await auth.logout(request.app[DB], token)
    response = web.json_response({"ok": True})
    response.del_cookie(COOKIE, path="/")
    return response


async def me(request: web.Request) -> web.Response:
    user = await current_user(request)
    return web.json_response({"username": user.username, "role": user.role,
                              "display_name": user.display_name, "skills": sorted(user.skill_set)})


async def client_config(request: web.Request) -> web.Response:
    """What the web pages need before anything else: ICE servers, the businesses and their names."""
    config = request.app[CONFIG]
    return web.json_response({
        "ice_servers": [
            {k: v for k, v in {"urls": s.urls, "username": s.username, "credential": s.credential}.items()
             if v is not None}
            for s in config.ice_servers
        ],
        "businesses": [{"type": b.value, "name_en": b.label.en, "name_zh": b.label.zh} for b in Business],
        "rejoin_window_s": int(config.rejoin_window_s),
    })


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
    identity = request.app.get(IDENTITY)
    if identity is not None:
        body["face_workers"] = {"workers": identity.worker.max_workers, "pending": identity.worker.pending}
    return web.json_response(body)


def setup_routes(app: web.Application) -> None:
    from . import ws

    web_root = app[CONFIG].web_root
    app.router.add_get("/", _page("index.html"))
    app.router.add_get("/agent", _page("agent.html"))
    app.router.add_get("/audit", _page("audit.html"))
    app.router.add_static("/static/", web_root, show_index=False, follow_symlinks=False)
    app.router.add_post("/api/login", login)
    app.router.add_post("/api/logout", logout)
    app.router.add_get("/api/me", me)
    app.router.add_get("/api/config", client_config)
    app.router.add_get("/healthz", health)
    app.router.add_get("/ws/customer", ws.customer_ws)
    app.router.add_get("/ws/agent", ws.agent_ws)

"""Staff login: ``POST /api/login``, ``POST /api/logout``, ``GET /api/me``."""

from __future__ import annotations

import logging

from aiohttp import web

from .. import auth, ws
from ..appkeys import CONFIG, DB, THROTTLE
from ..exceptions import BadRequest, Unauthorized
from ..request_helpers import COOKIE, bearer_token, current_user, json_body

logger = logging.getLogger(__name__)


async def login(request: web.Request) -> web.Response:
    body = await json_body(request)
    username, password = body.get("username"), body.get("password")
    if (
        not isinstance(username, str)
        or not isinstance(password, str)
        or not username
        or not password
    ):
        raise BadRequest("username and password are required")
    throttle, address = request.app[THROTTLE], request.remote or ""
    await throttle.attempt(username, address)
    config = request.app[CONFIG]
    try:
        token, user = await auth.login(request.app[DB], username, password, config.login_ttl_s)
    except Unauthorized:
        await throttle.failed(username, address)
        logger.info("failed login for %r from %s", username[:64], address)
        raise
    await throttle.succeeded(username, address)
    logger.info("user %s logged in (%s)", user.username, user.role)
    response = web.json_response(
        {
            "token": token,
            "username": user.username,
            "role": user.role,
            "display_name": user.display_name,
            "skills": sorted(user.skill_set),
        }
    )
    response.set_cookie(
        COOKIE,
        token,
        httponly=True,
        samesite="Strict",
        secure=config.tls,
        max_age=config.login_ttl_s,
        path="/",
    )
    return response


async def logout(request: web.Request) -> web.Response:
    """Revoke the token; this node's agent sockets opened with it close now (4401), the other
    nodes' at their next check of it (``server.ws.TOKEN_CHECK_S``)."""
    token = bearer_token(request)
    if token:
        await auth.logout(request.app[DB], token)
        ws.close_agent_sockets(request.app, token)
    response = web.json_response({"ok": True})
    response.del_cookie(COOKIE, path="/")
    return response


async def me(request: web.Request) -> web.Response:
    user = await current_user(request)
    return web.json_response(
        {
            "username": user.username,
            "role": user.role,
            "display_name": user.display_name,
            "skills": sorted(user.skill_set),
        }
    )


def setup_login_routes(app: web.Application) -> None:
    app.router.add_post("/api/login", login)
    app.router.add_post("/api/logout", logout)
    app.router.add_get("/api/me", me)

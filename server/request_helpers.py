"""What every HTTP handler needs: the caller's identity, their role, bodies read within limits, and
the access log of sensitive reads.

Handlers raise :mod:`server.exceptions`; the application's error middleware turns them into
``{"error": code, "message": text}`` with the right status.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable
from typing import Any

from aiohttp import web

from identity import ImageLimits

from . import access_log, auth
from .appkeys import DB
from .db import User
from .exceptions import BadRequest, Forbidden, PayloadTooLarge, ServerError, Unauthorized

logger = logging.getLogger(__name__)

#: the staff login cookie (HttpOnly, SameSite=Strict)
COOKIE = "vc_session"
#: JSON bodies larger than this are refused before they are read
MAX_JSON_BODY = 64 * 1024


def bearer_token(request: web.Request) -> str | None:
    """The staff token from ``Authorization: Bearer`` or, for pages, the login cookie."""
    header = request.headers.get("Authorization", "")
    if header.startswith("Bearer "):
        return header[7:].strip()
    return request.cookies.get(COOKIE)


async def current_user(request: web.Request) -> User:
    """The logged-in staff member, or 401."""
    user = await auth.user_for_token(request.app[DB], bearer_token(request))
    if user is None:
        raise Unauthorized("log in first")
    return user


async def require_role(request: web.Request, roles: Iterable[str], message: str) -> User:
    """The logged-in staff member if their role is one of ``roles``; 401 or 403 (with ``message``)."""
    user = await current_user(request)
    if user.role not in tuple(roles):
        raise Forbidden(message)
    return user


async def json_body(request: web.Request) -> dict[str, Any]:
    """The request's JSON object (at most :data:`MAX_JSON_BODY` bytes), or 400."""
    if request.content_length is not None and request.content_length > MAX_JSON_BODY:
        raise BadRequest("request body too large")
    try:
        body = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise BadRequest("body must be JSON") from None
    if not isinstance(body, dict):
        raise BadRequest("body must be a JSON object")
    return body


async def read_body(
    request: web.Request,
    max_bytes: int,
    *,
    what: str = "body",
    error: Callable[[str], ServerError] = PayloadTooLarge,
) -> bytes:
    """The raw request body, refused with ``error`` (413) as soon as it passes ``max_bytes``."""
    too_large = f"{what} too large (max {max_bytes // (1024 * 1024)} MB)"
    if request.content_length is not None and request.content_length > max_bytes:
        raise error(too_large)
    chunks, size = [], 0
    async for chunk in request.content.iter_chunked(256 * 1024):
        size += len(chunk)
        if size > max_bytes:
            raise error(too_large)
        chunks.append(chunk)
    if not size:
        raise BadRequest(f"the request body is empty: send the {what} bytes")
    return b"".join(chunks)


async def read_image(request: web.Request) -> bytes:
    """An uploaded image's bytes, refused with ``image_too_large`` past the identity package's limit."""
    return await read_body(
        request,
        ImageLimits().max_bytes,
        what="image",
        error=lambda message: PayloadTooLarge(message, code="image_too_large"),
    )


async def log_access(request: web.Request, user: User, action: str, target: str) -> None:
    """Append one entry to the hash-chained access log (who read or decided what, from where)."""
    await request.app[DB].run(
        lambda s: access_log.append(s, user, action, target, request.remote or "")
    )
    logger.info("audit: %s %s %s", user.username, action, target)

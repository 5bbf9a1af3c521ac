"""Which web pages may act on the counter: its own, and the origins configured.

A browser sends ``Origin`` with every WebSocket handshake and every POST, PUT,
PATCH or DELETE it makes for a page; a page of another site must not open
``/ws/customer`` or ``/ws/agent`` or change anything (an agent's cookie is
``SameSite=Strict``, which a sibling subdomain still gets past). So, for those
requests:

- an ``Origin`` header must name the counter itself (the scheme, host and port
  the request reached: the ``Host`` header and, behind the balancer, the scheme
  ``X-Forwarded-Proto`` gives from a trusted proxy, ``server/proxies.py``; an
  ``https`` page of the same host and port always counts) or one of
  ``VCOUNTER_ALLOWED_ORIGINS``; anything else, ``null`` included, is refused
  with 403 ``bad_origin``;
- a request without ``Origin`` is not a browser page's (the CLI, scripts, the
  bank's systems, another node forwarding a request): it goes on, its
  credentials are checked as usual;
- a body sent to ``/api/`` must be ``application/json`` (or ``+json``), except
  to the handlers marked :func:`raw_body` (image uploads), which refuse the
  form and text types any page may send without a CORS preflight: 415
  ``unsupported_media_type``. A ``text/plain`` "JSON" body is how a page of
  another site would post without asking first.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import TypeVar

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware
from yarl import URL

from .cluster import FORWARDED_HEADER
from .exceptions import Forbidden, ServerError

logger = logging.getLogger(__name__)

#: the methods that change something (checked); GET and HEAD only read
UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
#: body types a page of any origin may send without a CORS preflight
SIMPLE_TYPES = frozenset({"text/plain", "application/x-www-form-urlencoded", "multipart/form-data"})
_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}

H = TypeVar("H", bound=Callable[[web.Request], Awaitable[web.StreamResponse]])


class UnsupportedMediaType(ServerError):
    status = 415
    code = "unsupported_media_type"


def raw_body(handler: H) -> H:
    """Mark a handler that reads a raw (non-JSON) body, an upload (put it under ``session_home``:
    the mark is copied onto the wrapper)."""
    handler.accepts_raw_body = True  # type: ignore[attr-defined]
    return handler


def normalise(origin: str) -> tuple[str, str, int] | None:
    """``(scheme, host, port)`` of an ``Origin`` value (``https://Host`` -> ``("https", "host",
    443)``), or None when it is not an http(s) origin (``null``, garbage)."""
    try:
        url = URL(origin.strip())
    except ValueError:
        return None
    scheme = (url.scheme or "").lower()
    if scheme not in ("http", "https") or not url.host or url.path not in ("", "/"):
        return None
    return scheme, url.host.lower(), url.port or _DEFAULT_PORTS[scheme]


def same_origin(origin: tuple[str, str, int], request: web.Request) -> bool:
    """Whether ``origin`` is the counter as this request reached it."""
    scheme, host, port = origin
    reached = request.scheme.lower()
    if scheme != reached and scheme != "https":
        return False  # an http page never acts on an https counter
    try:
        target = URL(f"{scheme}://{request.host}")
    except ValueError:
        return False
    # a Host without a port is the default port of the scheme the page used
    return (target.host or "").lower() == host and (target.port or _DEFAULT_PORTS[scheme]) == port


def origin_middleware(extra: Iterable[str] = ()) -> Middleware:
    """The checks above; ``extra``: the configured origins (ValueError for one that is not an
    http(s) origin)."""
    allowed = set()
    for value in extra:
        parsed = normalise(value)
        if parsed is None:
            raise ValueError(f"not an origin (scheme://host[:port]): {value!r}")
        allowed.add(parsed)

    @web.middleware
    async def check_origin(request: web.Request, handler: Handler) -> web.StreamResponse:
        unsafe = request.method in UNSAFE_METHODS
        if (unsafe or request.path.startswith("/ws/")) and FORWARDED_HEADER not in request.headers:
            origin = request.headers.get("Origin")
            if origin is not None:
                parsed = normalise(origin)
                if parsed is None or (parsed not in allowed and not same_origin(parsed, request)):
                    logger.info(
                        "refused %s %s from a page of %.100r (%s)",
                        request.method,
                        request.path,
                        origin,
                        request.remote,
                    )
                    raise Forbidden(
                        "requests from pages of other sites are refused", code="bad_origin"
                    )
        if unsafe and request.body_exists and request.path.startswith("/api/"):
            content_type = request.content_type.lower()
            if getattr(request.match_info.handler, "accepts_raw_body", False):
                if content_type in SIMPLE_TYPES:
                    raise UnsupportedMediaType(
                        f"send the file with its own type (image/jpeg...), not {content_type}"
                    )
            elif content_type != "application/json" and not content_type.endswith("+json"):
                raise UnsupportedMediaType(
                    f"send the body as application/json, not {content_type or 'untyped'}"
                )
        return await handler(request)

    return check_origin

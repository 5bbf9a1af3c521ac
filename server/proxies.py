"""Requests that come through the counter's own reverse proxies (the load balancer).

With ``VCOUNTER_TRUSTED_PROXIES`` set, a request whose peer is one of those
addresses or networks is taken to be from the address the proxy names: the
right-most ``X-Forwarded-For`` entry that is not itself a trusted proxy, and
with the scheme of ``X-Forwarded-Proto`` (the balancer terminates TLS). So the
login throttle, the logs and the access log see the customer's or agent's
address, and links the server makes (an appointment's ``join_url``) use the
public scheme. A request from any other peer is taken as it is: its headers
are never believed, and a node can still be reached directly (by the other
nodes, by operators). aiohttp-remotes' strict mode would refuse such direct
requests, its relaxed mode would believe anyone: hence this small middleware.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Awaitable, Callable, Iterable

from aiohttp import web
from aiohttp.typedefs import Middleware

logger = logging.getLogger(__name__)

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def parse_networks(values: Iterable[str]) -> tuple[Network, ...]:
    """``10.0.0.5``, ``10.0.0.0/8``, ``::1``... as networks; ValueError for anything else."""
    return tuple(ipaddress.ip_network(v.strip(), strict=False) for v in values if v.strip())


def _trusted(address: str | None, networks: tuple[Network, ...]) -> bool:
    if not address:
        return False
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in network for network in networks)


def client_behind(
    peer: str | None, forwarded_for: str, networks: tuple[Network, ...]
) -> str | None:
    """The client's address when ``peer`` is a trusted proxy that forwarded for it, else None."""
    if not _trusted(peer, networks):
        return None
    hops = [h.strip() for h in forwarded_for.split(",") if h.strip()]
    for hop in reversed(hops):
        if not _trusted(hop, networks):
            try:
                return str(ipaddress.ip_address(hop))
            except ValueError:
                return None  # garbage from the client side of the proxy: keep the proxy's address
    return None


def trusted_proxies_middleware(networks: tuple[Network, ...]) -> Middleware:
    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        peer = request.remote
        if _trusted(peer, networks):
            changes: dict[str, str] = {}
            client = client_behind(peer, request.headers.get("X-Forwarded-For", ""), networks)
            if client is not None:
                changes["remote"] = client
            proto = request.headers.get("X-Forwarded-Proto", "").split(",")[0].strip().lower()
            if proto in ("http", "https"):
                changes["scheme"] = proto
            if changes:
                request = request.clone(**changes)  # type: ignore[arg-type]
        return await handler(request)

    return middleware

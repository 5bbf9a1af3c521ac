"""The three pages (customer, agent workbench, auditor workbench) and their static files."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web

from ..appkeys import CONFIG


def _page(name: str) -> Callable[[web.Request], Awaitable[web.FileResponse]]:
    async def handler(request: web.Request) -> web.FileResponse:
        return web.FileResponse(request.app[CONFIG].web_root / name)

    return handler


def setup_page_routes(app: web.Application) -> None:
    app.router.add_get("/", _page("index.html"))
    app.router.add_get("/agent", _page("agent.html"))
    app.router.add_get("/audit", _page("audit.html"))
    app.router.add_static("/static/", app[CONFIG].web_root, show_index=False, follow_symlinks=False)

"""The HTTP and WebSocket routes, one module per resource.

====================  ==========================================================
module                routes
====================  ==========================================================
``pages``             ``/``, ``/agent``, ``/audit``, ``/static/``
``login``             ``/api/login``, ``/api/logout``, ``/api/me``
``admin``             ``/api/admin/login-unlock``
``status``            ``/api/config``, ``/healthz``
``appointments``      ``/api/appointments...``, ``/api/appointment``
``callbacks``         ``/api/callbacks``, ``/api/callbacks/{session}``
``identity``          ``/api/identity/{session}/...`` (when face checks are on)
``audit``             ``/api/audit/...``, ``/api/admin/access-log`` (when recording is on)
:mod:`server.ws`      ``/ws/customer``, ``/ws/agent``
====================  ==========================================================
"""

from __future__ import annotations

from aiohttp import web

from .. import ws
from ..appkeys import CONFIG
from .admin import setup_admin_routes
from .appointments import setup_appointment_routes
from .callbacks import setup_callback_routes
from .login import setup_login_routes
from .pages import setup_page_routes
from .status import setup_status_routes


def setup_routes(app: web.Application) -> None:
    """Register every route the configuration switches on."""
    config = app[CONFIG]
    setup_page_routes(app)
    setup_login_routes(app)
    setup_admin_routes(app)
    setup_status_routes(app)
    setup_appointment_routes(app)
    setup_callback_routes(app)
    if config.identity:
        from .identity import setup_identity_routes

        setup_identity_routes(app)
    if config.recording:
        from .audit import setup_audit_routes

        setup_audit_routes(app)
    app.router.add_get("/ws/customer", ws.customer_ws)
    app.router.add_get("/ws/agent", ws.agent_ws)

"""Call-back requests: a waiting customer leaves a phone number instead of waiting.

``POST /api/callbacks/{session_id}``
    The customer's page, with ``X-Session-Token: <rejoin token>`` and the JSON body
    ``{"phone": "+8613812345678"}`` (7 to 15 digits, an optional leading ``+``; spaces and
    hyphens are dropped). The request is stored and the customer leaves the queue: their
    session ends ``abandoned`` with ``callback_requested`` (the page gets ``call_ended``).
    201 ``{"callback": {...}}``; 400 ``bad_phone``; 403 ``forbidden`` for another session or a
    wrong token; 409 ``bad_state`` once the call started. Runs on the node holding the session.
``GET /api/callbacks``
    Administrators and the bank's systems (``integration``): the requests, newest first
    (``?limit=``, at most 500). Every listing is in the access log.
"""

from __future__ import annotations

import re
from datetime import UTC

from aiohttp import web
from sqlmodel import Session as DbSession
from sqlmodel import col, select

from signaling.broker import Session
from signaling.exceptions import InvalidState, SignalingError

from ..appkeys import BROKER, DB
from ..cluster import session_home
from ..db import CallbackRequest
from ..exceptions import BadRequest, Conflict, Forbidden, Unauthorized
from ..request_helpers import json_body, log_access, require_role

#: a phone number as the bank can dial it: 7 to 15 digits (E.164's longest), an optional ``+``
PHONE = re.compile(r"^\+?[0-9]{7,15}$")
#: what a customer may type between digits
_SEPARATORS = re.compile(r"[ \-]")
#: roles that see the requests
CALLBACK_ROLES = ("admin", "integration")
MAX_LISTED = 500


def phone_number(value: object) -> str:
    """The number as stored, or 400 ``bad_phone``."""
    phone = _SEPARATORS.sub("", value) if isinstance(value, str) else ""
    if not PHONE.fullmatch(phone):
        raise BadRequest("phone: 7 to 15 digits, optionally starting with +", code="bad_phone")
    return phone


def _view(row: CallbackRequest) -> dict[str, object]:
    created = row.created_at
    if created.tzinfo is None:  # SQLite gives naive UTC back
        created = created.replace(tzinfo=UTC)
    return {
        "session_id": row.session_id,
        "business": row.business,
        "display_name": row.display_name,
        "phone": row.phone,
        "created_at": created.isoformat(),
    }


@session_home
async def request_callback(request: web.Request) -> web.Response:
    session_id = request.match_info["session_id"]
    token = request.headers.get("X-Session-Token")
    if not token:
        raise Unauthorized("send the session's X-Session-Token")
    broker = request.app[BROKER]
    try:
        session = broker.customer_session(session_id, token)
    except SignalingError:
        raise Forbidden("that session does not exist or the token does not match") from None
    body = await json_body(request)
    phone = phone_number(body.get("phone"))
    if set(body) - {"phone"}:
        raise BadRequest("only phone may be sent")
    stored: list[CallbackRequest] = []

    async def store(s: Session) -> None:
        def work(db: DbSession) -> CallbackRequest:
            row = CallbackRequest(
                session_id=s.id, business=s.business, display_name=s.display_name, phone=phone
            )
            db.add(row)
            db.commit()
            db.refresh(row)
            return row

        stored.append(await request.app[DB].run(work))

    try:
        await broker.customer_callback(session, store)
    except InvalidState as exc:
        raise Conflict(exc.message, code="bad_state") from None
    return web.json_response({"callback": _view(stored[0])}, status=201)


async def list_callbacks(request: web.Request) -> web.Response:
    user = await require_role(
        request, CALLBACK_ROLES, "only administrators and the bank's systems see call-back requests"
    )
    try:
        limit = min(MAX_LISTED, max(1, int(request.query.get("limit", MAX_LISTED))))
    except ValueError:
        raise BadRequest("limit: a whole number") from None

    def work(db: DbSession) -> list[dict[str, object]]:
        rows = db.exec(
            select(CallbackRequest)
            .order_by(col(CallbackRequest.created_at).desc(), col(CallbackRequest.id).desc())
            .limit(limit)
        ).all()
        return [_view(r) for r in rows]

    callbacks = await request.app[DB].run(work)
    await log_access(request, user, "list_callbacks", f"{len(callbacks)} requests")
    return web.json_response({"callbacks": callbacks})


def setup_callback_routes(app: web.Application) -> None:
    app.router.add_post("/api/callbacks/{session_id}", request_callback)
    app.router.add_get("/api/callbacks", list_callbacks)

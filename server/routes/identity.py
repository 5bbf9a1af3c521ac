"""HTTP side of identity: ID photo upload and the evidence images (see docs/identity.md).

``POST /api/identity/{session_id}/reference``
    The customer's page uploads the ID photo as the raw request body
    (``Content-Type: image/jpeg``, ``image/png``...), proving it is that
    session's customer with ``X-Session-Token: <rejoin token>``. An admin may
    upload for a session too (the bank's system, with an admin's bearer token).
    A customer's uploads are limited before the body is read (``server/limits.py``):
    per address and per session in a window, one at a time per session; 429
    ``too_many_uploads`` / ``upload_in_progress``. The image's header is checked
    (type, sides, pixels) before a face worker sees it; it is kept as the type the
    header says, whatever the upload claimed.
``GET /api/identity/{session_id}/evidence``
    Auditors and admins: the session's evidence items (no data). Logged.
``GET /api/identity/{session_id}/evidence/{item_id}``
    The image (reference photo or snapshot), decrypted: the agent serving
    that session during the call, or auditors and admins (every view logged).
    Embeddings are never served. Served as the image type its bytes are
    (``image/jpeg``...; a receipt as ``application/json``; anything else
    ``application/octet-stream``), never as the type it was stored with, with
    ``Content-Disposition: attachment`` and ``X-Content-Type-Options: nosniff``:
    an upload is never rendered as a page of this origin.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable

from aiohttp import web

from identity import IdentityError, ImageError
from recorder.evidence import EvidenceNotFound
from signaling.broker import Session
from signaling.exceptions import SignalingError

from ..appkeys import BROKER, IDENTITY
from ..cluster import FORWARDED_HEADER, session_home
from ..db import User
from ..exceptions import Forbidden, NotFound, Unauthorized
from ..identity_service import IdentityService
from ..limits import LIMITS
from ..origin import raw_body
from ..request_helpers import bearer_token, current_user, log_access, read_image
from .audit import AUDIT_ROLES

logger = logging.getLogger(__name__)


#: what may be downloaded (embeddings never are)
IMAGE_KINDS = ("reference_image", "snapshot", "receipt")
#: the leading bytes of each image type an evidence image may be served as
_MAGIC = (
    (b"\xff\xd8\xff", "image/jpeg", "jpg"),
    (b"\x89PNG\r\n\x1a\n", "image/png", "png"),
    (b"II*\x00", "image/tiff", "tif"),
    (b"MM\x00*", "image/tiff", "tif"),
    (b"BM", "image/bmp", "bmp"),
)


def _service(request: web.Request) -> IdentityService:
    service = request.app.get(IDENTITY)
    if service is None:
        raise NotFound("face checks are switched off on this server")
    return service


def _uploads_per_address(
    handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """Count a customer's upload against its address on the node it reached (before it is
    forwarded to the session's node, which sees the forwarding node's address)."""

    @functools.wraps(handler)
    async def wrapper(request: web.Request) -> web.StreamResponse:
        if "X-Session-Token" in request.headers and FORWARDED_HEADER not in request.headers:
            await request.app[LIMITS].uploads.count_address(request.remote)
        return await handler(request)

    return wrapper


@_uploads_per_address
@session_home
@raw_body
async def upload_reference(request: web.Request) -> web.Response:
    service = _service(request)
    session_id = request.match_info["session_id"]
    token = request.headers.get("X-Session-Token")
    broker = request.app[BROKER]
    uploads = request.app[LIMITS].uploads
    session: Session | None
    if token:
        try:
            session = broker.customer_session(session_id, token)
        except SignalingError:
            raise Forbidden("that session does not exist or the token does not match") from None
        await uploads.count_session(session.id)
    else:
        if bearer_token(request) is None:
            raise Unauthorized("send X-Session-Token (customer) or log in (admin)")
        user = await current_user(request)
        if user.role != "admin":
            raise Forbidden("only the session's customer or an admin can set the reference photo")
        session = broker.session(session_id)
        if session is None:
            raise NotFound("no such live session")
    with uploads.one_at_a_time(session.id):
        data = await read_image(request)
        try:
            reference = await service.upload_reference(session, data)
        except IdentityError as exc:
            status = (
                413
                if exc.code == "image_too_large"
                else 400
                if isinstance(exc, ImageError)
                else 422
            )
            return web.json_response(
                {"error": exc.code, "message": exc.message, "message_zh": exc.message_zh},
                status=status,
            )
        except SignalingError as exc:
            return web.json_response({"error": exc.code, "message": exc.message}, status=409)
    return web.json_response({"reference": reference})


async def _evidence_reader(request: web.Request, session_id: str) -> tuple[User, bool]:
    """The user, if they may see this session's evidence: its agent during the call, or an auditor."""
    user = await current_user(request)
    if user.role in AUDIT_ROLES:
        return user, True
    session = request.app[BROKER].session(session_id)
    if (
        user.role == "agent"
        and session is not None
        and session.agent is not None
        and session.agent.id == user.id
        and session.state == "active"
    ):
        return user, False
    raise Forbidden("only the agent serving this call and auditors can see its evidence")


@session_home
async def list_evidence(request: web.Request) -> web.Response:
    service = _service(request)
    session_id = request.match_info["session_id"]
    user, audited = await _evidence_reader(request, session_id)
    try:
        items = await asyncio.to_thread(service.evidence.list, session_id)
    except ValueError:
        raise NotFound("no such session") from None
    if audited:
        await log_access(request, user, "evidence_list", session_id)
    return web.json_response(
        {
            "items": [
                {
                    **i.as_dict(),
                    "url": f"/api/identity/{session_id}/evidence/{i.id}"
                    if i.kind in IMAGE_KINDS
                    else None,
                }
                for i in items
            ]
        }
    )


@session_home
async def get_evidence(request: web.Request) -> web.Response:
    service = _service(request)
    session_id, item_id = request.match_info["session_id"], request.match_info["item_id"]
    user, audited = await _evidence_reader(request, session_id)
    try:
        item, data = await asyncio.to_thread(service.evidence.get, session_id, item_id)
    except (EvidenceNotFound, ValueError):
        raise NotFound("no such evidence item") from None
    if item.kind not in IMAGE_KINDS:
        raise NotFound("no such evidence item")
    if audited:
        await log_access(request, user, f"evidence_view_{item.kind}", f"{session_id}/{item_id}")
    content_type, extension = _served_type(item.kind, data)
    return web.Response(
        body=data,
        content_type=content_type,
        headers={
            "Cache-Control": "no-store",
            "Content-Disposition": f'attachment; filename="{item.kind}-{item.id}.{extension}"',
            "X-Content-Type-Options": "nosniff",
        },
    )


def _served_type(kind: str, data: bytes) -> tuple[str, str]:
    """The type (and file extension) evidence is served as: what its bytes are, never the type
    it was stored with (an upload's claim)."""
    if kind == "receipt":
        return "application/json", "json"
    for magic, content_type, extension in _MAGIC:
        if data.startswith(magic):
            return content_type, extension
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp", "webp"
    return "application/octet-stream", "bin"


def setup_identity_routes(app: web.Application) -> None:
    app.router.add_post("/api/identity/{session_id}/reference", upload_reference)
    app.router.add_get("/api/identity/{session_id}/evidence", list_evidence)
    app.router.add_get("/api/identity/{session_id}/evidence/{item_id}", get_evidence)

"""The appointments API for the bank's systems (``docs/identity.md``, "Appointments").

``POST /api/appointments``, ``GET``/``DELETE /api/appointments/{id}`` and
``PUT /api/appointments/{id}/reference`` (the ID photo) are for integration
accounts and admins, each account for the appointments it booked (admins for
all: ``server.appointments.owns``); ``GET /api/appointment`` lets the
customer's page show what its appointment link is for.
"""

from __future__ import annotations

from aiohttp import web

from business.catalogue import Business
from identity import IdentityError, ImageError

from ..appkeys import APPOINTMENTS
from ..appointments import (
    BOOKING_ROLES,
    DEFAULT_VALID_HOURS,
    MAX_VALID_HOURS,
    AppointmentService,
    aware,
    view,
)
from ..db import User
from ..exceptions import BadRequest, NotFound
from ..origin import raw_body
from ..request_helpers import json_body, read_image, require_role


def _service(request: web.Request) -> AppointmentService:
    return request.app[APPOINTMENTS]


async def _booker(request: web.Request) -> User:
    return await require_role(
        request,
        BOOKING_ROLES,
        "only the bank's systems (integration accounts) and admins book appointments",
    )


async def create_appointment(request: web.Request) -> web.Response:
    user = await _booker(request)
    body = await json_body(request)
    business, name = body.get("business"), body.get("display_name")
    external_ref, hours = body.get("external_ref", ""), body.get("valid_hours", DEFAULT_VALID_HOURS)
    if business not in {b.value for b in Business}:
        raise BadRequest(f"business must be one of {', '.join(b.value for b in Business)}")
    if (
        not isinstance(name, str)
        or not 1 <= len(name.strip()) <= 64
        or any(c in name for c in "<>")
        or any(ord(c) < 32 for c in name)
    ):
        raise BadRequest("display_name: 1-64 characters, no control characters or < >")
    if (
        not isinstance(external_ref, str)
        or len(external_ref) > 64
        or any(ord(c) < 32 for c in external_ref)
    ):
        raise BadRequest("external_ref: at most 64 printable characters")
    if (
        isinstance(hours, bool)
        or not isinstance(hours, int | float)
        or not 0 < hours <= MAX_VALID_HOURS
    ):
        raise BadRequest(
            f"valid_hours: a number of hours, more than 0 and at most {MAX_VALID_HOURS}"
        )
    appt, token = await _service(request).create(
        user, business, name.strip(), external_ref, float(hours)
    )
    join_url = f"{request.url.origin()}/?appointment={token}"
    return web.json_response({**view(appt), "token": token, "join_url": join_url}, status=201)


@raw_body
async def put_reference(request: web.Request) -> web.Response:
    user = await _booker(request)
    service = _service(request)
    await service.get(request.match_info["id"], user)  # before the body is read
    data = await read_image(request)
    try:
        reference = await service.set_reference(request.match_info["id"], user, data)
    except IdentityError as exc:
        code = 413 if exc.code == "image_too_large" else 400 if isinstance(exc, ImageError) else 422
        return web.json_response(
            {"error": exc.code, "message": exc.message, "message_zh": exc.message_zh}, status=code
        )
    return web.json_response({"reference": reference})


async def get_appointment(request: web.Request) -> web.Response:
    user = await _booker(request)
    return web.json_response(view(await _service(request).get(request.match_info["id"], user)))


async def cancel_appointment(request: web.Request) -> web.Response:
    user = await _booker(request)
    return web.json_response(view(await _service(request).cancel(request.match_info["id"], user)))


async def customer_appointment(request: web.Request) -> web.Response:
    token = request.headers.get("X-Appointment-Token", "")
    if not 16 <= len(token) <= 256:
        raise NotFound(
            "this appointment link is not valid (used, expired or cancelled)",
            code="appointment_invalid",
        )
    appt = await _service(request).by_token(token)
    return web.json_response(
        {
            "business": appt.business,
            "display_name": appt.display_name,
            "expires_at": aware(appt.expires_at).isoformat(),
            "reference": appt.has_reference,
        }
    )


def setup_appointment_routes(app: web.Application) -> None:
    app.router.add_post("/api/appointments", create_appointment)
    app.router.add_get("/api/appointments/{id}", get_appointment)
    app.router.add_delete("/api/appointments/{id}", cancel_appointment)
    app.router.add_put("/api/appointments/{id}/reference", put_reference)
    app.router.add_get("/api/appointment", customer_appointment)

"""Appointments: the bank's own system books a customer's call and supplies the ID photo.

This module is the service; its HTTP routes are in :mod:`server.routes.appointments`.

A bank usually knows its customer before the call: the branch system or the
mobile app books the remote counter and already holds the customer's ID
photo (from the identity card reader, the public-security photo check, an
earlier account). It books through this API with an ``integration`` account
(``vcounter user add --role integration``) or an admin's bearer token:

``POST /api/appointments``
    JSON ``{"business", "display_name", "external_ref"?, "valid_hours"?}``:
    201 with ``{"id", "token", "join_url", "expires_at", "status", ...}``.
    The token is shown once (only its hash is kept); the bank sends the
    customer ``join_url`` (``/?appointment=<token>``).
``PUT /api/appointments/{id}/reference``
    The ID photo as the raw body (``Content-Type: image/jpeg``...). It is
    checked at once (a face must be usable: the same rules and errors as the
    customer's own upload) and kept as encrypted identity evidence.
``GET /api/appointments/{id}`` / ``DELETE /api/appointments/{id}``
    Its status (``booked | used | expired | cancelled``, and the session it
    became), or cancel it (the photo is deleted at once).

An appointment belongs to the account that booked it (``created_by``): only that
account reads it, puts its photo or cancels it; admins may act on every one.
To any other account it does not exist (404, as for an unknown id), so one
bank system cannot learn of, cancel or replace another's appointments.
``GET /api/appointment``
    The customer's page, with ``X-Appointment-Token``: the business and
    name to show before joining (nothing else).

The customer joins with ``join {..., appointment: <token>}``: the token is
single use, valid until ``expires_at``, and only for the booked business; the
session takes the appointment's name. When the customer has consented to face
verification (at joining or later), the bank's photo becomes the session's
reference (``reference_added`` with source ``appointment``) and the
appointment's copy is deleted: from then on it lives, and is purged, with the
session's recordings. A photo never used is deleted by ``vcounter purge`` once
the appointment expired or its session ended, or at once when it is cancelled.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import secrets
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import update
from sqlmodel import Session as DbSession
from sqlmodel import col, select

from identity import IdentityError
from signaling.broker import Session, hash_token
from signaling.exceptions import SignalingError
from signaling.ids import new_id

from .db import Appointment, CallSession, Database, User, utcnow
from .exceptions import Conflict, NotFound

logger = logging.getLogger(__name__)

#: roles that may book appointments
BOOKING_ROLES = ("integration", "admin")
DEFAULT_VALID_HOURS = 72
MAX_VALID_HOURS = 30 * 24
#: evidence owners of appointments (sessions' ids are 16 characters: no clash)
_OWNER_PREFIX = "appt_"


def evidence_owner(appointment_id: str) -> str:
    """Where an appointment's ID photo waits in the evidence store."""
    return f"{_OWNER_PREFIX}{appointment_id}"


def appointment_of_owner(owner: str) -> str | None:
    return owner[len(_OWNER_PREFIX) :] if owner.startswith(_OWNER_PREFIX) else None


def aware(value: datetime) -> datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def owns(user: User, appt: Appointment) -> bool:
    """Whether ``user`` may see and change ``appt``: the account that booked it, or an admin."""
    return user.role == "admin" or (user.id is not None and appt.created_by == user.id)


def status(appt: Appointment, now: datetime | None = None) -> str:
    now = now or utcnow()
    if appt.cancelled_at is not None:
        return "cancelled"
    if appt.used_at is not None:
        return "used"
    if aware(appt.expires_at) <= now:
        return "expired"
    return "booked"


def view(appt: Appointment) -> dict[str, Any]:
    """What the bank's system sees (never the token)."""
    return {
        "id": appt.id,
        "business": appt.business,
        "display_name": appt.display_name,
        "external_ref": appt.external_ref,
        "status": status(appt),
        "created_at": aware(appt.created_at).isoformat(),
        "expires_at": aware(appt.expires_at).isoformat(),
        "reference": appt.has_reference,
        "session_id": appt.session_id,
        "used_at": aware(appt.used_at).isoformat() if appt.used_at else None,
    }


class AppointmentService:
    def __init__(self, db: Database, broker: Any, identity: Any | None = None) -> None:
        self.db = db
        self.broker = broker
        #: the IdentityService, or None when face checks are off (appointments then carry no photo)
        self.identity = identity
        if identity is not None:
            identity.reference_provider = self.adopt

    # -- the bank's side -------------------------------------------------------------

    async def create(
        self,
        user: User,
        business: str,
        display_name: str,
        external_ref: str = "",
        valid_hours: float = DEFAULT_VALID_HOURS,
    ) -> tuple[Appointment, str]:
        token = secrets.token_urlsafe(32)
        now = utcnow()
        appt = Appointment(
            id=new_id(9),
            token_hash=hash_token(token),
            business=business,
            display_name=display_name,
            external_ref=external_ref,
            created_by=user.id or 0,
            created_at=now,
            expires_at=now + timedelta(hours=valid_hours),
        )

        def insert(s: DbSession) -> Appointment:
            s.add(appt)
            return appt

        await self.db.run(insert)
        logger.info("appointment %s booked by %s for %s", appt.id, user.username, business)
        return appt, token

    async def get(self, appointment_id: str, user: User) -> Appointment:
        """The appointment if ``user`` booked it or is an admin; :class:`NotFound` otherwise."""
        appt = await self.db.run(lambda s: s.get(Appointment, appointment_id))
        if appt is None or not owns(user, appt):
            raise NotFound("no such appointment")
        return appt

    async def set_reference(self, appointment_id: str, user: User, data: bytes) -> dict[str, Any]:
        """Check and keep the ID photo (as the type its header says, not what the upload claimed)."""
        if self.identity is None:
            raise NotFound("face checks are switched off on this server: no ID photo can be kept")
        appt = await self.get(appointment_id, user)
        if status(appt) != "booked":
            raise Conflict(
                f"this appointment is {status(appt)}: its photo cannot change",
                code="appointment_closed",
            )
        checked = await self.identity.check_reference(
            data
        )  # IdentityError for a photo that cannot serve
        owner = evidence_owner(appt.id)
        evidence = self.identity.evidence

        def replace() -> Any:
            evidence.delete_session(owner)
            return evidence.put(
                owner,
                "reference_image",
                data,
                content_type=checked["content_type"],
                meta={"source": "appointment", "strategy": checked["strategy"]},
            )

        item = await asyncio.to_thread(replace)

        def mark(s: DbSession) -> None:
            row = s.get(Appointment, appt.id)
            if row is not None:
                row.has_reference = True
                s.add(row)

        await self.db.run(mark)
        return {"strategy": checked["strategy"], "sha256": item.sha256, "size": item.size}

    async def cancel(self, appointment_id: str, user: User) -> Appointment:
        appt = await self.get(appointment_id, user)
        if status(appt) == "used":
            raise Conflict(
                "this appointment was already used: the session holds its photo now",
                code="appointment_closed",
            )

        def mark(s: DbSession) -> Appointment:
            row = s.get(Appointment, appointment_id)
            assert row is not None
            if row.cancelled_at is None:
                row.cancelled_at = utcnow()
                s.add(row)
            return row

        appt = await self.db.run(mark)
        if self.identity is not None:
            await asyncio.to_thread(self.identity.evidence.delete_session, evidence_owner(appt.id))
        logger.info("appointment %s cancelled", appt.id)
        return appt

    # -- the customer's side ------------------------------------------------------------

    async def by_token(self, token: str) -> Appointment:
        """A bookable appointment, or :class:`NotFound` (unknown, used, expired, cancelled alike)."""
        digest = hash_token(token)
        appt = await self.db.run(
            lambda s: s.exec(select(Appointment).where(Appointment.token_hash == digest)).first()
        )
        if (
            appt is None
            or not hmac.compare_digest(appt.token_hash, digest)
            or status(appt) != "booked"
        ):
            raise NotFound(
                "this appointment link is not valid (used, expired or cancelled)",
                code="appointment_invalid",
            )
        return appt

    async def claim(self, token: str, business: str) -> Appointment:
        """Use the appointment for a join, once: raises :class:`SignalingError` when it cannot be."""
        try:
            appt = await self.by_token(token)
        except NotFound as exc:
            raise SignalingError(exc.message, code="appointment_invalid") from None
        if appt.business != business:
            raise SignalingError(
                f"this appointment is for {appt.business}, not {business}",
                code="appointment_invalid",
            )
        now = utcnow()

        def take(s: DbSession) -> int:
            # one statement, so that two nodes cannot both take it
            result = s.exec(
                update(Appointment)
                .where(
                    col(Appointment.id) == appt.id,
                    col(Appointment.used_at).is_(None),
                    col(Appointment.cancelled_at).is_(None),
                    col(Appointment.expires_at) > now,
                )
                .values(used_at=now)
            )
            return int(result.rowcount or 0)

        if await self.db.run(take) != 1:
            raise SignalingError(
                "this appointment link is not valid (used, expired or cancelled)",
                code="appointment_invalid",
            )
        appt.used_at = now
        return appt

    async def joined(self, appt: Appointment, session: Session) -> None:
        """The claimed appointment became ``session``: note it, and bring its photo when allowed."""
        session.appointment_id = appt.id

        def link(s: DbSession) -> None:
            row = s.get(Appointment, appt.id)
            if row is not None:
                row.session_id = session.id
                s.add(row)

        await self.db.run(link)
        await self.broker.log_event(
            session.id,
            "appointment",
            id=appt.id,
            external_ref=appt.external_ref,
            reference=appt.has_reference,
        )
        if appt.has_reference and session.face_consent and self.identity is not None:
            task = asyncio.ensure_future(self.adopt(session))
            task.add_done_callback(_log_failure)

    async def adopt(self, session: Session) -> None:
        """Make the appointment's ID photo the session's reference (needs the face consent)."""
        appointment_id = getattr(session, "appointment_id", None)
        if not appointment_id or self.identity is None or not session.face_consent:
            return
        owner = evidence_owner(appointment_id)
        evidence = self.identity.evidence
        items = await asyncio.to_thread(evidence.list, owner, "reference_image")
        if not items:
            return
        item, data = await asyncio.to_thread(evidence.get, owner, items[-1].id)
        try:
            await self.identity.adopt_reference(session, data, item.content_type)
        except (IdentityError, SignalingError) as exc:
            code = getattr(exc, "code", exc.__class__.__name__)
            logger.info(
                "session %s: the appointment's photo could not be used (%s)", session.id, code
            )
            await self.broker.log_event(
                session.id, "reference_failed", source="appointment", reason=code
            )
            return
        # the session's copy is the evidence now: it lives and is purged with the recordings
        await asyncio.to_thread(evidence.delete_session, owner)


def _log_failure(task: asyncio.Future[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        logger.error("appointment photo could not be adopted", exc_info=task.exception())


# -- purge ---------------------------------------------------------------------------------


def evidence_due(
    s: DbSession, appointment_id: str, now: datetime, ended_states: tuple[str, ...]
) -> str | None:
    """Why an appointment's waiting photo is to be deleted now, or None to keep it."""
    appt = s.get(Appointment, appointment_id)
    if appt is None:
        return None
    if appt.cancelled_at is not None:
        return "appointment cancelled"
    if appt.used_at is None:
        return (
            f"appointment expired {aware(appt.expires_at).date()}"
            if aware(appt.expires_at) <= now
            else None
        )
    call = s.get(CallSession, appt.session_id) if appt.session_id else None
    if call is None or call.state in ended_states:
        return "appointment used; the customer never consented to face verification"
    return None

"""Appointments: the bank's system books the call and supplies the ID photo (server/appointments.py).

Real server, real SQLite, real face workers and real photos: the bank's photo
of the man in d13 becomes the session's reference and verifies him on the
live call; bad photos, strangers' tokens, reuse, the wrong business,
cancellation and expiry each get a clear answer, and a photo never used is
purged.
"""

from __future__ import annotations

import asyncio
import hashlib
from datetime import timedelta

import aiohttp
import pytest

from server.appkeys import APPOINTMENTS, CONFIG, IDENTITY
from server.appointments import evidence_owner
from server.auth import add_user
from server.db import Appointment, utcnow
from server.retention import purge
from signaling.contrib.headless import ProtocolError

from .helpers import PASSWORD, eventually, login, session_events, shared_data, wait_event

#: a photo of someone else (Joe Biden) that a second bank system would put in
OTHER_FACE = "faces/face_recognition/examples/biden.jpg"


class Bank:
    """The bank's own system, through the appointments API."""

    def __init__(self, counter, token: str | None) -> None:
        self.url = counter.url
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}

    async def call(self, method: str, path: str, **kw) -> tuple[int, dict]:
        headers = {**self.headers, **kw.pop("headers", {})}
        async with (
            aiohttp.ClientSession() as http,
            http.request(method, f"{self.url}{path}", headers=headers, **kw) as r,
        ):
            return r.status, await r.json()

    async def book(self, business: str = "account_opening", name: str = "王五", **extra) -> dict:
        status, body = await self.call(
            "POST", "/api/appointments", json={"business": business, "display_name": name, **extra}
        )
        assert status == 201, body
        return body

    async def photo(
        self, appointment_id: str, data: bytes, content_type: str = "image/jpeg"
    ) -> tuple[int, dict]:
        return await self.call(
            "PUT",
            f"/api/appointments/{appointment_id}/reference",
            data=data,
            headers={"Content-Type": content_type},
        )


async def _lookup(counter, token: str) -> tuple[int, dict]:
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"{counter.url}/api/appointment", headers={"X-Appointment-Token": token}) as r,
    ):
        return r.status, await r.json()


async def test_the_banks_photo_verifies_the_customer_on_the_call(
    make_counter, face_clip, audio_clip, same_person_photo, video_clip
):
    counter = await make_counter(face_clip, audio_clip, identity=True)
    # only the bank's systems and admins book
    status, body = await Bank(counter, None).call("POST", "/api/appointments", json={})
    assert status == 401
    status, body = await Bank(counter, await login(counter, "alice")).call(
        "POST", "/api/appointments", json={"business": "account_opening", "display_name": "x"}
    )
    assert status == 403 and body["error"] == "forbidden"
    bank = Bank(counter, await login(counter, "integration"))
    for bad in (
        {"business": "mortgage", "display_name": "王五"},
        {"business": "account_opening"},
        {"business": "account_opening", "display_name": "<script>"},
        {"business": "account_opening", "display_name": "王五", "valid_hours": 10_000},
    ):
        status, body = await bank.call("POST", "/api/appointments", json=bad)
        assert status == 400, (bad, body)

    booked = await bank.book(external_ref="CRM-20261123-0042")
    assert booked["status"] == "booked" and booked["reference"] is False
    assert booked["join_url"].endswith(f"/?appointment={booked['token']}")
    # bad photos: clear errors, nothing kept
    assert (await bank.photo(booked["id"], b"not an image"))[0] == 400
    status, body = await bank.photo(
        booked["id"], shared_data("faces/dlib_multi/dogs.jpg").read_bytes()
    )
    assert status == 422 and body["error"] == "no_face", body
    assert (await bank.photo("no-such-appointment", same_person_photo))[0] == 404
    status, body = await bank.photo(booked["id"], same_person_photo)
    assert status == 200 and len(body["reference"]["sha256"]) == 64, body

    # the customer's page learns the business and name from the token, and nothing from a wrong one
    status, body = await _lookup(counter, booked["token"])
    assert status == 200 and body == {
        "business": "account_opening",
        "display_name": "王五",
        "expires_at": booked["expires_at"],
        "reference": True,
    }
    assert (await _lookup(counter, "x" * 43))[0] == 404

    # the wrong business is refused and does not use the appointment up
    wrong = counter.participant("wrong")
    with pytest.raises(ProtocolError, match="appointment_invalid"):
        await wrong.join("loan_signing", "王五", face_consent=True, appointment=booked["token"])

    customer = counter.participant("customer")
    joined = await customer.join(
        "account_opening", "typed name", face_consent=True, appointment=booked["token"]
    )
    sid = joined["session_id"]
    session = counter.broker.session(sid)
    assert session.display_name == "王五" and session.appointment_id == booked["id"]
    added = await wait_event(counter, sid, {"reference_added", "reference_failed"})
    assert added.kind == "reference_added" and added.data["source"] == "appointment", added.data
    evidence = counter.app[IDENTITY].evidence
    assert [i.kind for i in evidence.list(sid)] == ["reference_image", "reference_embedding"]
    assert evidence.list(evidence_owner(booked["id"])) == [], "the session's copy is the only one"
    [appointment_event] = [e for e in await session_events(counter, sid) if e.kind == "appointment"]
    assert appointment_event.data == {
        "id": booked["id"],
        "external_ref": "CRM-20261123-0042",
        "reference": True,
    }

    status, body = await bank.call("GET", f"/api/appointments/{booked['id']}")
    assert (
        status == 200
        and body["status"] == "used"
        and body["session_id"] == sid
        and "token" not in body
    )
    # single use
    again = counter.participant("again")
    with pytest.raises(ProtocolError, match="appointment_invalid"):
        await again.join("account_opening", "王五", appointment=booked["token"])
    assert (await _lookup(counter, booked["token"]))[0] == 404
    assert (await bank.call("DELETE", f"/api/appointments/{booked['id']}"))[0] == 409

    # the call: verified against the bank's photo without anyone uploading anything
    agent = await counter.agent("alice", video=video_clip)
    await agent.accept_next()
    await customer.wait_for("call_started")
    verified = await wait_event(
        counter,
        sid,
        {"identity_verified", "identity_rejected", "identity_inconclusive"},
        timeout=45,
    )
    assert verified.kind == "identity_verified", verified.data
    panel = await agent.wait_for(
        "identity",
        timeout=10,
        where=lambda d: (d["state"].get("reference") or {}).get("source") == "appointment",
    )
    assert panel["state"]["reference"]["item"]
    await agent.hangup()
    await customer.wait_for("call_ended")


async def test_consent_later_cancel_expiry_and_purge(
    make_counter, face_clip, audio_clip, same_person_photo
):
    counter = await make_counter(face_clip, audio_clip, identity=True)
    bank = Bank(counter, await login(counter, "admin"))  # an admin may book too
    evidence = counter.app[IDENTITY].evidence

    # no face consent at joining: the photo waits; consent given later brings it in
    later = await bank.book("loan_signing", "赵六")
    assert (await bank.photo(later["id"], same_person_photo))[0] == 200
    customer = counter.participant("customer")
    joined = await customer.join(
        "loan_signing", "赵六", face_consent=False, appointment=later["token"]
    )
    sid = joined["session_id"]
    await asyncio.sleep(0.5)  # time for a wrong adoption of the photo to show
    assert not [e for e in await session_events(counter, sid) if e.kind.startswith("reference_")]
    assert evidence.list(sid) == [] and len(evidence.list(evidence_owner(later["id"]))) == 1
    await customer.send({"type": "face_consent", "accepted": True})
    added = await wait_event(counter, sid, {"reference_added", "reference_failed"})
    assert added.kind == "reference_added" and added.data["source"] == "appointment"
    assert evidence.list(evidence_owner(later["id"])) == []
    identity = counter.app[IDENTITY]
    assert identity.state(sid).reference is not None

    # withdrawn, then given again: the photo adopted before is used again (the appointment's
    # copy is gone: the session's own evidence carries it), not stored a second time
    await customer.send({"type": "face_consent", "accepted": False})
    await eventually(lambda: identity.state(sid).reference is None)
    await customer.send({"type": "face_consent", "accepted": True})
    again = await wait_event(counter, sid, {"reference_in_use", "reference_failed"})
    assert again.kind == "reference_in_use" and again.data["restored"] is True
    assert again.data["sha256"] == added.data["sha256"] and again.data["source"] == "appointment"
    assert identity.state(sid).reference is not None
    assert len(evidence.list(sid, "reference_image")) == 1

    # cancelled: its photo goes at once, its link stops working
    cancelled = await bank.book("wealth_product", "钱七")
    assert (await bank.photo(cancelled["id"], same_person_photo))[0] == 200
    status, body = await bank.call("DELETE", f"/api/appointments/{cancelled['id']}")
    assert status == 200 and body["status"] == "cancelled"
    assert evidence.list(evidence_owner(cancelled["id"])) == []
    status, body = await bank.photo(cancelled["id"], same_person_photo)
    assert status == 409 and body["error"] == "appointment_closed"
    late = counter.participant("late")
    with pytest.raises(ProtocolError, match="appointment_invalid"):
        await late.join("wealth_product", "钱七", appointment=cancelled["token"])

    # expired and never used: the link stops working; purge deletes the photo, and only that
    expired = await bank.book("account_opening", "孙八", valid_hours=1)
    kept = await bank.book("account_opening", "周九")
    for appt in (expired, kept):
        assert (await bank.photo(appt["id"], same_person_photo))[0] == 200

    def expire(s):
        row = s.get(Appointment, expired["id"])
        row.expires_at = utcnow() - timedelta(minutes=1)
        s.add(row)

    await counter.db.run(expire)
    assert (await _lookup(counter, expired["token"]))[0] == 404
    config = counter.app[CONFIG]
    with counter.db.session() as s:
        report = purge(
            s, config.recordings_dir, evidence=evidence, orphan_days=config.identity_orphan_days
        )
    gone = {p.session_id: p.reason for p in report.evidence}
    assert list(gone) == [evidence_owner(expired["id"])], gone
    assert "expired" in gone[evidence_owner(expired["id"])]
    assert evidence.list(evidence_owner(expired["id"])) == []
    assert len(evidence.list(evidence_owner(kept["id"]))) == 1
    assert len(evidence.list(sid)) == 2, "a live session's evidence is not touched"


async def test_without_face_checks_appointments_carry_no_photo(make_counter, same_person_photo):
    counter = await make_counter()  # identity off
    assert counter.app.get(IDENTITY) is None and counter.app[APPOINTMENTS] is not None
    bank = Bank(counter, await login(counter, "integration"))
    booked = await bank.book("loan_signing", "吴十")
    status, body = await bank.photo(booked["id"], same_person_photo)
    assert status == 404 and "switched off" in body["message"]
    customer = counter.participant("customer", media=False)
    joined = await customer.join("loan_signing", "typed", appointment=booked["token"])
    assert counter.broker.session(joined["session_id"]).display_name == "吴十"


async def test_an_integration_account_reaches_only_the_appointments_it_booked(
    make_counter, same_person_photo
):
    counter = await make_counter(identity=True, identity_workers=1)
    with counter.db.session() as s:
        add_user(s, role="integration", username="other-bank", password=PASSWORD)
        s.commit()
    ours = Bank(counter, await login(counter, "integration"))
    theirs = Bank(counter, await login(counter, "other-bank"))
    admin = Bank(counter, await login(counter, "admin"))
    booked = await ours.book(external_ref="CRM-1")
    assert (await ours.photo(booked["id"], same_person_photo))[0] == 200
    path = f"/api/appointments/{booked['id']}"

    # to another bank system it does not exist: it can neither read, replace nor cancel it
    status, body = await theirs.call("GET", path)
    assert (status, body["error"]) == (404, "not_found")
    status, body = await theirs.photo(booked["id"], shared_data(OTHER_FACE).read_bytes())
    assert (status, body["error"]) == (404, "not_found")
    status, body = await theirs.call("DELETE", path)
    assert (status, body["error"]) == (404, "not_found")
    assert (await _lookup(counter, booked["token"]))[0] == 200  # the customer's link still works
    evidence = counter.app[IDENTITY].evidence
    [photo] = evidence.list(evidence_owner(booked["id"]))
    assert photo.sha256 == hashlib.sha256(same_person_photo).hexdigest()

    # the account that booked it, and admins, still do
    status, body = await ours.call("GET", path)
    assert status == 200 and body["status"] == "booked" and body["external_ref"] == "CRM-1"
    status, body = await admin.call("GET", path)
    assert status == 200 and body["reference"] is True
    status, body = await admin.call("DELETE", path)
    assert status == 200 and body["status"] == "cancelled"

"""The auditor workbench's API (``docs/audit-api.md``): search, replay, verify, verdicts.

Only auditors and admins get here; every search, view, replay (once per viewing,
whatever its byte ranges), verification and verdict is written to the
hash-chained access log, whose head this node seals periodically
(:class:`server.access_log.HeadSealer`, started with these routes). Recordings
stream decrypted with HTTP Range support: only the 64 KiB chunks a range
touches are decrypted (and, from an S3-compatible store, fetched, with ranged
GETs). Any node serves any recording its store reaches, whichever node
recorded it. A recording is shown and verified as the one asked for: its
manifest's ids and the hash the database kept must be its own.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeVar

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sqlmodel import Session as DbSession
from sqlmodel import col, func, select

from recorder import EncryptedFile, read_data_key, verify
from recorder.exceptions import RecorderError, StorageUnavailable
from recorder.layout import MANIFEST, output_name
from recorder.storage import Storage, read_all
from recorder.verify import binding_problems

from .. import access_log
from ..appkeys import CLUSTER, CONFIG, DB, FLOWS, KEYS, RECORDINGS, REPLAYS
from ..cluster import recording_home
from ..db import CallSession, Recording, SessionEvent, User, Verdict, utcnow
from ..exceptions import BadRequest, NotFound, ServerError
from ..request_helpers import json_body, log_access, require_role

if TYPE_CHECKING:
    from business.flow import Flow

    from ..recording import RecordingService

logger = logging.getLogger(__name__)
_T = TypeVar("_T")

AUDIT_ROLES = ("auditor", "admin")
PARTIES = ("customer", "agent")
#: event kinds that make a session worth an inspector's attention
ANOMALY_EVENTS = {
    "customer_disconnected": "customer_disconnected",
    "agent_lost": "agent_lost",
    "agent_disconnected": "agent_disconnected",
    "session_adopted": "node_lost",
    "media_failed": "media_failed",
    "media_stalled": "media_failed",
    "recording_alert": "recording_alert",
    "face_missing": "face_missing",
    "multiple_faces": "multiple_faces",
    "face_mismatch": "face_mismatch",
    "identity_rejected": "identity_rejected",
    "liveness_failed": "liveness_failed",
    "flow_stopped": "flow_stopped",
    "flow_incomplete": "flow_incomplete",
    "step_refused": "step_refused",
}
#: face-check anomalies an agent's manual verification (``identity_manual``, verified) settles
RESOLVABLE = ("identity_rejected", "liveness_failed", "face_mismatch")
#: how much each anomaly weighs in a session's severity (the rest weigh 2); resolved ones weigh 1
SEVERITY_WEIGHT = {
    "identity_rejected": 3,
    "face_mismatch": 3,
    "liveness_failed": 3,
    "multiple_faces": 3,
    "recording_mismatch": 3,
    "recording_failed": 3,
    "no_recording": 3,
    "session_failed": 3,
    "flow_stopped": 3,
    "customer_disconnected": 1,
    "agent_disconnected": 1,
    "recording_recovered": 1,
}
#: what an auditor ticks off on a call, in the page's order
QC_ITEMS = ("script_complete", "disclosures_read", "customer_confirmed", "signed_on_camera")
#: why a fail verdict failed; ``other`` needs notes saying what
REASON_CODES = (
    "script_incomplete",
    "disclosure_missing",
    "identity_doubt",
    "no_customer_confirmation",
    "signature_off_camera",
    "recording_defect",
    "other",
)
#: the search's ``verdict`` filter: the latest verdict, or none yet
VERDICT_FILTERS = ("none", "pass", "fail")
SORTS = ("newest", "severity")
RECORDING_ID = re.compile(r"^[A-Za-z0-9_-]{8,64}-\d{1,3}$")
STREAM_BLOCK = 256 * 1024
#: a viewing: one user's requests for one recording's party, each less than this many seconds
#: after the previous (players issue many ranges, from any offset): one "replay" entry each
REPLAY_LOG_INTERVAL_S = 300.0
#: longest number in a Range header read as a number (larger ones are beyond any recording)
_RANGE_DIGITS = 18
#: this node's sealer of the access log's head
SEALER: web.AppKey[access_log.HeadSealer] = web.AppKey("access_log_sealer")


class RangeNotSatisfiable(ServerError):
    status = 416
    code = "range_not_satisfiable"


class StoreUnavailable(ServerError):
    """The recordings' object store cannot be reached (the recording itself is safe)."""

    status = 503
    code = "storage_unavailable"


async def require_auditor(request: web.Request) -> User:
    return await require_role(request, AUDIT_ROLES, "only auditors and admins can reach recordings")


class VerdictBody(BaseModel):
    """``POST .../verdict``: the result, the QC items ticked, a fail's reason code, notes."""

    model_config = ConfigDict(extra="forbid", strict=True)

    result: str
    notes: str = Field(default="", max_length=4000)
    items: list[str] = Field(default_factory=list, max_length=len(QC_ITEMS) * 2)
    reason: str | None = None


def _verdict_body(raw: dict[str, Any]) -> VerdictBody:
    """The verdict asked for, or 400: ``unknown_item``, ``unknown_reason``, ``reason_required``
    (a fail without a reason code), ``notes_required`` (a fail for ``other``, or a pass with an
    item left unticked, without notes)."""
    try:
        body = VerdictBody.model_validate(raw)
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(p) for p in error["loc"]) or "body"
        raise BadRequest(f"{where}: {error['msg']}") from None
    if body.result not in ("pass", "fail"):
        raise BadRequest('result must be "pass" or "fail"')
    unknown = [i for i in body.items if i not in QC_ITEMS]
    if unknown:
        raise BadRequest(
            f"unknown QC item {unknown[0][:32]!r}: items are {', '.join(QC_ITEMS)}",
            code="unknown_item",
        )
    if body.reason is not None and body.reason not in REASON_CODES:
        raise BadRequest(
            f"unknown reason code {body.reason[:32]!r}: reasons are {', '.join(REASON_CODES)}",
            code="unknown_reason",
        )
    has_notes = bool(body.notes.strip())
    if body.result == "fail":
        if body.reason is None:
            raise BadRequest("a fail verdict needs a reason code", code="reason_required")
        if body.reason == "other" and not has_notes:
            raise BadRequest(
                'a fail for reason "other" needs notes saying what was wrong',
                code="notes_required",
            )
    else:
        if body.reason is not None:
            raise BadRequest("only a fail verdict has a reason code")
        unticked = [i for i in QC_ITEMS if i not in body.items]
        if unticked and not has_notes:
            raise BadRequest(
                f"a pass with QC items unticked ({', '.join(unticked)}) needs notes saying why",
                code="notes_required",
            )
    return body


def _verdict_items(verdict: Verdict) -> list[str] | None:
    """The QC items ticked with ``verdict``, in :data:`QC_ITEMS` order (None: before QC items)."""
    return None if verdict.items is None else list(json.loads(verdict.items))


def _verdict_view(verdict: Verdict) -> dict[str, Any]:
    return {
        "result": verdict.result,
        "notes": verdict.notes,
        "items": _verdict_items(verdict),
        "reason": verdict.reason,
        "by": verdict.username,
        "at": _iso(verdict.at),
    }


def _iso(value: datetime | None) -> str | None:
    if value is None:
        return None
    return (value if value.tzinfo else value.replace(tzinfo=UTC)).isoformat()


def _parse_date(value: str | None, name: str) -> date | None:
    if not value:
        return None
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise BadRequest(f"{name} must be a date like 2026-11-23") from None


def _parse_instant(value: str | None, name: str) -> datetime | None:
    """An ISO 8601 time with its UTC offset (``2026-11-22T16:00:00Z``, ``...+08:00``)."""
    if not value:
        return None
    try:
        instant = datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        instant = None
    if instant is None or instant.tzinfo is None:
        raise BadRequest(f"{name} must be a time with its offset, like 2026-11-22T16:00:00Z")
    return instant.astimezone(UTC)


def _resolutions(events: list[SessionEvent]) -> dict[str, dict[str, Any]]:
    """The face-check anomalies a later manual verification settled: ``{kind: {by, reason, at}}``.

    An agent's ``identity_manual`` with ``verified`` true resolves each of :data:`RESOLVABLE`
    raised before it; one raised again afterwards is open again, and a later manual verdict of
    not verified reopens them all.
    """
    open_kinds: set[str] = set()
    resolved: dict[str, dict[str, Any]] = {}
    for e in events:
        if e.kind in RESOLVABLE:
            open_kinds.add(e.kind)
            resolved.pop(e.kind, None)
        elif e.kind == "identity_manual":
            if e.payload.get("verified") is True:
                by, reason = e.payload.get("by"), e.payload.get("reason")
                for kind in open_kinds:
                    resolved[kind] = {"by": by, "reason": reason, "at": _iso(e.at)}
                open_kinds.clear()
            else:
                open_kinds.update(resolved)
                resolved.clear()
    return resolved


def _severity(anomalies: list[str], resolved: dict[str, Any]) -> int:
    """Higher is worse: 10 per weight (:data:`SEVERITY_WEIGHT`) of each open anomaly, 1 per
    resolved one, so any open anomaly outweighs every resolved one of the session."""
    return sum(1 if a in resolved else 10 * SEVERITY_WEIGHT.get(a, 2) for a in anomalies)


def _session_summary(
    s: DbSession,
    row: CallSession,
    events: list[SessionEvent],
    recordings: list[Recording],
    verdict: Verdict | None,
) -> dict[str, Any]:
    agent = s.get(User, row.agent_id) if row.agent_id else None
    anomalies = sorted({ANOMALY_EVENTS[e.kind] for e in events if e.kind in ANOMALY_EVENTS})
    if row.state == "failed":
        anomalies.append("session_failed")
    if any(r.state == "failed" for r in recordings):
        anomalies.append("recording_failed")
    if any(r.state == "recovered" for r in recordings):
        anomalies.append("recording_recovered")
    if row.started_at is not None and not recordings:
        anomalies.append("no_recording")
    latest = recordings[-1] if recordings else None
    resolved = _resolutions(events)
    duration = None
    if row.started_at is not None and row.ended_at is not None:
        duration = int((row.ended_at - row.started_at).total_seconds())
    return {
        "id": row.id,
        "business": row.business,
        "state": row.state,
        "end_reason": row.end_reason,
        "customer_name": row.customer_name,
        "agent": {"username": agent.username, "display_name": agent.display_name}
        if agent
        else None,
        "created_at": _iso(row.created_at),
        "started_at": _iso(row.started_at),
        "ended_at": _iso(row.ended_at),
        "duration_s": duration,
        "recording": {"id": latest.id, "state": latest.state, "duration_ms": latest.duration_ms}
        if latest
        else None,
        "anomalies": sorted(set(anomalies)),
        "resolved": resolved,
        "severity": _severity(sorted(set(anomalies)), resolved),
        "verdict": {
            "result": verdict.result,
            "items": _verdict_items(verdict),
            "reason": verdict.reason,
            "by": verdict.username,
            "at": _iso(verdict.at),
        }
        if verdict
        else None,
    }


def _search(s: DbSession, params: dict[str, str]) -> dict[str, Any]:
    query = select(CallSession)
    day_from = _parse_date(params.get("from"), "from")
    day_to = _parse_date(params.get("to"), "to")
    since = _parse_instant(params.get("since"), "since")
    before = _parse_instant(params.get("before"), "before")
    if since:
        query = query.where(CallSession.created_at >= since)
    if before:
        query = query.where(CallSession.created_at < before)
    verdict_filter = params.get("verdict") or None
    if verdict_filter is not None and verdict_filter not in VERDICT_FILTERS:
        raise BadRequest(f"verdict must be one of {', '.join(VERDICT_FILTERS)}")
    sort = params.get("sort") or "newest"
    if sort not in SORTS:
        raise BadRequest(f"sort must be one of {', '.join(SORTS)}")
    if day_from:
        query = query.where(
            CallSession.created_at >= datetime.combine(day_from, datetime.min.time(), UTC)
        )
    if day_to:
        end = datetime.combine(day_to, datetime.min.time(), UTC) + timedelta(days=1)
        query = query.where(CallSession.created_at < end)
    if params.get("business"):
        query = query.where(CallSession.business == params["business"])
    if params.get("outcome"):
        query = query.where(CallSession.state == params["outcome"])
    if params.get("agent"):
        agent = s.exec(select(User).where(User.username == params["agent"])).first()
        query = query.where(CallSession.agent_id == (agent.id if agent else -1))
    if params.get("q"):
        text = params["q"][:64]
        query = query.where(
            col(CallSession.customer_name).contains(text) | col(CallSession.id).contains(text)
        )
    try:
        limit = max(1, min(200, int(params.get("limit", 50))))
        offset = max(0, int(params.get("offset", 0)))
    except ValueError:
        raise BadRequest("limit and offset must be numbers") from None
    rows = s.exec(query.order_by(col(CallSession.created_at).desc())).all()
    ids = [r.id for r in rows]
    events: dict[str, list[SessionEvent]] = {i: [] for i in ids}
    recordings: dict[str, list[Recording]] = {i: [] for i in ids}
    verdicts: dict[str, Verdict] = {}
    if ids:
        for e in s.exec(
            select(SessionEvent)
            .where(
                col(SessionEvent.session_id).in_(ids),
                col(SessionEvent.kind).in_([*ANOMALY_EVENTS, "identity_manual"]),
            )
            .order_by(col(SessionEvent.id))
        ):
            events[e.session_id].append(e)
        for r in s.exec(
            select(Recording).where(col(Recording.session_id).in_(ids)).order_by(col(Recording.leg))
        ):
            recordings[r.session_id].append(r)
        for v in s.exec(
            select(Verdict).where(col(Verdict.session_id).in_(ids)).order_by(col(Verdict.id))
        ):
            verdicts[v.session_id] = v
    summaries = [
        _session_summary(s, r, events[r.id], recordings[r.id], verdicts.get(r.id)) for r in rows
    ]
    if params.get("anomalies") in ("1", "true", "yes"):
        summaries = [x for x in summaries if x["anomalies"]]
    if params.get("anomaly"):
        summaries = [x for x in summaries if params["anomaly"] in x["anomalies"]]
    if verdict_filter == "none":
        summaries = [x for x in summaries if x["verdict"] is None]
    elif verdict_filter is not None:
        summaries = [x for x in summaries if (x["verdict"] or {}).get("result") == verdict_filter]
    if sort == "severity":  # stable: the newest first among equals
        summaries.sort(key=lambda x: x["severity"], reverse=True)
    return {"total": len(summaries), "sessions": summaries[offset : offset + limit]}


async def search_sessions(request: web.Request) -> web.Response:
    """The sessions matching the query; the search (what was asked, never what it found: the
    results hold customers' names) is logged in the same transaction."""
    user = await require_auditor(request)
    params = dict(request.query)
    asked = json.dumps(dict(sorted(params.items())), ensure_ascii=False, separators=(",", ":"))

    def work(s: DbSession) -> dict[str, Any]:
        result = _search(s, params)
        access_log.append(s, user, "search", asked, request.remote or "")
        return result

    result = await request.app[DB].run(work)
    logger.info("audit: %s search %s", user.username, asked)
    return web.json_response(result)


def _parsed(raw: bytes | None) -> tuple[bytes, dict[str, Any]] | None:
    try:
        manifest = json.loads(raw) if raw is not None else None
    except ValueError:
        return None
    return (raw, manifest) if raw is not None and isinstance(manifest, dict) else None


def _stored_manifest(
    service: RecordingService, recording_id: str
) -> tuple[bytes, dict[str, Any]] | None:
    """The recording's manifest as stored, its bytes and parsed (None: not finalised, unreadable
    or unreachable)."""
    try:
        raw = read_all(service.storage(recording_id), MANIFEST)
    except (OSError, RecorderError):
        return None
    return _parsed(raw)


async def _in_thread(fn: Callable[..., _T], *args: Any) -> _T:
    """Blocking storage work off the loop; an unreachable store answers 503."""
    try:
        return await asyncio.get_running_loop().run_in_executor(None, fn, *args)
    except StorageUnavailable as exc:
        logger.error("recording store unreachable: %s", exc)
        raise StoreUnavailable(
            "the recording store cannot be reached now; try again later"
        ) from None


def flow_checklist(events: list[SessionEvent], flow: Flow | None = None) -> dict[str, Any] | None:
    """The business flow's checklist with step times, rebuilt from the timeline (None: no flow).

    Each step's ``title`` (``{"en", "zh"}``) is its own, from ``flow``, the server's flow file of
    that business (None for a step that file no longer has).
    """
    started = next((e for e in events if e.kind == "flow_started"), None)
    if started is None:
        return None
    data = started.payload
    titles: dict[str, dict[str, str]] = {}
    if flow is not None and flow.business == data.get("business"):
        titles = {step.id: step.title.view() for step in flow.steps}
    steps = {
        sid: {
            "id": sid,
            "title": titles.get(sid),
            "kind": None,
            "status": "pending",
            "started_at": None,
            "ended_at": None,
            "started_offset_ms": None,
            "ended_offset_ms": None,
        }
        for sid in data.get("steps", [])
    }
    status, reason = "incomplete", None
    for e in events:
        d = e.payload
        step = steps.get(d.get("step")) if isinstance(d.get("step"), str) else None
        if e.kind == "step_started" and step is not None:
            step.update(
                kind=d.get("kind"),
                status="active",
                started_at=_iso(e.at),
                started_offset_ms=e.offset_ms,
            )
        elif e.kind == "step_completed" and step is not None:
            step.update(status="done", ended_at=_iso(e.at), ended_offset_ms=e.offset_ms)
        elif e.kind == "flow_stopped":
            status, reason = "stopped", d.get("reason")
            if step is not None:
                step.update(status="failed", ended_at=_iso(e.at), ended_offset_ms=e.offset_ms)
        elif e.kind == "flow_completed":
            status = "completed"
        elif e.kind == "flow_incomplete":
            reason = d.get("reason")
    running = status == "incomplete" and not any(e.kind == "flow_incomplete" for e in events)
    return {
        "business": data.get("business"),
        "version": data.get("version"),
        "status": "running" if running else status,
        "reason": reason,
        "steps": list(steps.values()),
    }


async def session_detail(request: web.Request) -> web.Response:
    user = await require_auditor(request)
    session_id = request.match_info["session_id"]
    flows = request.app.get(FLOWS)

    def work(s: DbSession) -> dict[str, Any] | None:
        row = s.get(CallSession, session_id)
        if row is None:
            return None
        flow = flows.flows.get(row.business) if flows is not None else None
        events = s.exec(
            select(SessionEvent)
            .where(SessionEvent.session_id == session_id)
            .order_by(col(SessionEvent.id))
        ).all()
        recordings = s.exec(
            select(Recording).where(Recording.session_id == session_id).order_by(col(Recording.leg))
        ).all()
        verdicts = s.exec(
            select(Verdict).where(Verdict.session_id == session_id).order_by(col(Verdict.id))
        ).all()
        return {
            "session": _session_summary(
                s, row, list(events), list(recordings), verdicts[-1] if verdicts else None
            ),
            "events": [
                {"kind": e.kind, "offset_ms": e.offset_ms, "at": _iso(e.at), "data": e.payload}
                for e in events
            ],
            "flow": flow_checklist(list(events), flow),
            "verdicts": [_verdict_view(v) for v in verdicts],
            "_recordings": list(recordings),
        }

    detail = await request.app[DB].run(work)
    if detail is None:
        raise NotFound(f"no session {session_id[:64]!r}")
    out = []
    for rec in detail.pop("_recordings"):
        stored = await _manifest_anywhere(request, rec.id)
        outputs = []
        timeline: list[dict[str, Any]] = []
        mismatch = None
        if stored is not None:
            raw, manifest = stored
            # another recording's files (copied over this one's) are not this session's: nothing
            # of theirs is shown as this recording's, and the mismatch is said
            found = binding_problems(
                manifest,
                raw,
                recording_id=rec.id,
                session_id=session_id,
                manifest_sha256=rec.manifest_sha256,
            )
            if found:
                mismatch = found[0]
                logger.error("session %s: recording %s: %s", session_id, rec.id, mismatch)
                manifest = {}
            timeline = manifest.get("timeline", {}).get("events", [])
            for o in manifest.get("outputs", []):
                outputs.append(
                    {
                        "party": o["party"],
                        "url": f"/api/audit/recordings/{rec.id}/{o['party']}.webm",
                        "duration_ms": o.get("duration_ms"),
                        "start_ms": o.get("start_ms"),
                    }
                )
        out.append(
            {
                "id": rec.id,
                "leg": rec.leg,
                "state": rec.state,
                "started_at": _iso(rec.started_at),
                "duration_ms": rec.duration_ms,
                "retention_until": _iso(rec.retention_until),
                "legal_hold": rec.legal_hold,
                "problem": mismatch or rec.problem,
                "mismatch": mismatch,
                "outputs": outputs,
                "timeline": timeline,
            }
        )
        if mismatch and "recording_mismatch" not in detail["session"]["anomalies"]:
            detail["session"]["anomalies"] = sorted(
                [*detail["session"]["anomalies"], "recording_mismatch"]
            )
    detail["recordings"] = out
    await log_access(request, user, "view_session", session_id)
    return web.json_response(detail)


async def _manifest_anywhere(
    request: web.Request, recording_id: str
) -> tuple[bytes, dict[str, Any]] | None:
    """The recording's manifest (bytes and parsed) from this node's store, or (recordings on each
    node's own disk) from the node that made it."""
    manifest = await asyncio.to_thread(_stored_manifest, request.app[RECORDINGS], recording_id)
    cluster = request.app.get(CLUSTER)
    if (
        manifest is not None
        or cluster is None
        or not request.app[CONFIG].storage_url.startswith("file:")
    ):
        return manifest
    home = await cluster.recording_node(recording_id)
    if home is None:
        return None
    raw = await cluster.fetch(request, home, f"/api/audit/recordings/{recording_id}/manifest")
    return _parsed(raw)


@recording_home
async def recording_manifest(request: web.Request) -> web.StreamResponse:
    """The recording's signed manifest as stored (what ``vcounter verify`` checks)."""
    user = await require_auditor(request)
    recording_id, storage = await _recording_storage(request)
    manifest = await _in_thread(read_all, storage, MANIFEST)
    await log_access(request, user, "view_manifest", recording_id)
    return web.Response(body=manifest, content_type="application/json")


async def _recording_storage(request: web.Request) -> tuple[str, Storage]:
    """The finalised recording the URL names, and its storage (404 when there is none)."""
    recording_id = request.match_info["recording_id"]
    if not RECORDING_ID.match(recording_id):
        raise NotFound("no such recording")
    storage = await _in_thread(request.app[RECORDINGS].storage, recording_id)
    if not await _in_thread(storage.exists, MANIFEST):
        raise NotFound(f"recording {recording_id} does not exist or is not finalised yet")
    return recording_id, storage


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """``(start, end_inclusive)`` for a single ``bytes=`` range; None for the whole file."""
    if not header:
        return None
    match = re.fullmatch(r"\s*bytes=(\d*)-(\d*)\s*", header)
    if not match or (not match.group(1) and not match.group(2)):
        raise RangeNotSatisfiable("only a single bytes=START-END range is supported")
    first, last = _range_number(match.group(1)), _range_number(match.group(2))
    if first is not None:
        start = first
        end = min(last, size - 1) if last is not None else size - 1
    else:  # suffix range: the last N bytes
        length = last or 0
        if length == 0:
            raise RangeNotSatisfiable("empty suffix range")
        start, end = max(0, size - length), size - 1
    if start >= size or end < start:
        raise RangeNotSatisfiable(f"range {header.strip()} is outside the {size}-byte recording")
    return start, end


def _range_number(digits: str) -> int | None:
    """A Range header's number (None when absent), read without converting thousands of digits:
    one longer than any file size counts as "beyond the end" (past the end: 416 as a start,
    clamped as an end, the whole file as a suffix length)."""
    if not digits:
        return None
    digits = digits.lstrip("0") or "0"
    return int(digits) if len(digits) <= _RANGE_DIGITS else 10**_RANGE_DIGITS


@recording_home
async def stream_recording(request: web.Request) -> web.StreamResponse:
    user = await require_auditor(request)
    recording_id, storage = await _recording_storage(request)
    party = request.match_info["party"]
    if party not in PARTIES:
        raise NotFound("party must be customer or agent")
    name = output_name(party)
    if not await _in_thread(storage.exists, name):
        raise NotFound(f"recording {recording_id} has no {party} media")
    service = request.app[RECORDINGS]
    loop = asyncio.get_running_loop()
    data_key = await _in_thread(read_data_key, storage, service.master)
    encrypted = await _in_thread(lambda: EncryptedFile(storage.open(name), data_key))
    try:
        size = encrypted.size
        try:
            byte_range = parse_range(request.headers.get("Range"), size)
        except RangeNotSatisfiable as exc:
            return web.json_response(
                {"error": exc.code, "message": exc.message},
                status=416,
                headers={"Content-Range": f"bytes */{size}"},
            )
        start, end = byte_range if byte_range else (0, size - 1)
        # whatever the range: a player may start anywhere (Range: bytes=1-, a seek, a resume)
        await _log_replay(request, user, recording_id, party)
        response = web.StreamResponse(status=206 if byte_range else 200)
        response.content_type = "video/webm"
        response.headers["Accept-Ranges"] = "bytes"
        response.headers["Cache-Control"] = "no-store"
        response.content_length = end - start + 1
        if byte_range:
            response.headers["Content-Range"] = f"bytes {start}-{end}/{size}"
        await response.prepare(request)
        position = start
        while position <= end:
            length = min(STREAM_BLOCK, end - position + 1)
            try:
                block = await loop.run_in_executor(None, encrypted.read, position, length)
            except (RecorderError, OSError) as exc:  # headers are sent: all we can do is stop
                logger.error(
                    "recording %s/%s: replay stopped at byte %d: %s",
                    recording_id,
                    party,
                    position,
                    exc,
                )
                raise

            try:
                await response.write(block)
            except ConnectionResetError:  # the viewer closed or seeked: the replay just ends
                logger.debug(
                    "recording %s/%s: viewer left at byte %d of %d-%d",
                    recording_id,
                    party,
                    position,
                    start,
                    end,
                )
                return response
            position += length
        try:
            await response.write_eof()
        except ConnectionResetError:
            logger.debug("recording %s/%s: viewer left at the end", recording_id, party)
        return response
    finally:
        encrypted.close()


async def _log_replay(request: web.Request, user: User, recording_id: str, party: str) -> None:
    """Log the viewing this request is part of, once: its first request, whatever its range.

    A request less than :data:`REPLAY_LOG_INTERVAL_S` after the same user's previous one for the
    same recording and party continues that viewing (the window slides with every request); the
    entry is written before any byte is sent, so a failed write serves nothing.
    """
    replays = request.app[REPLAYS]
    key = (user.id or 0, recording_id, party)
    now = time.monotonic()
    last = replays.get(key)
    replays[key] = now
    if last is not None and now - last < REPLAY_LOG_INTERVAL_S:
        return
    if len(replays) > 10_000:  # forget viewings that are over
        for old in [k for k, at in replays.items() if now - at >= REPLAY_LOG_INTERVAL_S]:
            del replays[old]
    try:
        await log_access(request, user, "replay", f"{recording_id}/{party}")
    except BaseException:
        replays.pop(key, None)  # not logged: the next request of this viewing tries again
        raise


@recording_home
async def verify_recording(request: web.Request) -> web.StreamResponse:
    """Verify the recording as the one the URL names: the database's row for it gives the session
    and the manifest's hash it must have; a recording with no row does not verify."""
    user = await require_auditor(request)
    recording_id, storage = await _recording_storage(request)
    service = request.app[RECORDINGS]
    trusted = service.signing.public_pem()
    row = await request.app[DB].run(lambda s: s.get(Recording, recording_id))
    if row is None:
        result_ok, reason, problems = (
            False,
            f"the database has no recording {recording_id}: its files are not one it made",
            [],
        )
    else:
        result = await _in_thread(
            lambda: verify(
                storage,
                service.master,
                trusted,
                recording_id=row.id,
                session_id=row.session_id,
                manifest_sha256=row.manifest_sha256,
            )
        )
        result_ok, reason, problems = result.ok, result.reason, list(result.problems)
        if result.ok and row.manifest_sha256 is None:
            reason += " (the database holds no manifest hash for it to be checked against)"
    await log_access(request, user, "verify", recording_id)
    return web.json_response(
        {
            "ok": result_ok,
            "reason": reason,
            "problems": problems or ([reason] if not result_ok else []),
            "checked_at": utcnow().isoformat(),
        }
    )


async def post_verdict(request: web.Request) -> web.Response:
    user = await require_auditor(request)
    session_id = request.match_info["session_id"]
    body = _verdict_body(await json_body(request))
    result = body.result
    items = [i for i in QC_ITEMS if i in body.items]

    def work(s: DbSession) -> Verdict | None:
        if s.get(CallSession, session_id) is None:
            return None
        verdict = Verdict(
            session_id=session_id,
            user_id=user.id or 0,
            username=user.username,
            result=result,
            notes=body.notes,
            items=json.dumps(items),
            reason=body.reason,
        )
        s.add(verdict)
        access_log.append(s, user, f"verdict_{result}", session_id, request.remote or "")
        s.flush()
        return verdict

    verdict = await request.app[DB].run(work)
    if verdict is None:
        raise NotFound(f"no session {session_id[:64]!r}")
    return web.json_response(_verdict_view(verdict), status=201)


async def admin_access_log(request: web.Request) -> web.Response:
    await require_role(request, ("admin",), "only admins can read the access log")
    try:
        limit = max(1, min(1000, int(request.query.get("limit", 100))))
    except ValueError:
        raise BadRequest("limit must be a number") from None

    trusted = [request.app[KEYS][1].public_pem()]

    def work(s: DbSession) -> dict[str, Any]:
        check = access_log.verify(s, trusted)
        rows = s.exec(
            select(access_log.AccessLog).order_by(col(access_log.AccessLog.seq).desc()).limit(limit)
        )
        return {
            "chain_ok": check.ok,
            "chain": check.reason,
            "problems": list(check.problems),
            "notes": list(check.notes),
            "sealed": {
                "seq": check.sealed_seq,
                "at": _iso(check.sealed_at),
                "seals": check.seals,
                "unsealed_entries": check.unsealed,
            },
            "total": s.exec(select(func.count()).select_from(access_log.AccessLog)).one(),
            "entries": [
                {
                    "seq": e.seq,
                    "at": _iso(e.at),
                    "username": e.username,
                    "role": e.role,
                    "action": e.action,
                    "target": e.target,
                    "remote": e.remote,
                    "hash": e.hash,
                }
                for e in rows
            ],
        }

    return web.json_response(await request.app[DB].run(work))


async def access_log_sealing_ctx(app: web.Application) -> AsyncIterator[None]:
    """This node seals the access log's head every ``SEAL_INTERVAL_S`` (runs after the database
    and the keys are up, as the routes are set up after the other resources)."""
    sealer = access_log.HeadSealer(app[DB], app[KEYS][1], app[CONFIG].node_id)
    app[SEALER] = sealer
    sealer.start()
    try:
        yield
    finally:
        await sealer.aclose()


def setup_audit_routes(app: web.Application) -> None:
    app.cleanup_ctx.append(access_log_sealing_ctx)
    app.router.add_get("/api/audit/sessions", search_sessions)
    app.router.add_get("/api/audit/sessions/{session_id}", session_detail)
    app.router.add_post("/api/audit/sessions/{session_id}/verdict", post_verdict)
    app.router.add_get("/api/audit/recordings/{recording_id}/verify", verify_recording)
    app.router.add_get("/api/audit/recordings/{recording_id}/manifest", recording_manifest)
    app.router.add_get("/api/audit/recordings/{recording_id}/{party}.webm", stream_recording)
    app.router.add_get("/api/admin/access-log", admin_access_log)

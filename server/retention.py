"""Retention: recordings live until ``retention_until`` unless a legal hold keeps them.

``retention_until`` is set when recording starts, from the business type's
policy (``Config.retention_days``). :func:`purge` deletes only recordings that
are past it and not held -- every object of the recording, in whichever store
holds it (the data directory, or the S3-compatible store any node or the
command line reaches, with the local spool) -- and writes each deletion to the
access log.

A session's identity evidence (reference photos, embeddings, snapshots) goes
with its recordings: :func:`purge` deletes it once every recording of the
session is purged and none is held. Evidence of a session that never got a
recording (an ID photo uploaded, then the queue abandoned) is deleted
``Config.identity_orphan_days`` after the session ended. An ID photo the bank
supplied with an appointment (server/appointments.py) and never used goes once
the appointment expired or its session ended. Each deletion is
written to the access log (``purge_evidence``, target the session id).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlmodel import Session, col, select

from recorder.evidence import EvidenceStore
from recorder.object_store import LocalObjectStore, ObjectStore

from . import access_log
from .appointments import appointment_of_owner
from .appointments import evidence_due as appointment_evidence_due
from .db import CallSession, Recording, User, utcnow

logger = logging.getLogger(__name__)

#: who the access log names for deletions made by the purge job itself
SYSTEM_USER = User(
    id=None,
    username="retention-job",
    display_name="retention job",
    role="system",
    password_hash="!",
)


@dataclass(frozen=True)
class Purged:
    recording_id: str
    session_id: str
    retention_until: datetime
    size_bytes: int | None


@dataclass(frozen=True)
class PurgedEvidence:
    """A session's identity evidence, deleted (or, in a dry run, to be deleted)."""

    session_id: str
    items: int
    reason: str


@dataclass(frozen=True)
class PurgeReport:
    recordings: list[Purged]
    evidence: list[PurgedEvidence]


#: session states after which no more evidence can arrive
_ENDED = ("ended", "abandoned", "failed")
#: session ids per database query
_CHUNK = 500


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def due(s: Session, now: datetime | None = None) -> list[Recording]:
    now = now or utcnow()
    rows = s.exec(
        select(Recording).where(
            col(Recording.retention_until).is_not(None),
            Recording.legal_hold == False,  # noqa: E712 - SQL expression
            col(Recording.state).in_(("finalized", "recovered", "failed")),
        )
    ).all()
    return [r for r in rows if r.retention_until is not None and _aware(r.retention_until) < now]


def purge(
    s: Session,
    recordings: Path | ObjectStore,
    *,
    evidence: EvidenceStore | None = None,
    orphan_days: int = 1,
    now: datetime | None = None,
    dry_run: bool = False,
    actor: User = SYSTEM_USER,
) -> PurgeReport:
    """Delete expired, non-held recordings (every stored object), then the identity evidence
    that outlived them or never had one (see the module docstring); log each deletion.

    ``recordings`` is the recordings directory or the :class:`~recorder.object_store.ObjectStore`
    holding them (blocking: call this in a thread)."""
    store = LocalObjectStore(recordings, recordings) if isinstance(recordings, Path) else recordings
    now = now or utcnow()
    done = []
    for row in due(s, now):
        assert row.retention_until is not None
        item = Purged(row.id, row.session_id, _aware(row.retention_until), row.size_bytes)
        done.append(item)
        if dry_run:
            continue
        store.delete_recording(row.id)
        row.state = "purged"
        row.problem = None
        s.add(row)
        access_log.append(s, actor, "purge", row.id)
        s.commit()
        logger.info("purged recording %s (retention ended %s)", row.id, item.retention_until.date())
    if evidence is None:
        return PurgeReport(done, [])
    purging = {p.recording_id for p in done}
    gone = []
    for session_id, reason in _evidence_due(s, evidence.sessions(), now, orphan_days, purging):
        if dry_run:
            gone.append(PurgedEvidence(session_id, evidence.count(session_id), reason))
            continue
        items = evidence.delete_session(session_id)
        gone.append(PurgedEvidence(session_id, items, reason))
        access_log.append(s, actor, "purge_evidence", session_id)
        s.commit()
        logger.info(
            "purged identity evidence of session %s (%d items): %s", session_id, items, reason
        )
    return PurgeReport(done, gone)


def _evidence_due(
    s: Session, session_ids: list[str], now: datetime, orphan_days: int, purging: set[str]
) -> Iterator[tuple[str, str]]:
    """(session id, reason) of the sessions whose evidence is to go; ``purging``: recordings
    this run purges (a dry run has not marked them yet)."""
    orphan_before = now - timedelta(days=orphan_days)
    for start in range(0, len(session_ids), _CHUNK):
        chunk = session_ids[start : start + _CHUNK]
        recordings: dict[str, list[Recording]] = defaultdict(list)
        for row in s.exec(select(Recording).where(col(Recording.session_id).in_(chunk))):
            recordings[row.session_id].append(row)
        calls = {c.id: c for c in s.exec(select(CallSession).where(col(CallSession.id).in_(chunk)))}
        for session_id in chunk:
            appointment = appointment_of_owner(session_id)
            if appointment is not None:
                reason = appointment_evidence_due(s, appointment, now, _ENDED)
                if reason is not None:
                    yield session_id, reason
                continue
            rows = recordings.get(session_id)
            if rows:
                if not any(r.legal_hold for r in rows) and all(
                    r.state == "purged" or r.id in purging for r in rows
                ):
                    yield session_id, "its recordings were purged"
                continue
            call = calls.get(session_id)
            if call is None:
                logger.warning(
                    "identity evidence of session %s: no such session in the database; kept",
                    session_id,
                )
                continue
            if call.state in _ENDED:
                ended = _aware(call.ended_at or call.created_at)
                if ended < orphan_before:
                    yield session_id, f"no recording; session ended {ended.date()}"


def set_hold(s: Session, target: str, hold: bool, actor: User) -> list[str]:
    """Put (or lift) a legal hold on a recording or on every recording of a session."""
    rows = s.exec(
        select(Recording).where((Recording.id == target) | (Recording.session_id == target))
    ).all()
    for row in rows:
        row.legal_hold = hold
        s.add(row)
        access_log.append(s, actor, "legal_hold" if hold else "release_hold", row.id)
    return [r.id for r in rows]

"""Retention: recordings live until ``retention_until`` unless a legal hold keeps them.

``retention_until`` is set when recording starts, from the business type's
policy (``Config.retention_days``). :func:`purge` deletes only recordings that
are past it and not held, and writes each deletion to the access log.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from sqlmodel import Session, col, select

from . import access_log
from .db import Recording, User, utcnow

logger = logging.getLogger(__name__)

#: who the access log names for deletions made by the purge job itself
SYSTEM_USER = User(id=None, username="retention-job", display_name="retention job", role="system",
                   password_hash="!")


@dataclass(frozen=True)
class Purged:
    recording_id: str
    session_id: str
    retention_until: datetime
    size_bytes: int | None


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def due(s: Session, now: datetime | None = None) -> list[Recording]:
    now = now or utcnow()
    rows = s.exec(select(Recording).where(
        col(Recording.retention_until).is_not(None),
        Recording.legal_hold == False,  # noqa: E712 - SQL expression
        col(Recording.state).in_(("finalized", "recovered", "failed")),
    )).all()
    return [r for r in rows if r.retention_until is not None and _aware(r.retention_until) < now]


def purge(s: Session, recordings_dir: Path, *, now: datetime | None = None, dry_run: bool = False,
          actor: User = SYSTEM_USER) -> list[Purged]:
    """Delete expired, non-held recordings (files and derived data); log each one."""
    done = []
    for row in due(s, now):
        assert row.retention_until is not None
        item = Purged(row.id, row.session_id, _aware(row.retention_until), row.size_bytes)
        done.append(item)
        if dry_run:
            continue
        directory = recordings_dir / row.id
        if directory.is_dir():
            shutil.rmtree(directory)
        row.state = "purged"
        row.problem = None
        s.add(row)
        access_log.append(s, actor, "purge", row.id)
        s.commit()
        logger.info("purged recording %s (retention ended %s)", row.id, item.retention_until.date())
    return done


def set_hold(s: Session, target: str, hold: bool, actor: User) -> list[str]:
    """Put (or lift) a legal hold on a recording or on every recording of a session."""
    rows = s.exec(select(Recording).where((Recording.id == target) | (Recording.session_id == target))).all()
    for row in rows:
        row.legal_hold = hold
        s.add(row)
        access_log.append(s, actor, "legal_hold" if hold else "release_hold", row.id)
    return [r.id for r in rows]

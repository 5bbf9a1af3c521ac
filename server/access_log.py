"""The append-only, hash-chained access log of recordings.

Each entry's hash is SHA-256 over the previous entry's hash and the entry's
canonical JSON, so deleting, reordering or editing any entry breaks the chain
from that point (``vcounter verify-log``). SQLite triggers refuse UPDATE and
DELETE; entries are written by the single database thread, so the chain is
linear on one node (PostgreSQL deployments take a table lock when appending).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import UTC

from sqlmodel import Session, select

from .db import AccessLog, User, utcnow

GENESIS = "0" * 64


def _canonical(entry: AccessLog) -> bytes:
    at = entry.at if entry.at.tzinfo else entry.at.replace(tzinfo=UTC)
    return json.dumps({
        "seq": entry.seq, "at": at.isoformat(timespec="microseconds"), "user_id": entry.user_id,
        "username": entry.username, "role": entry.role, "action": entry.action,
        "target": entry.target, "remote": entry.remote,
    }, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _digest(prev_hash: str, entry: AccessLog) -> str:
    return hashlib.sha256(prev_hash.encode() + b"\n" + _canonical(entry)).hexdigest()


def append(s: Session, user: User, action: str, target: str, remote: str = "") -> AccessLog:
    last = s.exec(select(AccessLog).order_by(AccessLog.seq.desc()).limit(1)).first()  # type: ignore[union-attr]
    prev = last.hash if last else GENESIS
    entry = AccessLog(seq=(last.seq or 0) + 1 if last else 1, at=utcnow(), user_id=user.id,
                      username=user.username, role=user.role, action=action, target=target[:128],
                      remote=(remote or "")[:64], prev_hash=prev, hash="")
    entry.hash = _digest(prev, entry)
    s.add(entry)
    s.flush()
    return entry


@dataclass(frozen=True)
class LogCheck:
    ok: bool
    entries: int
    reason: str


def verify(s: Session) -> LogCheck:
    prev = GENESIS
    expected_seq = 1
    count = 0
    for entry in s.exec(select(AccessLog).order_by(AccessLog.seq)):
        count += 1
        if entry.seq != expected_seq:
            return LogCheck(False, count, f"entry {expected_seq} is missing (next is {entry.seq})")
        if entry.prev_hash != prev:
            return LogCheck(False, count, f"entry {entry.seq}: does not follow entry {entry.seq - 1}")
        if _digest(prev, entry) != entry.hash:
            return LogCheck(False, count, f"entry {entry.seq}: content altered (hash mismatch)")
        prev = entry.hash
        expected_seq += 1
    return LogCheck(True, count, f"{count} entries, chain intact")

"""The append-only, hash-chained access log of recordings.

Each entry's hash is SHA-256 over the previous entry's hash and the entry's
canonical JSON, so deleting, reordering or editing any entry breaks the chain
from that point (``vcounter verify-log``). Triggers refuse UPDATE and DELETE
(and TRUNCATE on PostgreSQL) on both engines.

:func:`append` reads the last entry and inserts the next, so appends must not
interleave, also between nodes (processes) sharing one database. Before
reading, it takes a lock that the transaction holds until it commits:

- PostgreSQL: ``pg_advisory_xact_lock`` on a fixed key. An advisory lock needs
  no privilege on the table (``LOCK TABLE ... EXCLUSIVE`` needs UPDATE or
  DELETE, which an append-only role need not have); the read after it, in
  PostgreSQL's default READ COMMITTED isolation, sees the entry that the
  previous holder committed.
- SQLite: the database file's write lock (``BEGIN IMMEDIATE``, unless the
  transaction already writes and so holds it), which serialises every process
  writing that file; within a process, the single database thread does.

Two appends therefore never read the same last entry; should anything bypass
the lock, ``seq`` is the primary key, so a second entry with the same number
fails instead of forking the chain.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from dataclasses import dataclass
from datetime import UTC
from typing import cast

from sqlalchemy import text
from sqlmodel import Session, col, select

from .db import AccessLog, User, advisory_lock_key, utcnow

GENESIS = "0" * 64

#: the PostgreSQL advisory lock serialising appends on every node
APPEND_LOCK_KEY = advisory_lock_key("access-log-append")


def _canonical(entry: AccessLog) -> bytes:
    at = entry.at if entry.at.tzinfo else entry.at.replace(tzinfo=UTC)
    return json.dumps(
        {
            "seq": entry.seq,
            "at": at.isoformat(timespec="microseconds"),
            "user_id": entry.user_id,
            "username": entry.username,
            "role": entry.role,
            "action": entry.action,
            "target": entry.target,
            "remote": entry.remote,
        },
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    ).encode()


def _digest(prev_hash: str, entry: AccessLog) -> str:
    return hashlib.sha256(prev_hash.encode() + b"\n" + _canonical(entry)).hexdigest()


def _lock_chain(s: Session) -> None:
    """Hold, until ``s`` commits, the lock that makes this transaction the only appender."""
    conn = s.connection()
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": APPEND_LOCK_KEY})
    elif conn.dialect.name == "sqlite":
        # SQLAlchemy types the DBAPI connection as Any | None: a live sqlite one is sqlite3's
        driver = cast(sqlite3.Connection, conn.connection.driver_connection)
        if not driver.in_transaction:
            # the driver opens its own transaction at the first write: open a writing one now
            conn.exec_driver_sql("BEGIN IMMEDIATE")


def append(s: Session, user: User, action: str, target: str, remote: str = "") -> AccessLog:
    """Add the next entry of the chain (in ``s``'s transaction, which holds the append lock)."""
    _lock_chain(s)
    last = s.exec(select(AccessLog).order_by(col(AccessLog.seq).desc()).limit(1)).first()
    prev = last.hash if last else GENESIS
    entry = AccessLog(
        seq=(last.seq or 0) + 1 if last else 1,
        at=utcnow(),
        user_id=user.id,
        username=user.username,
        role=user.role,
        action=action,
        target=target[:128],
        remote=(remote or "")[:64],
        prev_hash=prev,
        hash="",
    )
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
    for entry in s.exec(select(AccessLog).order_by(col(AccessLog.seq))):
        count += 1
        if entry.seq != expected_seq:
            return LogCheck(False, count, f"entry {expected_seq} is missing (next is {entry.seq})")
        if entry.prev_hash != prev:
            return LogCheck(
                False, count, f"entry {entry.seq}: does not follow entry {entry.seq - 1}"
            )
        if _digest(prev, entry) != entry.hash:
            return LogCheck(False, count, f"entry {entry.seq}: content altered (hash mismatch)")
        prev = entry.hash
        expected_seq += 1
    return LogCheck(True, count, f"{count} entries, chain intact")

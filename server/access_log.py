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

The head is anchored
====================

A hash chain alone proves nothing about its end: deleting the last entries
(or rewriting the whole log and recomputing every hash, which needs no secret)
leaves a valid chain. So the head is **sealed**: :func:`seal` writes an
:class:`~server.db.AccessLogSeal` naming the latest entry's number and hash,
signed with the server's signing key (the one that signs manifests), and
chained to the previous seal. Every node seals every :data:`SEAL_INTERVAL_S`
while the head moved (:class:`HeadSealer`), and an export seals at once. A seal
is taken under the append lock, so it never interleaves with appends or with
another node's seal, and seals are append-only like the log.

:func:`verify` then also checks the seals (their chain, and their signatures
against the trusted keys) and that the log still holds every sealed entry
unchanged: entries deleted after a seal, or a rewritten log, fail with a reason
naming the seal. Entries appended after the latest seal are reported as not yet
sealed (at most :data:`SEAL_INTERVAL_S` of them on a running counter).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, cast

from sqlalchemy import text
from sqlmodel import Session, col, select

from recorder.exceptions import RecorderError
from recorder.keys import SigningKey, fingerprint

from .db import AccessLog, AccessLogSeal, User, advisory_lock_key, utcnow

if TYPE_CHECKING:
    from .db import Database

logger = logging.getLogger(__name__)

GENESIS = "0" * 64
SEAL_FORMAT = "vcounter-access-log-seal/1"
#: seconds between two seals of the head by a node (when the head moved)
SEAL_INTERVAL_S = 60.0

#: the PostgreSQL advisory lock serialising appends on every node
APPEND_LOCK_KEY = advisory_lock_key("access-log-append")


def _canonical(entry: AccessLog) -> bytes:
    at = _utc(entry.at)
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


def _utc(at: datetime) -> datetime:
    return at if at.tzinfo else at.replace(tzinfo=UTC)


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


# -- the anchored head ---------------------------------------------------------------------


def seal_body(seal: AccessLogSeal) -> bytes:
    """The canonical bytes a seal's signature covers (and its ``hash`` digests)."""
    return json.dumps(
        {
            "format": SEAL_FORMAT,
            "id": seal.id,
            "at": _utc(seal.at).isoformat(timespec="microseconds"),
            "seq": seal.seq,
            "head_hash": seal.head_hash,
            "prev_hash": seal.prev_hash,
            "node_id": seal.node_id,
            "reason": seal.reason,
            "key_fingerprint": seal.key_fingerprint,
        },
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    ).encode()


def seal(
    s: Session, signing: SigningKey, *, node_id: str = "", reason: str = "periodic"
) -> AccessLogSeal | None:
    """Seal the head of the log (in ``s``'s transaction, under the append lock).

    None when there is nothing new to seal: the log is empty, or the latest seal already
    covers its head. A head below the latest seal (entries were deleted) is never sealed:
    that would only hide the loss, which :func:`verify` reports.
    """
    _lock_chain(s)
    head = s.exec(select(AccessLog).order_by(col(AccessLog.seq).desc()).limit(1)).first()
    latest = s.exec(select(AccessLogSeal).order_by(col(AccessLogSeal.id).desc()).limit(1)).first()
    if head is None or head.seq is None:
        if latest is not None:
            logger.error("access log: empty, but seal %d covers entry %d", latest.id, latest.seq)
        return None
    if latest is not None and head.seq <= latest.seq:
        if head.seq < latest.seq:
            logger.error(
                "access log: its head is entry %d, but seal %d covers entry %d: entries were "
                "deleted; not sealing",
                head.seq,
                latest.id,
                latest.seq,
            )
        return None
    entry = AccessLogSeal(
        id=(latest.id or 0) + 1 if latest else 1,
        at=utcnow(),
        seq=head.seq,
        head_hash=head.hash,
        prev_hash=latest.hash if latest else GENESIS,
        node_id=node_id[:128],
        reason=reason[:16],
        key_fingerprint=signing.fingerprint(),
        hash="",
        signature="",
    )
    body = seal_body(entry)
    entry.hash = hashlib.sha256(body).hexdigest()
    entry.signature = signing.sign(body).hex()
    s.add(entry)
    s.flush()
    return entry


class HeadSealer:
    """Seals the log's head every ``interval_s`` while it moves (one per node, started by the
    audit routes): the nodes' seals serialise on the append lock, and a node finding the head
    already sealed by another writes nothing."""

    def __init__(
        self,
        db: Database,
        signing: SigningKey,
        node_id: str,
        *,
        interval_s: float = SEAL_INTERVAL_S,
    ) -> None:
        self.db = db
        self.signing = signing
        self.node_id = node_id
        self.interval_s = interval_s
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False

    def start(self) -> None:
        if self._closed or self._tasks:
            return
        task = asyncio.get_running_loop().create_task(self._run(), name="access-log-sealer")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def seal_now(self, reason: str = "periodic") -> AccessLogSeal | None:
        return await self.db.run(
            lambda s: seal(s, self.signing, node_id=self.node_id, reason=reason)
        )

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                made = await self.seal_now()
            except Exception:  # the database is away: the next round seals what is new
                logger.exception("node %s: the access log's head could not be sealed", self.node_id)
            else:
                if made is not None:
                    logger.debug("access log sealed at entry %d (seal %d)", made.seq, made.id)

    async def aclose(self) -> None:
        """Stop sealing (idempotent)."""
        self._closed = True
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)


@dataclass(frozen=True)
class LogCheck:
    ok: bool
    entries: int
    #: the first problem, or a summary of what was checked
    reason: str
    problems: tuple[str, ...] = ()
    #: the latest seal: the entry it anchors, and when (None: the log was never sealed)
    sealed_seq: int | None = None
    sealed_at: datetime | None = None
    seals: int = 0
    #: whether the seals' signatures were checked against a trusted key
    signatures_checked: bool = False
    notes: tuple[str, ...] = field(default=())

    @property
    def unsealed(self) -> int:
        """Entries after the latest seal: what a deletion could still remove unnoticed."""
        return max(0, self.entries - (self.sealed_seq or 0))


def _check_seals(seals: list[AccessLogSeal]) -> list[str]:
    """The seals' own chain: numbered without a gap, each following the previous, unchanged."""
    prev, prev_seq = GENESIS, 0
    for expected_id, item in enumerate(seals, start=1):
        if item.id != expected_id:
            return [f"seal {expected_id} is missing (next is {item.id}): seals were deleted"]
        if item.prev_hash != prev:
            return [f"seal {item.id}: does not follow seal {expected_id - 1}"]
        if hashlib.sha256(seal_body(item)).hexdigest() != item.hash:
            return [f"seal {item.id}: content altered (hash mismatch)"]
        if item.seq < prev_seq:
            return [f"seal {item.id}: anchors entry {item.seq}, before the previous seal's"]
        prev, prev_seq = item.hash, item.seq
    return []


def _check_signatures(seals: list[AccessLogSeal], trusted: dict[str, bytes]) -> list[str]:
    """Every seal signed by one of the trusted keys (fingerprint -> PEM)."""
    for item in seals:
        pem = trusted.get(item.key_fingerprint)
        if pem is None:
            return [
                f"seal {item.id}: signed by a key that is not trusted ({item.key_fingerprint[:16]})"
            ]
        if not _signed(pem, item.signature, seal_body(item)):
            return [f"seal {item.id}: signature invalid (the seal was forged or altered)"]
    return []


def _signed(pem: bytes, signature_hex: str, body: bytes) -> bool:
    try:
        return SigningKey.verify(pem, bytes.fromhex(signature_hex), body)
    except (ValueError, RecorderError):
        return False


def verify(s: Session, trusted_keys: Sequence[bytes] | None = None) -> LogCheck:
    """Check the chain, the seals and that every sealed entry is still there unchanged.

    ``trusted_keys``: PEM public keys a seal's signer must be one of (the server's signing key);
    None checks the seals' chain and hashes but not who signed them (a note says so).
    """
    trusted: dict[str, bytes] | None = None
    if trusted_keys is not None:
        trusted = {fingerprint(pem): pem for pem in trusted_keys}
    seals = list(s.exec(select(AccessLogSeal).order_by(col(AccessLogSeal.id))))
    problems = _check_seals(seals)
    if trusted is not None and not problems:
        problems = _check_signatures(seals, trusted)
    #: entry number -> (seal id, the hash it sealed)
    sealed = {item.seq: (item.id, item.head_hash) for item in seals}
    latest = seals[-1] if seals else None
    notes: list[str] = []
    if trusted is None:
        notes.append("seal signatures not checked (no trusted key given)")

    prev = GENESIS
    expected_seq = 1
    count = 0
    chain_problem: str | None = None
    for entry in s.exec(select(AccessLog).order_by(col(AccessLog.seq))):
        count += 1
        if entry.seq != expected_seq:
            chain_problem = f"entry {expected_seq} is missing (next is {entry.seq})"
            break
        if entry.prev_hash != prev:
            chain_problem = f"entry {entry.seq}: does not follow entry {entry.seq - 1}"
            break
        if _digest(prev, entry) != entry.hash:
            chain_problem = f"entry {entry.seq}: content altered (hash mismatch)"
            break
        seal_of = sealed.get(entry.seq)
        if seal_of is not None and seal_of[1] != entry.hash:
            problems.append(
                f"entry {entry.seq}: not the entry seal {seal_of[0]} sealed (the log was rewritten)"
            )
        prev = entry.hash
        expected_seq += 1
    if chain_problem is not None:
        problems.insert(0, chain_problem)
    elif latest is not None and latest.seq > count:
        lost = (
            f"entry {latest.seq} is"
            if latest.seq == count + 1
            else f"entries {count + 1}-{latest.seq} are"
        )
        problems.insert(
            0,
            f"{lost} missing: seal {latest.id} ({_utc(latest.at).isoformat(timespec='seconds')}) "
            f"anchors entry {latest.seq}, the log ends at entry {count} (its tail was deleted)",
        )
    if problems:
        reason = problems[0]
    elif latest is None:
        reason = f"{count} entries, chain intact"
        if count:
            notes.append("the head is not sealed yet: deleting the last entries would go unnoticed")
    else:
        unsealed = count - latest.seq
        reason = (
            f"{count} entries, chain intact, sealed up to entry {latest.seq} "
            f"({len(seals)} seals{', signatures checked' if trusted is not None else ''})"
            + (f"; {unsealed} newer not sealed yet" if unsealed else "")
        )
    return LogCheck(
        not problems,
        count,
        reason,
        problems=tuple(problems),
        sealed_seq=latest.seq if latest else None,
        sealed_at=_utc(latest.at) if latest else None,
        seals=len(seals),
        signatures_checked=trusted is not None,
        notes=tuple(notes),
    )

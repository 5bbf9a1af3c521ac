"""Database: sqlmodel tables and a small async facade that runs queries off the event loop.

SQLite by default (WAL, one writer thread); ``DATABASE_URL`` selects another
engine: PostgreSQL (``postgresql://user:pw@host/db``, through psycopg) for
several nodes. The tables here say what the schema is; ``server/migrations``
says how a database got there, and :meth:`Database.upgrade` brings one to the
head revision under a lock that several nodes starting at once can share.
:meth:`Database.create_all` is for throwaway test databases.

The session event timeline, the access log and the verdicts are append-only:
the application never updates or deletes them, and triggers refuse any attempt
on both engines (UPDATE and DELETE, and on PostgreSQL TRUNCATE).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any, TypeVar

from sqlalchemy import event as sa_event
from sqlalchemy import false as sa_false
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlmodel import Field, Session, SQLModel, create_engine, select

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: "integration": the bank's own systems (appointments API), no page access
ROLES = ("agent", "auditor", "admin", "integration")
SESSION_STATES = ("queued", "offered", "active", "ended", "abandoned", "failed")


def utcnow() -> datetime:
    return datetime.now(UTC)


class User(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    username: str = Field(index=True, unique=True, max_length=64)
    display_name: str = Field(max_length=128)
    role: str = Field(max_length=16)
    #: comma-separated business types (agents only)
    skills: str = ""
    password_hash: str = Field(max_length=256)
    disabled: bool = False
    created_at: datetime = Field(default_factory=utcnow)

    @property
    def skill_set(self) -> frozenset[str]:
        return frozenset(s for s in self.skills.split(",") if s)


class AuthToken(SQLModel, table=True):
    #: SHA-256 of the bearer token: the token itself is never stored
    token_hash: str = Field(primary_key=True, max_length=64)
    user_id: int = Field(foreign_key="user.id", index=True)
    created_at: datetime = Field(default_factory=utcnow)
    expires_at: datetime


class CallSession(SQLModel, table=True):
    id: str = Field(primary_key=True, max_length=64)
    business: str = Field(index=True, max_length=32)
    state: str = Field(index=True, max_length=16)
    end_reason: str | None = Field(default=None, max_length=64)
    customer_name: str = Field(max_length=128)
    agent_id: int | None = Field(default=None, foreign_key="user.id", index=True)
    node_id: str = Field(default="", max_length=128)
    #: SHA-256 of the customer's rejoin token (the token itself is never stored): any node can let
    #: the customer back in, also after the node holding the session died
    token_hash: str = Field(default="", max_length=64, sa_column_kwargs={"server_default": ""})
    #: the customer consents to face verification (kept for the node that may take the session over)
    face_consent: bool = Field(default=False, sa_column_kwargs={"server_default": sa_false()})
    created_at: datetime = Field(default_factory=utcnow, index=True)
    started_at: datetime | None = None
    ended_at: datetime | None = None


class Recording(SQLModel, table=True):
    """One call leg's dual recording (a session whose agent dropped has several legs)."""

    id: str = Field(primary_key=True, max_length=80)  # "<session id>-<leg>"
    session_id: str = Field(foreign_key="callsession.id", index=True, max_length=64)
    leg: int = 1
    #: recording | finalized | recovered | failed | purged
    state: str = Field(default="recording", index=True, max_length=16)
    started_at: datetime = Field(default_factory=utcnow)
    ended_at: datetime | None = None
    duration_ms: int | None = None
    size_bytes: int | None = None
    manifest_sha256: str | None = Field(default=None, max_length=64)
    problem: str | None = Field(default=None, max_length=512)
    retention_until: datetime | None = Field(default=None, index=True)
    legal_hold: bool = False
    #: the node recording (or finalising) it, and until when, by the database's clock: renewed
    #: while it records; a lapsed lease lets another node take the recording over and finalise it
    lease_node: str | None = Field(default=None, max_length=128)
    lease_until: datetime | None = Field(default=None, index=True)


class Verdict(SQLModel, table=True):
    """A quality inspector's verdict on a session; never edited, a later one supersedes."""

    id: int | None = Field(default=None, primary_key=True)
    session_id: str = Field(foreign_key="callsession.id", index=True, max_length=64)
    user_id: int = Field(foreign_key="user.id")
    username: str = Field(max_length=64)
    result: str = Field(max_length=8)  # pass | fail
    notes: str = Field(default="", max_length=4000)
    at: datetime = Field(default_factory=utcnow)
    #: JSON list of the QC items the auditor ticked (null: a verdict from before QC items)
    items: str | None = Field(default=None, max_length=256)
    #: why a fail failed (``server/routes/audit.py`` REASON_CODES); null for a pass
    reason: str | None = Field(default=None, max_length=32)


class AccessLog(SQLModel, table=True):
    """Append-only, hash-chained log of every access to recordings (replay, download, export...)."""

    seq: int | None = Field(default=None, primary_key=True)
    at: datetime = Field(default_factory=utcnow)
    user_id: int | None = None
    username: str = Field(max_length=64)
    role: str = Field(max_length=16)
    action: str = Field(max_length=32)
    target: str = Field(max_length=128)
    remote: str = Field(default="", max_length=64)
    prev_hash: str = Field(max_length=64)
    hash: str = Field(max_length=64)


class AccessLogSeal(SQLModel, table=True):
    """Append-only, signed anchors of the access log's head (``server/access_log.py``): each names
    the latest entry when it was made and that entry's hash, and follows the previous seal, so
    entries deleted from the log's tail after a seal are found."""

    #: 1, 2, ... (given under the append lock, like ``AccessLog.seq``)
    id: int | None = Field(default=None, primary_key=True)
    at: datetime = Field(default_factory=utcnow)
    #: the access log entry sealed (the head then), and its hash
    seq: int
    head_hash: str = Field(max_length=64)
    #: the previous seal's ``hash`` (64 zeros for the first)
    prev_hash: str = Field(max_length=64)
    #: SHA-256 of the signed body (:func:`server.access_log.seal_body`)
    hash: str = Field(max_length=64)
    node_id: str = Field(default="", max_length=128)
    #: periodic | export
    reason: str = Field(max_length=16)
    #: the signing key (:func:`recorder.keys.fingerprint`) and its Ed25519 signature (hex)
    key_fingerprint: str = Field(max_length=64)
    signature: str = Field(max_length=128)


class Participant(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    session_id: str = Field(foreign_key="callsession.id", index=True, max_length=64)
    role: str = Field(max_length=16)  # customer | agent
    user_id: int | None = Field(default=None, foreign_key="user.id")
    display_name: str = Field(max_length=128)
    joined_at: datetime = Field(default_factory=utcnow)


class SessionEvent(SQLModel, table=True):
    """Append-only timeline of a session; ``offset_ms`` counts from the session's creation."""

    id: int | None = Field(default=None, primary_key=True)
    session_id: str = Field(foreign_key="callsession.id", index=True, max_length=64)
    at: datetime = Field(default_factory=utcnow)
    offset_ms: int
    kind: str = Field(max_length=64)
    data: str = "{}"

    @property
    def payload(self) -> dict[str, Any]:
        return json.loads(self.data)


class BusinessOutcome(SQLModel, table=True):
    """What a completed flow produced: an account opened, a loan contract signed, a product order."""

    id: int | None = Field(default=None, primary_key=True)
    session_id: str = Field(foreign_key="callsession.id", index=True, max_length=64)
    #: account | loan | order
    type: str = Field(max_length=16)
    #: the account number, contract number or order number
    reference: str = Field(index=True, unique=True, max_length=40)
    created_at: datetime = Field(default_factory=utcnow)
    data: str = "{}"

    @property
    def payload(self) -> dict[str, Any]:
        return json.loads(self.data)


class Appointment(SQLModel, table=True):
    """A call the bank's own system booked for a customer (see server/appointments.py).

    The customer joins with the appointment's token (single use); its ID photo,
    if the bank supplied one, is identity evidence held under
    :func:`server.appointments.evidence_owner` until the session adopts it.
    """

    id: str = Field(primary_key=True, max_length=32)
    #: SHA-256 of the customer's token: the token itself is never stored
    token_hash: str = Field(index=True, unique=True, max_length=64)
    business: str = Field(max_length=32)
    display_name: str = Field(max_length=128)
    #: the bank's own reference for the customer or case (opaque to us)
    external_ref: str = Field(default="", max_length=64)
    created_by: int = Field(foreign_key="user.id")
    created_at: datetime = Field(default_factory=utcnow)
    expires_at: datetime = Field(index=True)
    has_reference: bool = False
    used_at: datetime | None = None
    session_id: str | None = Field(default=None, max_length=64)
    cancelled_at: datetime | None = None


class CallbackRequest(SQLModel, table=True):
    """A waiting customer who asked to be called back instead (``server/routes/callbacks.py``):
    the bank's staff list these and phone the customer."""

    id: int | None = Field(default=None, primary_key=True)
    #: the session the customer left the queue from (one request per session)
    session_id: str = Field(index=True, unique=True, max_length=64)
    business: str = Field(max_length=32)
    display_name: str = Field(max_length=128)
    #: digits, an optional leading ``+``: 7 to 15 digits
    phone: str = Field(max_length=16)
    created_at: datetime = Field(default_factory=utcnow, index=True)


class FlowRunRecord(SQLModel, table=True):
    """A session's business flow in progress (``server/flow_service.py``): where it is and what each
    step recorded, so that the node that takes the session over resumes it at the same step."""

    session_id: str = Field(primary_key=True, max_length=64)
    business: str = Field(max_length=32)
    version: int
    #: JSON: the run's steps, position, answers' levels, receipt and outcome (no biometric data)
    data: str = "{}"
    updated_at: datetime = Field(default_factory=utcnow)


class Node(SQLModel, table=True):
    """A running server process of the counter, and its lease on its id (``server/node_registry.py``).

    ``heartbeat_at`` is the database's own clock at the node's last heartbeat: a node whose
    heartbeat is older than the lease is dead, and its sessions are closed by a live one.
    """

    id: str = Field(primary_key=True, max_length=128)
    host: str = Field(max_length=255)
    pid: int
    started_at: datetime
    heartbeat_at: datetime = Field(index=True)
    #: the base URL other nodes and operators reach it at (empty when unknown)
    address: str = Field(default="", max_length=255)
    #: set while the node shuts down: it takes no new calls, the ones it holds go on
    draining: bool = False
    #: JSON: calls, sessions, agents, loop lag... at the last heartbeat
    load: str = "{}"

    @property
    def load_info(self) -> dict[str, Any]:
        return json.loads(self.load)


#: tables whose rows are never updated or deleted (triggers refuse it)
APPEND_ONLY_TABLES = ("sessionevent", "accesslog", "verdict")


def append_only_ddl(dialect: str, tables: Iterable[str]) -> list[str]:
    """Idempotent statements making ``tables`` refuse UPDATE and DELETE (and TRUNCATE on PostgreSQL).

    Migrations call this with the tables of their own revision: changing what it
    emits changes what old revisions create, so change it only with a revision
    that brings existing databases along. Both engines raise an integrity error
    whose message is ``<table> is append-only``.
    """
    if dialect == "sqlite":
        return [
            f"CREATE TRIGGER IF NOT EXISTS {table}_no_{op} BEFORE {op.upper()} ON {table} "
            f"BEGIN SELECT RAISE(ABORT, '{table} is append-only'); END"
            for table in tables
            for op in ("update", "delete")
        ]
    if dialect == "postgresql":
        statements = [
            "CREATE OR REPLACE FUNCTION vcounter_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$ "
            "BEGIN RAISE EXCEPTION '% is append-only', TG_TABLE_NAME "
            "USING ERRCODE = 'restrict_violation'; END $$"
        ]
        for table in tables:
            for op, level in (("update", "ROW"), ("delete", "ROW"), ("truncate", "STATEMENT")):
                statements += [
                    f"DROP TRIGGER IF EXISTS {table}_no_{op} ON {table}",
                    f"CREATE TRIGGER {table}_no_{op} BEFORE {op.upper()} ON {table} "
                    f"FOR EACH {level} EXECUTE FUNCTION vcounter_refuse_change()",
                ]
        return statements
    raise ValueError(
        f"append-only tables are not implemented for {dialect} (SQLite and PostgreSQL are)"
    )


def normalise_url(url: str) -> str:
    """``postgresql://`` and ``postgres://`` (as hosting providers write them) go through psycopg 3."""
    parsed = make_url(url)
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
        return parsed.render_as_string(hide_password=False)
    return url


def advisory_lock_key(name: str) -> int:
    """A fixed signed 64-bit PostgreSQL advisory lock key for ``name`` (the same on every node)."""
    return int.from_bytes(
        hashlib.sha256(f"vcounter:{name}".encode()).digest()[:8], "big", signed=True
    )


class Database:
    """Engine plus a single worker thread: queries never block the event loop."""

    def __init__(self, url: str) -> None:
        self.url = normalise_url(url)
        is_sqlite = self.url.startswith("sqlite")
        self.engine = create_engine(
            self.url, connect_args={"check_same_thread": False, "timeout": 30} if is_sqlite else {}
        )
        if is_sqlite:

            @sa_event.listens_for(self.engine, "connect")
            def _pragmas(dbapi_conn: Any, _record: Any) -> None:
                cur = dbapi_conn.cursor()
                cur.execute("PRAGMA journal_mode=WAL")
                cur.execute("PRAGMA synchronous=NORMAL")
                cur.execute("PRAGMA foreign_keys=ON")
                cur.close()

        elif self.engine.dialect.name == "postgresql":

            @sa_event.listens_for(self.engine, "connect")
            def _utc(dbapi_conn: Any, _record: Any) -> None:
                # timestamps come back in UTC whatever the server's TimeZone (a bank's is local),
                # also with a sqlmodel whose datetime type passes the driver's values through:
                # the access log's hashes cover their ISO form, offset included
                dbapi_conn.execute("SET TIME ZONE 'UTC'")
                dbapi_conn.commit()

        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="db")
        self._closed = False
        #: database operations that failed (for the metrics)
        self.failures = 0

    @property
    def display_url(self) -> str:
        """The URL without its password, for messages and logs."""
        return self.engine.url.render_as_string(hide_password=True)

    async def call(self, fn: Callable[[], T]) -> T:
        """Run ``fn()`` in the database thread (work that manages its own connections)."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn)

    def session(self) -> Session:
        return Session(self.engine, expire_on_commit=False)

    async def run(self, fn: Callable[[Session], T]) -> T:
        """Run ``fn(session)`` in the database thread and commit."""

        def work() -> T:
            try:
                with self.session() as s:
                    result = fn(s)
                    s.commit()
                    return result
            except SQLAlchemyError:
                self.failures += 1
                raise

        return await asyncio.get_running_loop().run_in_executor(self._executor, work)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._executor.shutdown(wait=True)
        self.engine.dispose()


def get_user(s: Session, username: str) -> User | None:
    return s.exec(select(User).where(User.username == username)).first()

"""Schema migrations (Alembic), configured in code: no ``alembic.ini`` at run time.

:func:`upgrade` brings a database to the head revision of ``versions/`` under a
lock, so that several nodes starting at once on one database all come up:

- PostgreSQL: ``pg_advisory_lock`` on a fixed key (:data:`MIGRATION_LOCK_KEY`),
  held by the migration connection; the upgrade itself is one transaction
  (PostgreSQL's DDL is transactional), so a failed one leaves nothing behind.
- SQLite: the whole upgrade is one ``BEGIN IMMEDIATE`` transaction, which holds
  the database file's write lock; foreign keys are checked before it commits.

The node that gets the lock first migrates; the others wait, then find the
schema at the head and do nothing.

A database made by the release before migrations (``create_all``, no
``alembic_version`` table) is recognised by its tables, recorded at revision
0001 and brought up from there; one with only some of those tables is refused,
never re-created. See ``README`` beside this file for making a new revision.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config as AlembicConfig
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util.exc import CommandError
from sqlalchemy import Connection, Engine, create_engine, inspect, text
from sqlalchemy import event as sa_event
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool
from sqlmodel import SQLModel

from ..db import APPEND_ONLY_TABLES, Database, advisory_lock_key, append_only_ddl, normalise_url

logger = logging.getLogger(__name__)

HERE = Path(__file__).resolve().parent

#: the PostgreSQL advisory lock every node takes before migrating
MIGRATION_LOCK_KEY = advisory_lock_key("schema-migration")

#: the revision a database made by the release before migrations is at
PREVIOUS_RELEASE_REVISION = "0001"
#: the tables that release's ``create_all`` made, all of which must be there to recognise it
PREVIOUS_RELEASE_TABLES = frozenset(
    {
        "user",
        "authtoken",
        "callsession",
        "recording",
        "verdict",
        "accesslog",
        "participant",
        "sessionevent",
        "businessoutcome",
        "appointment",
    }
)
#: the tables it made append-only (on SQLite only: recognising it adds the triggers on PostgreSQL)
PREVIOUS_RELEASE_APPEND_ONLY = ("sessionevent", "accesslog", "verdict")


class SchemaError(Exception):
    """The database's schema cannot be brought to (or is not at) this release's head revision."""


class SchemaOutOfDate(SchemaError):
    """The schema is not at the head revision and upgrading it automatically is switched off."""

    def __init__(self, status: SchemaStatus) -> None:
        self.status = status
        super().__init__(status.describe())


@dataclass(frozen=True)
class SchemaStatus:
    #: the database's revision (None: no ``alembic_version``, an empty or a pre-migration database)
    current: str | None
    #: the newest revision of this release
    head: str
    #: tables of a pre-migration release are there (``current`` is None): upgrading adopts them
    previous_release: bool = False
    #: ``current`` is None or a revision of this release (not one a newer release made)
    known: bool = True

    @property
    def is_head(self) -> bool:
        return self.current == self.head

    def describe(self) -> str:
        """One line for an operator: where the schema is and what to do about it."""
        if self.is_head:
            return f"the database schema is at revision {self.current} (head)"
        if not self.known:
            return (
                f"the database schema is at revision {self.current}, which this release does not "
                f"know (its newest is {self.head}): a newer release migrated it; upgrade vcounter"
            )
        where = (
            f"revision {self.current}"
            if self.current
            else "no revision (made by a release before migrations)"
            if self.previous_release
            else "no revision (an empty database)"
        )
        return (
            f"the database schema is at {where}, this release needs {self.head}: "
            "run `vcounter db upgrade` (or set VCOUNTER_DB_AUTO_UPGRADE=1 to upgrade at start)"
        )


@dataclass(frozen=True)
class SchemaChange:
    """What :func:`upgrade` did: ``before`` None is an empty (or a pre-migration) database."""

    before: str | None
    after: str
    #: a database of the release before migrations was recognised and recorded at 0001
    adopted: bool = False

    @property
    def changed(self) -> bool:
        return self.before != self.after


def alembic_config(connection: Connection | None = None) -> AlembicConfig:
    """Alembic's configuration for ``server/migrations``; ``env.py`` runs on ``connection``."""
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(HERE))
    cfg.set_main_option("file_template", "%%(rev)s_%%(slug)s")
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


def script_directory() -> ScriptDirectory:
    return ScriptDirectory.from_config(alembic_config())


def head_revision() -> str:
    head = script_directory().get_current_head()
    assert head is not None, "server/migrations/versions has no revision"
    return head


def _migration_engine(url: str) -> Engine:
    """An engine of one connection for migrating: on SQLite its transactions are ``BEGIN IMMEDIATE``."""
    url = normalise_url(url)
    if not url.startswith("sqlite"):
        return create_engine(url, poolclass=NullPool)
    engine = create_engine(url, poolclass=NullPool, connect_args={"timeout": 120})

    @sa_event.listens_for(engine, "connect")
    def _connect(dbapi_conn: Any, _record: Any) -> None:
        # the driver's own transaction handling off: SQLAlchemy's BEGIN below is the only one,
        # so DDL runs inside it (atomic) instead of committing statement by statement
        dbapi_conn.isolation_level = None
        dbapi_conn.execute("PRAGMA journal_mode=WAL")
        # off while tables are rebuilt (batch migrations); checked before commit instead
        dbapi_conn.execute("PRAGMA foreign_keys=OFF")

    @sa_event.listens_for(engine, "begin")
    def _begin(conn: Connection) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


@contextmanager
def _locked_transaction(url: str) -> Iterator[Connection]:
    """A connection inside a transaction that no other node's migration runs beside."""
    engine = _migration_engine(url)
    try:
        with engine.connect() as conn:
            if conn.dialect.name == "postgresql":
                got = conn.execute(
                    text("SELECT pg_try_advisory_lock(:k)"), {"k": MIGRATION_LOCK_KEY}
                ).scalar()
                if not got:
                    logger.info("another node is migrating the database: waiting for it")
                    conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": MIGRATION_LOCK_KEY})
                conn.commit()  # the lock is the session's: it outlives this transaction
                try:
                    with conn.begin():
                        yield conn
                finally:
                    if not conn.closed and not conn.invalidated:
                        conn.rollback()
                        conn.execute(
                            text("SELECT pg_advisory_unlock(:k)"), {"k": MIGRATION_LOCK_KEY}
                        )
                        conn.commit()
            else:
                with conn.begin():
                    yield conn
                    if conn.dialect.name == "sqlite":
                        broken = conn.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
                        if broken:
                            raise SchemaError(f"the migration broke foreign keys: {broken[:5]}")
    finally:
        engine.dispose()


def _current(conn: Connection) -> str | None:
    """The revision in ``alembic_version`` (read directly: Alembic's context logs at each start)."""
    if not inspect(conn).has_table("alembic_version"):
        return None
    versions = conn.execute(text("SELECT version_num FROM alembic_version")).scalars().all()
    if len(versions) > 1:
        raise SchemaError(
            f"the database is at several revisions at once ({', '.join(versions)}): "
            "vcounter's revisions have no branches; not touched"
        )
    return versions[0] if versions else None


def _previous_release(conn: Connection) -> bool:
    """True for the tables of the release before migrations; SchemaError for only some of them."""
    present = set(inspect(conn).get_table_names()) & PREVIOUS_RELEASE_TABLES
    if not present:
        return False
    missing = PREVIOUS_RELEASE_TABLES - present
    if missing:
        raise SchemaError(
            "the database has some of vcounter's tables but no alembic_version table and not "
            f"{', '.join(sorted(missing))}: not a database vcounter made; left untouched"
        )
    return True


def schema_status(url: str) -> SchemaStatus:
    """The revision of the database at ``url`` (read only; a missing SQLite file is empty)."""
    script = script_directory()
    head = script.get_current_head()
    assert head is not None, "server/migrations/versions has no revision"
    parsed = make_url(normalise_url(url))
    if (
        parsed.get_backend_name() == "sqlite"
        and parsed.database
        and parsed.database != ":memory:"
        and not Path(parsed.database).exists()
    ):
        return SchemaStatus(None, head)
    engine = create_engine(parsed, poolclass=NullPool)  # reads only: no lock taken
    try:
        with engine.connect() as conn:
            current = _current(conn)
            previous = current is None and _previous_release(conn)
    finally:
        engine.dispose()
    known = current is None or current in {s.revision for s in script.walk_revisions()}
    return SchemaStatus(current, head, previous, known)


def upgrade(url: str) -> SchemaChange:
    """Bring the database at ``url`` to the head revision, under the migration lock."""
    shown = make_url(normalise_url(url)).render_as_string(hide_password=True)
    script = script_directory()
    head = script.get_current_head()
    assert head is not None, "server/migrations/versions has no revision"
    known = {s.revision for s in script.walk_revisions()}
    with _locked_transaction(url) as conn:
        before = _current(conn)
        if before is not None and before not in known:
            raise SchemaError(SchemaStatus(before, head, known=False).describe())
        adopted = before is None and _previous_release(conn)
        if adopted:
            logger.warning(
                "database %s was made by a release before migrations: recording it at revision %s",
                shown,
                PREVIOUS_RELEASE_REVISION,
            )
            # that release made the append-only triggers on SQLite only
            for ddl in append_only_ddl(conn.dialect.name, PREVIOUS_RELEASE_APPEND_ONLY):
                conn.execute(text(ddl))
            command.stamp(alembic_config(conn), PREVIOUS_RELEASE_REVISION)
        if adopted or before != head:
            try:
                command.upgrade(alembic_config(conn), "head")
            except CommandError as exc:
                raise SchemaError(str(exc)) from exc
        after = _current(conn)
    assert after is not None
    change = SchemaChange(before, after, adopted)
    if change.changed:
        logger.info("database %s: schema upgraded from %s to %s", shown, before or "none", after)
    return change


def downgrade(url: str, revision: str) -> SchemaChange:
    """Take the database back to ``revision`` (``base``: no table at all), under the migration lock."""
    with _locked_transaction(url) as conn:
        before = _current(conn)
        command.downgrade(alembic_config(conn), revision)
        after = _current(conn)
    return SchemaChange(before, after or "base")


def stamp_head(conn: Connection) -> None:
    """Record ``conn``'s database at the head revision (tables made from the models directly)."""
    MigrationContext.configure(conn).stamp(script_directory(), "head")


def new_revision(message: str) -> Path:
    """Write ``versions/<next number>_<message>.py``: what the models differ from the head schema.

    The difference is computed against a throwaway SQLite database upgraded to
    the head, so nothing depends on the state of a developer's own database.
    Read and complete the file (data migrations, triggers of new append-only
    tables) before committing it.
    """
    script = script_directory()
    head = script.get_current_head()
    next_id = f"{int(head) + 1:04d}" if head and head.isdigit() else "0001"
    with tempfile.TemporaryDirectory(prefix="vcounter-revision-") as tmp:
        url = f"sqlite:///{Path(tmp) / 'head.db'}"
        upgrade(url)
        engine = _migration_engine(url)
        try:
            with engine.connect() as conn, conn.begin():
                result = command.revision(
                    alembic_config(conn), message=message, autogenerate=True, rev_id=next_id
                )
        finally:
            engine.dispose()
    scripts = result if isinstance(result, list) else [result]
    assert scripts and scripts[0] is not None
    return Path(scripts[0].path)


def ensure_schema(db: Database, *, upgrade_it: bool = True) -> SchemaChange | None:
    """Upgrade ``db`` to the head revision (what changed), or with ``upgrade_it=False`` raise
    :class:`SchemaOutOfDate` unless it is there already (None)."""
    if upgrade_it:
        return upgrade(db.url)
    status = schema_status(db.url)
    if not status.is_head:
        raise SchemaOutOfDate(status)
    return None


async def prepare(db: Database, *, upgrade_it: bool = True) -> None:
    """:func:`ensure_schema` in the database's thread: waiting for another node's migration never
    blocks the event loop."""
    await db.call(lambda: ensure_schema(db, upgrade_it=upgrade_it))


def create_all(db: Database) -> None:
    """Create the models' tables and the append-only triggers: for throwaway test databases only.

    A database that had no table yet is recorded at the head revision, so that :func:`upgrade`
    later finds it up to date; real databases go through :func:`upgrade`.
    """
    with db.engine.begin() as conn:
        fresh = not inspect(conn).get_table_names()
        SQLModel.metadata.create_all(conn)
        for ddl in append_only_ddl(conn.dialect.name, APPEND_ONLY_TABLES):
            conn.execute(text(ddl))
        if fresh:
            stamp_head(conn)

"""Schema migrations on SQLite and on a real PostgreSQL: from empty, from the release before
migrations, the refusal of an old schema, ``vcounter db upgrade|current``."""

from __future__ import annotations

import os
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy.exc
from aiohttp.test_utils import TestServer
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.engine import make_url
from sqlmodel import Session, SQLModel, select

from server import access_log, migrations
from server.app import create_app
from server.db import (
    APPEND_ONLY_TABLES,
    CallSession,
    Database,
    SessionEvent,
    User,
    normalise_url,
)
from server.migrations import (
    PREVIOUS_RELEASE_REVISION,
    SchemaError,
    SchemaOutOfDate,
    create_all,
    downgrade,
    head_revision,
)

from .server_process import REPO, vcounter_command


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty database on each engine (PostgreSQL: the throwaway cluster of tests/services.py)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'vcounter.db'}"
    return request.getfixturevalue("postgres_url")


def _previous_release_database(url: str) -> None:
    """What the release before migrations made: revision 0001's tables without ``alembic_version``,
    with the append-only triggers on SQLite only (that release had none on PostgreSQL)."""
    migrations.upgrade(url)
    downgrade(url, PREVIOUS_RELEASE_REVISION)
    engine = create_engine(normalise_url(url))
    with engine.begin() as conn:
        conn.execute(text("DROP TABLE alembic_version"))
        if engine.dialect.name == "postgresql":
            for table in APPEND_ONLY_TABLES:
                for op in ("update", "delete", "truncate"):
                    conn.execute(text(f"DROP TRIGGER {table}_no_{op} ON {table}"))
    engine.dispose()


def _schema_differences(db: Database) -> list[object]:
    with db.engine.connect() as conn:
        return compare_metadata(
            MigrationContext.configure(conn, opts={"compare_type": True}), SQLModel.metadata
        )


def _seed(db: Database) -> None:
    """A few rows in the columns revision 0001 has (the models may have more by now)."""
    with db.session() as s:
        user = User(username="qc", display_name="QC", role="auditor", password_hash="x")
        s.add(user)
        s.execute(
            text(
                "INSERT INTO callsession (id, business, state, customer_name, node_id, created_at) "
                "VALUES ('sess-old-1', 'loan_signing', 'ended', '王女士', '', :at)"
            ),
            {"at": datetime.now(UTC)},
        )
        s.add(SessionEvent(session_id="sess-old-1", offset_ms=0, kind="queued"))
        s.commit()
        access_log.append(s, user, "replay", "sess-old-1-1/customer")
        s.commit()


def _assert_append_only(db: Database) -> None:
    with db.session() as s:
        event = s.exec(select(SessionEvent)).first()
        assert event is not None
        event.kind = "tampered"
        s.add(event)
        with pytest.raises(sqlalchemy.exc.IntegrityError, match="sessionevent is append-only"):
            s.commit()


def _vcounter(*args: str, url: str, data_dir: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*vcounter_command(), *args, "--data-dir", str(data_dir)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
        env={**os.environ, "DATABASE_URL": url, "VCOUNTER_IDENTITY": "0", **env},
    )


def test_an_empty_database_upgrades_to_a_schema_equal_to_the_models(database_url):
    db = Database(database_url)
    before = migrations.schema_status(db.url)
    assert before.current is None and not before.is_head and not before.previous_release
    change = migrations.upgrade(db.url)
    assert (change.before, change.after, change.adopted) == (None, head_revision(), False)
    assert migrations.schema_status(db.url).is_head
    assert _schema_differences(db) == []  # the models say what the schema is
    _seed(db)
    _assert_append_only(db)
    again = migrations.upgrade(db.url)
    assert not again.changed and again.after == head_revision()
    db.close()


def test_create_all_makes_a_test_database_at_the_head(database_url):
    db = Database(database_url)
    create_all(db)
    assert migrations.schema_status(db.url).is_head
    assert not migrations.upgrade(db.url).changed
    _seed(db)
    _assert_append_only(db)
    db.close()


def test_a_database_of_the_release_before_migrations_is_recorded_and_keeps_its_rows(database_url):
    _previous_release_database(database_url)
    db = Database(database_url)
    _seed(db)
    status = migrations.schema_status(db.url)
    assert status.current is None and status.previous_release
    assert "made by a release before migrations" in status.describe()

    change = migrations.upgrade(db.url)
    assert change.adopted and change.before is None and change.after == head_revision()
    assert migrations.schema_status(db.url).is_head
    with Session(db.engine) as s:
        assert [u.username for u in s.exec(select(User))] == ["qc"]
        assert [e.kind for e in s.exec(select(SessionEvent))] == ["queued"]
        check = access_log.verify(s)
        assert check.ok and check.entries == 1, check.reason
    # on PostgreSQL that release had no triggers: recognising it added them
    _assert_append_only(db)
    assert _schema_differences(db) == []
    db.close()


def test_a_database_with_only_some_of_the_tables_is_left_untouched(database_url):
    engine = create_engine(normalise_url(database_url))
    SQLModel.metadata.create_all(engine, tables=[User.__table__, CallSession.__table__])  # type: ignore[attr-defined]
    engine.dispose()
    db = Database(database_url)
    with pytest.raises(SchemaError, match="not a database vcounter made"):
        migrations.upgrade(db.url)
    assert set(inspect(db.engine).get_table_names()) == {"user", "callsession"}
    db.close()


def test_downgrade_to_base_removes_everything_and_upgrade_brings_it_back(database_url):
    db = Database(database_url)
    migrations.upgrade(db.url)
    assert downgrade(database_url, "base").after == "base"
    assert set(inspect(db.engine).get_table_names()) <= {"alembic_version"}
    assert migrations.upgrade(db.url).before is None
    _seed(db)
    _assert_append_only(db)
    db.close()


async def test_the_app_refuses_an_old_schema_when_auto_upgrade_is_off(database_url, config_factory):
    config = config_factory(database_url=database_url, db_auto_upgrade=False)
    server = TestServer(create_app(config), host="127.0.0.1")
    with pytest.raises(SchemaOutOfDate, match="run `vcounter db upgrade`"):
        await server.start_server()
    await server.close()
    db = Database(database_url)
    assert migrations.schema_status(db.url).current is None  # nothing was created
    db.close()


def test_vcounter_db_upgrade_and_current_and_the_serve_refusal(database_url, tmp_path):
    data = tmp_path / "data"
    password = make_url(database_url).password

    refused = _vcounter(
        "serve",
        "--no-tls",
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        url=database_url,
        data_dir=data,
        VCOUNTER_DB_AUTO_UPGRADE="0",
    )
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert "vcounter db upgrade" in refused.stderr and "did not start" in refused.stderr

    current = _vcounter("db", "current", url=database_url, data_dir=data)
    assert current.returncode == 1 and current.stdout.startswith("none ("), (
        current.stdout + current.stderr
    )

    upgraded = _vcounter("db", "upgrade", url=database_url, data_dir=data)
    assert upgraded.returncode == 0, upgraded.stderr
    assert f"upgraded from none to {head_revision()} (head)" in upgraded.stdout

    current = _vcounter("db", "current", url=database_url, data_dir=data)
    assert (current.returncode, current.stdout) == (0, f"{head_revision()} (head)\n")
    again = _vcounter("db", "upgrade", url=database_url, data_dir=data)
    assert again.returncode == 0 and f"already at {head_revision()} (head)" in again.stdout

    # with the schema at the head, a command that opens the database works with auto-upgrade off
    added = _vcounter(
        "user",
        "add",
        "--role",
        "auditor",
        "--username",
        "qc",
        "--password",
        "long-enough",
        url=database_url,
        data_dir=data,
        VCOUNTER_DB_AUTO_UPGRADE="0",
    )
    assert added.returncode == 0, added.stderr
    if password:
        for done in (refused, current, upgraded, again, added):
            assert password not in done.stdout + done.stderr  # URLs are shown without it


def test_vcounter_db_upgrade_adopts_a_database_of_the_release_before_migrations(
    database_url, tmp_path
):
    _previous_release_database(database_url)
    done = _vcounter("db", "upgrade", url=database_url, data_dir=tmp_path / "data")
    assert done.returncode == 0, done.stderr
    assert "made by a release before migrations: recorded at revision 0001" in done.stdout


def test_a_database_that_a_newer_release_migrated_is_refused(database_url, tmp_path):
    db = Database(database_url)
    migrations.upgrade(db.url)
    with db.engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '0999'"))
    status = migrations.schema_status(db.url)
    assert status.current == "0999" and not status.known and not status.is_head
    with pytest.raises(SchemaError, match="a newer release migrated it"):
        migrations.upgrade(db.url)
    db.close()
    for auto in ("1", "0"):
        refused = _vcounter(
            "serve",
            "--no-tls",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            url=database_url,
            data_dir=tmp_path / "data",
            VCOUNTER_DB_AUTO_UPGRADE=auto,
        )
        assert refused.returncode == 1 and "a newer release migrated it" in refused.stderr, (
            refused.stderr
        )


def test_a_new_revision_of_unchanged_models_is_empty(tmp_path, monkeypatch):
    """``vcounter db revision`` autogenerates against the head: with the models as they are, the
    next revision, numbered after the head, has nothing to do."""
    import shutil

    import server.migrations

    copy = tmp_path / "migrations"
    shutil.copytree(server.migrations.HERE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(server.migrations, "HERE", copy)
    head = head_revision()
    path = server.migrations.new_revision("nothing changes")
    assert path == copy / "versions" / f"{int(head) + 1:04d}_nothing_changes.py"
    body = path.read_text()
    assert f"down_revision = '{head}'" in body
    assert "op." not in body.split("def upgrade", 1)[1]


def test_postgres_urls_as_operators_write_them_go_through_psycopg():
    assert (
        normalise_url("postgresql://u:p%40ss@db:5432/vc")
        == "postgresql+psycopg://u:p%40ss@db:5432/vc"
    )
    assert normalise_url("postgres://u@db/vc") == "postgresql+psycopg://u@db/vc"
    assert normalise_url("postgresql+psycopg2://u@db/vc") == "postgresql+psycopg2://u@db/vc"
    assert normalise_url("sqlite:///var/vcounter.db") == "sqlite:///var/vcounter.db"
    db = Database("postgresql://vcounter:s3cret@db.example:5432/vc")  # no connection is made
    assert db.engine.dialect.driver == "psycopg" and "s3cret" not in db.display_url
    db.close()

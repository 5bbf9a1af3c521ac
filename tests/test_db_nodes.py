"""Several nodes on one database, as real processes: migrations started at once, the access
log's chain, the append-only tables; SQLite (one file) and a real PostgreSQL."""

from __future__ import annotations

import asyncio
import os
import secrets
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import aiohttp
import pytest
import sqlalchemy.exc
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlmodel import Session, func, select

from server import access_log, migrations
from server.db import AccessLog, CallSession, Database, SessionEvent, User, Verdict
from server.migrations import MIGRATION_LOCK_KEY, create_all, head_revision

from .helpers import login
from .server_process import REPO, vcounter_command

# a node's command, started in a process of its own that waits for a common moment first, so
# that the processes really meet at the lock instead of being spread out by their start-up
UPGRADE_AT = """
import sys, time
from server.cli import main
time.sleep(max(0.0, float(sys.argv[1]) - time.time()))
sys.exit(main(["db", "upgrade"]))
"""

APPEND_AT = """
import asyncio, sys, time
from server import access_log
from server.db import Database, User
url, name, count, start = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
db = Database(url)
user = User(username=name, display_name=name, role="auditor", password_hash="")

async def appends():
    for i in range(count):
        await db.run(lambda s, i=i: access_log.append(s, user, "replay", f"rec-{i}/customer", "127.0.0.1"))

time.sleep(max(0.0, start - time.time()))
asyncio.run(appends())
db.close()
"""


@pytest.fixture(params=["sqlite", "postgresql"])
def new_database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[[], str]]:
    """Makes empty databases on one engine: a new SQLite file, or a new PostgreSQL database."""
    made: list[str] = []
    cluster = request.getfixturevalue("postgres_cluster") if request.param == "postgresql" else None

    def make() -> str:
        name = f"t_{secrets.token_hex(6)}"
        made.append(name)
        return cluster.create_database(name) if cluster else f"sqlite:///{tmp_path / name}.db"

    yield make
    if cluster:
        for name in made:
            cluster.drop_database(name)


def _env(url: str) -> dict[str, str]:
    return {**os.environ, "DATABASE_URL": url, "VCOUNTER_IDENTITY": "0"}


def _at_once(
    scripts: list[list[str]], url: str, data_dir: Path
) -> list[subprocess.CompletedProcess[str]]:
    """Run ``python -c SCRIPT ARGS... START`` processes that all begin their work at START."""
    start = time.time() + 3.0  # more than a process takes to import the server
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", *script, str(start)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=REPO,
            env={**_env(url), "VCOUNTER_DATA_DIR": str(data_dir)},
        )
        for script in scripts
    ]
    done = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        done.append(subprocess.CompletedProcess(proc.args, proc.returncode, out, err))
    return done


def test_nodes_starting_at_once_on_an_empty_database_all_come_up(new_database, tmp_path):
    for _ in range(3):
        url = new_database()
        done = _at_once([[UPGRADE_AT]] * 3, url, tmp_path / "data")
        for d in done:
            assert d.returncode == 0, d.stderr[-3000:]
        outputs = [d.stdout for d in done]
        # the lock lets one node migrate; the others find the schema at the head
        assert sum(f"upgraded from none to {head_revision()}" in o for o in outputs) == 1, outputs
        assert sum(f"already at {head_revision()}" in o for o in outputs) == 2, outputs
        db = Database(url)
        assert migrations.schema_status(db.url).is_head
        db.close()


def test_a_node_waits_for_the_migration_lock_another_holds(new_database, tmp_path):
    url = new_database()
    db = Database(url)
    if db.engine.dialect.name == "postgresql":
        holder = db.engine.connect()
        holder.execute(text("SELECT pg_advisory_lock(:k)"), {"k": MIGRATION_LOCK_KEY})
        holder.commit()
    else:
        holder = sqlite3.connect(db.engine.url.database, isolation_level=None)  # type: ignore[assignment]
        holder.execute("PRAGMA journal_mode=WAL")
        holder.execute("BEGIN IMMEDIATE")
    proc = subprocess.Popen(
        [*vcounter_command(), "db", "upgrade"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
        env={**_env(url), "VCOUNTER_DATA_DIR": str(tmp_path / "data")},
    )
    try:
        deadline = time.monotonic() + 30
        if db.engine.dialect.name == "postgresql":
            # until the node is seen waiting for the advisory lock
            with db.engine.connect() as conn:
                while not conn.execute(
                    text(
                        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
                    )
                ).scalar():
                    assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
                    time.sleep(0.1)
                    conn.rollback()
        else:
            time.sleep(4.0)  # more than the process takes to import the server and connect
        assert proc.poll() is None, proc.communicate()
        assert (
            migrations.schema_status(db.url).current is None
        )  # nothing migrated while the lock is held
    finally:
        if db.engine.dialect.name == "postgresql":
            holder.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": MIGRATION_LOCK_KEY})
            holder.commit()
        else:
            holder.execute("COMMIT")
        holder.close()
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert f"upgraded from none to {head_revision()}" in out
    assert migrations.schema_status(db.url).is_head
    db.close()


def test_access_log_appends_from_two_nodes_make_one_intact_chain(new_database, tmp_path):
    url = new_database()
    db = Database(url)
    migrations.upgrade(db.url)
    done = _at_once(
        [[APPEND_AT, url, "node-a", "25"], [APPEND_AT, url, "node-b", "25"]], url, tmp_path / "data"
    )
    for d in done:
        assert d.returncode == 0, d.stderr[-3000:]
    with Session(db.engine) as s:
        check = access_log.verify(s)
        assert check.ok and check.entries == 50, check.reason
        by_node = dict(
            s.exec(select(AccessLog.username, func.count()).group_by(AccessLog.username)).all()
        )
    assert by_node == {"node-a": 25, "node-b": 25}
    db.close()
    verified = subprocess.run(
        [*vcounter_command(), "verify-log"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        env={**_env(url), "VCOUNTER_DATA_DIR": str(tmp_path / "data")},
    )
    assert verified.returncode == 0, verified.stderr
    assert verified.stdout.strip() == "OK: 50 entries, chain intact"


@pytest.mark.parametrize("made_by", ["upgrade", "create_all"])
def test_append_only_tables_refuse_update_delete_and_truncate(new_database, made_by):
    db = Database(new_database())
    migrations.upgrade(db.url) if made_by == "upgrade" else create_all(db)
    postgres = db.engine.dialect.name == "postgresql"
    with db.session() as s:
        user = User(username="qc", display_name="QC", role="auditor", password_hash="x")
        s.add(user)
        s.add(
            CallSession(id="sess-ao-1", business="loan_signing", state="ended", customer_name="A")
        )
        s.commit()
        s.add(SessionEvent(session_id="sess-ao-1", offset_ms=0, kind="queued"))
        s.add(Verdict(session_id="sess-ao-1", user_id=user.id or 0, username="qc", result="pass"))
        access_log.append(s, user, "verdict_pass", "sess-ao-1")
        s.commit()
    statements = {
        "sessionevent": ["UPDATE sessionevent SET kind = 'tampered'", "DELETE FROM sessionevent"],
        "verdict": ["UPDATE verdict SET result = 'fail'", "DELETE FROM verdict"],
        "accesslog": ["UPDATE accesslog SET target = 'elsewhere'", "DELETE FROM accesslog"],
    }
    for table, sqls in statements.items():
        for sql in sqls + ([f"TRUNCATE {table}"] if postgres else []):
            with db.engine.connect() as conn:
                with pytest.raises(sqlalchemy.exc.IntegrityError, match=f"{table} is append-only"):
                    conn.execute(text(sql))
                conn.rollback()
        with db.engine.connect() as conn:
            assert conn.execute(text(f"SELECT count(*) FROM {table}")).scalar() == 1, table
    if postgres:  # a TRUNCATE of the table they refer to reaches them too
        with (
            db.engine.connect() as conn,
            pytest.raises(sqlalchemy.exc.IntegrityError, match="append-only"),
        ):
            conn.execute(text("TRUNCATE callsession CASCADE"))
    db.close()


def test_a_node_role_allowed_only_to_read_and_insert_appends_to_the_access_log(postgres_url):
    """Appending takes an advisory lock, not a table lock: it needs no UPDATE or DELETE privilege."""
    owner = Database(postgres_url)
    migrations.upgrade(owner.url)
    role, password = f"node_{secrets.token_hex(4)}", secrets.token_urlsafe(12)
    with owner.engine.begin() as conn:
        conn.execute(text(f"CREATE ROLE {role} LOGIN PASSWORD '{password}'"))
        conn.execute(text(f"GRANT SELECT, INSERT ON accesslog, accesslogseal TO {role}"))
    url = (
        make_url(postgres_url)
        .set(username=role, password=password)
        .render_as_string(hide_password=False)
    )
    node = Database(url)
    try:
        user = User(username="qc", display_name="QC", role="auditor", password_hash="")
        for i in range(3):
            with node.session() as s:
                access_log.append(s, user, "replay", f"rec-{i}/agent")
                s.commit()
        with node.session() as s:
            check = access_log.verify(s)
            assert check.ok and check.entries == 3, check.reason
        with (
            node.engine.connect() as conn,
            pytest.raises(sqlalchemy.exc.ProgrammingError, match="permission denied"),
        ):
            conn.execute(text("UPDATE accesslog SET target = 'elsewhere'"))
    finally:
        node.close()
        with owner.engine.begin() as conn:
            conn.execute(text(f"DROP OWNED BY {role}"))
            conn.execute(text(f"DROP ROLE {role}"))
        owner.close()


async def test_two_nodes_on_one_postgresql_log_concurrent_audit_reads_in_one_chain(
    make_counter, postgres_url, video_clip, audio_clip
):
    """Two servers (two engines, as two nodes) on one PostgreSQL: 30 concurrent reads that each log
    an access all succeed, and the log is one chain of 30."""
    nodes = [
        await make_counter(video_clip, audio_clip, database_url=postgres_url, node_id=name)
        for name in ("node-a", "node-b")
    ]
    await nodes[0].db.run(
        lambda s: s.add(
            CallSession(
                id="sess-pg-1", business="loan_signing", state="ended", customer_name="王女士"
            )
        )
    )
    tokens = [await login(node, "auditor") for node in nodes]
    async with aiohttp.ClientSession() as http:

        async def read(i: int) -> int:
            node, token = nodes[i % 2], tokens[i % 2]
            async with http.get(
                f"{node.url}/api/audit/sessions/sess-pg-1",
                headers={"Authorization": f"Bearer {token}"},
            ) as r:
                return r.status

        statuses = await asyncio.gather(*(read(i) for i in range(30)))
    assert statuses == [200] * 30
    check = await nodes[1].db.run(access_log.verify)
    assert check.ok and check.entries == 30, check.reason

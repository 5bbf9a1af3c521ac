"""The access log's head is anchored: signed seals, so deleting its tail (or rewriting it) is found.

Real servers, real SQLite files and a real PostgreSQL (two engines as two nodes), the real
``vcounter verify-log`` and ``GET /api/admin/access-log``; the attacker drops the append-only
triggers, as a role owning the tables can.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import aiohttp
import pytest
import sqlalchemy.exc
from sqlalchemy import text
from sqlmodel import select

from recorder.keys import SigningKey
from server import access_log, migrations
from server.appkeys import CONFIG
from server.db import AccessLog, Database, User

from .helpers import eventually, login
from .recordings import recorded_call
from .server_process import server_cli, vcounter_command

AUDITOR = User(id=7, username="qc", display_name="QC", role="auditor", password_hash="")


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'vcounter.db'}"
    return request.getfixturevalue("postgres_url")


def _append(db: Database, n: int, action: str = "replay") -> None:
    for i in range(n):
        with db.session() as s:
            access_log.append(s, AUDITOR, action, f"rec-{i}-1/customer", "10.0.0.1")
            s.commit()


def _seal(db: Database, key: SigningKey, reason: str = "periodic") -> object | None:
    with db.session() as s:
        made = access_log.seal(s, key, node_id="node-a", reason=reason)
        s.commit()
        return made


def _check(db: Database, key: SigningKey | None) -> access_log.LogCheck:
    with db.session() as s:
        return access_log.verify(s, [key.public_pem()] if key else None)


async def _admin_log(counter) -> dict:
    token = await login(counter, "admin")
    async with (
        aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"}) as http,
        http.get(f"{counter.url}/api/admin/access-log") as r,
    ):
        assert r.status == 200, await r.text()
        return await r.json()


async def _searches(counter, n: int) -> None:
    token = await login(counter, "auditor")
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"}) as http:
        for i in range(n):
            async with http.get(f"{counter.url}/api/audit/sessions", params={"q": f"n{i}"}) as r:
                assert r.status == 200


async def _views(counter, session_id: str, n: int) -> None:
    token = await login(counter, "auditor")
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"}) as http:
        for _ in range(n):
            async with http.get(f"{counter.url}/api/audit/sessions/{session_id}") as r:
                assert r.status == 200


async def test_deleting_the_logs_tail_after_a_seal_is_found_by_verify_log_and_the_admin_api(
    counter, tmp_path
):
    config = counter.app[CONFIG]
    session_id, recording_id = await recorded_call(counter, seconds=0.5)
    await _views(counter, session_id, 4)
    secret = tmp_path / "pass.txt"
    secret.write_text("correct horse battery staple\n")
    exported = server_cli(
        config, "export", session_id, str(tmp_path / "e.zip"), "--passphrase-file", str(secret)
    )
    assert exported.returncode == 0, exported.stderr  # entry 5, sealed at once
    await _views(counter, session_id, 2)
    assert server_cli(config, "verify-log").returncode == 0

    # someone who can drop the triggers deletes the last four entries: a valid chain of three
    with sqlite3.connect(config.db_url.removeprefix("sqlite:///")) as conn:
        conn.execute("DROP TRIGGER accesslog_no_delete")
        conn.execute("DELETE FROM accesslog WHERE seq > 3")
    bad = server_cli(config, "verify-log")
    assert bad.returncode == 1, bad.stdout + bad.stderr
    assert "FAILED: entries 4-5 are missing" in bad.stdout and "tail was deleted" in bad.stdout
    log = await _admin_log(counter)
    assert log["chain_ok"] is False and "tail was deleted" in log["chain"]


async def test_the_nodes_sealer_anchors_the_head_and_reports_what_is_not_sealed_yet(counter):
    from server.routes.audit import SEALER

    config = counter.app[CONFIG]
    await _searches(counter, 5)
    sealed = await counter.app[SEALER].seal_now()
    assert sealed is not None and sealed.seq == 5 and sealed.reason == "periodic"
    assert await counter.app[SEALER].seal_now() is None  # the head did not move
    await _searches(counter, 2)
    ok = server_cli(config, "verify-log")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "sealed up to entry 5" in ok.stdout and "2 newer not sealed yet" in ok.stdout
    log = await _admin_log(counter)
    assert log["chain_ok"] is True and log["total"] == 7
    assert log["sealed"]["seq"] == 5 and log["sealed"]["unsealed_entries"] == 2
    # the log shortened below its seal is not sealed again as if it were whole
    with sqlite3.connect(config.db_url.removeprefix("sqlite:///")) as conn:
        conn.execute("DROP TRIGGER accesslog_no_delete")
        conn.execute("DELETE FROM accesslog WHERE seq > 3")
    assert await counter.app[SEALER].seal_now() is None
    assert (await _admin_log(counter))["chain_ok"] is False


def test_a_rewritten_log_and_forged_or_deleted_seals_fail(tmp_path):
    db = Database(f"sqlite:///{tmp_path / 'vcounter.db'}")
    migrations.upgrade(db.url)
    key = SigningKey.generate()
    _append(db, 3)
    assert _seal(db, key) is not None
    _append(db, 2)
    assert _seal(db, key, "export") is not None
    check = _check(db, key)
    assert check.ok and check.seals == 2 and check.sealed_seq == 5, check.reason

    # the whole log rewritten (another user), every hash recomputed: the chain alone is intact
    with db.engine.begin() as conn:
        conn.execute(text("DROP TRIGGER accesslog_no_delete"))
        conn.execute(text("DELETE FROM accesslog"))
    with db.session() as s:
        prev = access_log.GENESIS
        for seq in range(1, 6):
            entry = AccessLog(
                seq=seq,
                username="someone_else",
                role="auditor",
                action="replay",
                target=f"rec-{seq}-1/customer",
                prev_hash=prev,
                hash="",
            )
            entry.hash = access_log._digest(prev, entry)
            prev = entry.hash
            s.add(entry)
        s.commit()
    check = _check(db, key)
    assert not check.ok and "not the entry seal 1 sealed (the log was rewritten)" in check.reason

    # a seal added with the rewriter's own key is not trusted; deleting seals is found too
    forger = SigningKey.generate()
    with db.engine.begin() as conn:
        conn.execute(text("DROP TRIGGER accesslogseal_no_delete"))
        conn.execute(text("DELETE FROM accesslogseal"))
    assert _seal(db, forger) is not None
    check = _check(db, key)
    assert not check.ok and "seal 1: signed by a key that is not trusted" in check.reason
    # and a seal deleted from the middle of the seals' chain is missing
    with db.engine.begin() as conn:
        conn.execute(text("DELETE FROM accesslogseal"))
    for _ in range(3):
        _append(db, 1)
        assert _seal(db, key) is not None
    assert _seal(db, key) is None  # nothing new: no seal
    assert _check(db, key).ok
    with db.engine.begin() as conn:
        conn.execute(text("DELETE FROM accesslogseal WHERE id = 2"))
    check = _check(db, key)
    assert not check.ok and check.reason.startswith("seal 2 is missing"), check.reason
    db.close()


def test_the_sealer_seals_the_head_only_when_it_moved(tmp_path):
    db = Database(f"sqlite:///{tmp_path / 'vcounter.db'}")
    migrations.upgrade(db.url)
    key = SigningKey.generate()

    from server.db import AccessLogSeal

    def seals() -> list[int]:
        with db.session() as s:
            return [x.seq for x in s.exec(select(AccessLogSeal).order_by(AccessLogSeal.id))]

    async def scenario() -> None:
        sealer = access_log.HeadSealer(db, key, "node-a", interval_s=0.05)
        sealer.start()
        sealer.start()  # one task, however often started
        await asyncio.to_thread(_append, db, 3)
        await eventually(lambda: seals() and seals()[-1] == 3, timeout=10)
        quiet = seals()
        await asyncio.sleep(0.4)  # rounds with nothing new write nothing
        assert seals() == quiet
        await asyncio.to_thread(_append, db, 1)
        await eventually(lambda: seals()[-1] == 4, timeout=10)
        await sealer.aclose()
        await sealer.aclose()

    asyncio.run(scenario())
    assert seals() == sorted(set(seals()))  # each seal a newer head
    check = _check(db, key)
    assert check.ok and check.unsealed == 0, check.reason
    db.close()


async def test_an_export_seals_the_head_at_once(counter, tmp_path):
    config = counter.app[CONFIG]
    session_id, recording_id = await recorded_call(counter, seconds=0.5)
    secret = tmp_path / "pass.txt"
    secret.write_text("correct horse battery staple\n")
    done = server_cli(
        config, "export", session_id, str(tmp_path / "e.zip"), "--passphrase-file", str(secret)
    )
    assert done.returncode == 0, done.stderr

    from server.db import AccessLogSeal

    def last(s):
        entry = s.exec(select(AccessLog).order_by(AccessLog.seq.desc())).first()
        seal = s.exec(select(AccessLogSeal).order_by(AccessLogSeal.id.desc())).first()
        return entry, seal

    entry, seal = await counter.db.run(last)
    assert (entry.action, entry.target) == ("export", recording_id)
    assert seal.reason == "export" and seal.seq == entry.seq and seal.head_hash == entry.hash
    ok = server_cli(config, "verify-log")
    assert ok.returncode == 0 and f"sealed up to entry {entry.seq}" in ok.stdout, ok.stdout


def test_seals_are_append_only(database_url):
    db = Database(database_url)
    migrations.upgrade(db.url)
    key = SigningKey.generate()
    _append(db, 1)
    _seal(db, key)
    for statement in ("UPDATE accesslogseal SET seq = 0", "DELETE FROM accesslogseal"):
        with (
            db.engine.begin() as conn,
            pytest.raises(sqlalchemy.exc.IntegrityError, match="accesslogseal is append-only"),
        ):
            conn.execute(text(statement))
    if db.engine.dialect.name == "postgresql":
        with (
            db.engine.begin() as conn,
            pytest.raises(sqlalchemy.exc.IntegrityError, match="accesslogseal is append-only"),
        ):
            conn.execute(text("TRUNCATE accesslogseal"))
    assert _check(db, key).ok
    db.close()


def test_two_nodes_appending_and_sealing_at_once_on_postgresql_make_one_chain(postgres_url):
    owner = Database(postgres_url)
    migrations.upgrade(owner.url)
    owner.close()
    from server.db import AccessLogSeal

    nodes = [Database(postgres_url), Database(postgres_url)]
    key = SigningKey.generate()

    def work(i: int) -> None:
        db = nodes[i % 2]
        for _ in range(10):
            with db.session() as s:
                access_log.append(s, AUDITOR, "replay", f"rec-{i}-1/agent")
                s.commit()
            with db.session() as s:
                access_log.seal(s, key, node_id=f"node-{i % 2}")
                s.commit()

    try:
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(work, range(8)))
        with nodes[0].session() as s:
            seals = list(s.exec(select(AccessLogSeal).order_by(AccessLogSeal.id)))
            check = access_log.verify(s, [key.public_pem()])
        assert check.ok and check.entries == 80, check.reason
        assert [x.id for x in seals] == list(range(1, len(seals) + 1))
        seqs = [x.seq for x in seals]
        assert seqs == sorted(set(seqs)) and seqs[-1] == 80  # never the same head twice
    finally:
        for db in nodes:
            db.close()


def test_verify_log_checks_the_seals_against_the_trusted_key_and_says_where_the_data_is(
    tmp_path,
):
    data = tmp_path / "data"
    data.mkdir()
    db = Database(f"sqlite:///{data / 'vcounter.db'}")
    migrations.upgrade(db.url)
    key = SigningKey.generate()
    _append(db, 2)
    _seal(db, key)
    db.close()
    (tmp_path / "bank.pem").write_bytes(key.public_pem())
    clean = {
        k: v for k, v in os.environ.items() if not k.startswith("VCOUNTER_") and k != "DATABASE_URL"
    }

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*vcounter_command(), "verify-log", *args],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=tmp_path,
            env=clean,
        )

    # no key configured beside the data directory: the chain and the seals' own chain are
    # checked, their signatures not, and it says so
    no_key = run("--data-dir", str(data))
    assert no_key.returncode == 0, no_key.stdout + no_key.stderr
    assert "warning: seal signatures not checked: no trusted public key" in no_key.stderr
    assert "signatures checked" not in no_key.stdout
    ok = run("--data-dir", str(data), "--public-key", str(tmp_path / "bank.pem"))
    assert ok.returncode == 0 and "signatures checked" in ok.stdout, ok.stdout + ok.stderr
    other = tmp_path / "other.pem"
    other.write_bytes(SigningKey.generate().public_pem())
    wrong = run("--data-dir", str(data), "--public-key", str(other))
    assert wrong.returncode == 1 and "not trusted" in wrong.stdout, wrong.stdout
    nowhere = run("--public-key", str(tmp_path / "bank.pem"))  # ./var does not exist here
    assert nowhere.returncode == 2 and "does not exist" in nowhere.stderr, nowhere.stderr
    assert "Traceback" not in nowhere.stderr


def test_a_node_role_allowed_only_to_read_and_insert_seals_the_head(postgres_url):
    """Sealing takes the append lock (an advisory lock): SELECT and INSERT are all it needs."""
    import secrets

    from sqlalchemy.engine import make_url

    owner = Database(postgres_url)
    migrations.upgrade(owner.url)
    role, password = f"node_{secrets.token_hex(4)}", secrets.token_urlsafe(12)
    with owner.engine.begin() as conn:
        conn.execute(text(f"CREATE ROLE {role} LOGIN PASSWORD '{password}'"))
        conn.execute(text(f"GRANT SELECT, INSERT ON accesslog, accesslogseal TO {role}"))
    url = make_url(postgres_url).set(username=role, password=password)
    node = Database(url.render_as_string(hide_password=False))
    key = SigningKey.generate()
    try:
        _append(node, 2)
        assert _seal(node, key) is not None
        check = _check(node, key)
        assert check.ok and check.sealed_seq == 2, check.reason
    finally:
        node.close()
        with owner.engine.begin() as conn:
            conn.execute(text(f"DROP OWNED BY {role}"))
            conn.execute(text(f"DROP ROLE {role}"))
        owner.close()

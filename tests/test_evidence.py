"""Identity evidence at rest: encrypted per session, bound to its place, purged with the recording."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import zipfile
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
from sqlmodel import select

from recorder import MasterKey
from recorder.evidence import KINDS, EvidenceError, EvidenceNotFound, EvidenceStore
from server import access_log, retention
from server.appkeys import CONFIG
from server.config import from_env
from server.db import AccessLog, CallSession, Database, Recording, utcnow
from server.migrations import create_all

from .helpers import shared_data
from .recordings import recorded_call
from .server_process import run_vcounter, server_cli

SESSION = "Qx7-kP_2mZ9aLw4R"
OTHER = "b3Nf-Tq8Yc1_uVx0"
FACES = "faces/face_recognition/tests/test_images"


def _photo(name: str = "biden.jpg") -> bytes:
    return shared_data(f"{FACES}/{name}").read_bytes()


def _embedding(seed: int) -> bytes:
    return np.random.default_rng(seed).standard_normal(128).astype(np.float32).tobytes()


@pytest.fixture
def master() -> MasterKey:
    return MasterKey.generate()


@pytest.fixture
def store(tmp_path: Path, master: MasterKey) -> EvidenceStore:
    return EvidenceStore.local(tmp_path / "identity", master)


def _file(store: EvidenceStore, session_id: str, kind: str, item_id: str) -> Path:
    return store.storage.root / session_id / kind / item_id  # type: ignore[attr-defined]


def _every_stored_byte(root: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file())


# -- store ------------------------------------------------------------------------------


def test_every_kind_round_trips_and_nothing_is_plaintext_on_disk(
    store: EvidenceStore, tmp_path: Path
):
    photo, snapshot = _photo("biden.jpg"), _photo("obama.jpg")
    data = {
        "reference_image": photo,
        "reference_embedding": _embedding(1),
        "snapshot": snapshot,
        "live_embedding": _embedding(2),
        "receipt": json.dumps(
            {
                "payload": {
                    "session_id": SESSION,
                    "document_sha256": "ab" * 32,
                    "signature_png": "iVBOR" * 40,
                }
            }
        ).encode(),
    }
    types = {
        "reference_image": "image/jpeg",
        "snapshot": "image/jpeg",
        "receipt": "application/json",
    }
    put = [
        store.put(
            SESSION,
            kind,
            data[kind],
            content_type=types.get(kind, "application/octet-stream"),
            meta={"distance": 0.3141592, "by": "agent 李"},
        )
        for kind in KINDS
    ]

    for item in put:
        got, plain = store.get(SESSION, item.id)
        assert got == item and plain == data[item.kind]
        assert item.sha256 == hashlib.sha256(plain).hexdigest() and item.size == len(plain)
        assert got.meta == {"distance": 0.3141592, "by": "agent 李"}
        assert "data" not in item.as_dict() and item.as_dict()["meta"]["by"] == "agent 李"
        assert "0.3141592" not in repr(item), "meta (scores) stays out of reprs and so of logs"
    assert [i.id for i in store.list(SESSION)] == [i.id for i in put], "oldest first"
    assert len({i.id for i in put}) == len(KINDS) and all(len(i.id) >= 16 for i in put)

    on_disk = _every_stored_byte(tmp_path / "identity")
    for plain in data.values():
        assert plain[100:132] not in on_disk
    # Needles are 9+ bytes: a 3-byte one turns up by chance in ~1 run of 50
    # over a few hundred kB of ciphertext.
    assert (
        b"0.3141592" not in on_disk
        and "agent 李".encode() not in on_disk
        and b"image/jpeg" not in on_disk
    )
    for path in (tmp_path / "identity").rglob("*"):
        assert path.is_dir() or path.stat().st_mode & 0o077 == 0, f"{path} is readable by others"


def test_an_item_moved_to_another_session_or_kind_does_not_decrypt(
    store: EvidenceStore, tmp_path: Path
):
    snap = store.put(SESSION, "snapshot", _photo(), content_type="image/jpeg")
    store.put(OTHER, "snapshot", _photo("obama.jpg"), content_type="image/jpeg")
    source = _file(store, SESSION, "snapshot", snap.id)

    # copied into another session's folder, under the same id
    shutil.copy(source, _file(store, OTHER, "snapshot", snap.id))
    with pytest.raises(EvidenceError, match="does not decrypt"):
        store.get(OTHER, snap.id)
    # and even with its own wrapped key beside it: the session id is bound, not only the key
    third = "zz-third-session"
    (tmp_path / "identity" / third / "snapshot").mkdir(parents=True)
    shutil.copy(
        tmp_path / "identity" / SESSION / "key.wrapped",
        tmp_path / "identity" / third / "key.wrapped",
    )
    shutil.copy(source, _file(store, third, "snapshot", snap.id))
    with pytest.raises(EvidenceError):
        store.get(third, snap.id)

    # filed as another kind (a snapshot passed off as the reference photo)
    refiled = _file(store, SESSION, "reference_image", snap.id)
    refiled.parent.mkdir()
    os.replace(source, refiled)
    with pytest.raises(EvidenceError, match="does not decrypt"):
        store.get(SESSION, snap.id)
    with pytest.raises(EvidenceError):
        store.list(SESSION)
    # or renamed to another item's id
    os.replace(refiled, source)
    os.replace(source, source.with_name("AAAAAAAAAAAAAAAA"))
    with pytest.raises(EvidenceError):
        store.get(SESSION, "AAAAAAAAAAAAAAAA")


def test_flipped_byte_truncation_and_wrong_master_key_fail(store: EvidenceStore, tmp_path: Path):
    photo = _photo()
    item = store.put(
        SESSION, "reference_image", photo, content_type="image/jpeg", meta={"score": 0.97}
    )
    path = _file(store, SESSION, "reference_image", item.id)
    original = path.read_bytes()
    # a byte of the description, of the data, and the last byte of the tag
    for offset in (30, len(original) // 2, len(original) - 1):
        damaged = bytearray(original)
        damaged[offset] ^= 0x01
        path.write_bytes(bytes(damaged))
        with pytest.raises(EvidenceError) as caught:
            store.get(SESSION, item.id)
        assert item.id in str(caught.value) and "0.97" not in str(caught.value)
    path.write_bytes(original[:-100])
    with pytest.raises(EvidenceError):
        store.get(SESSION, item.id)
    path.write_bytes(original)
    assert store.get(SESSION, item.id)[1] == photo

    stranger = EvidenceStore.local(tmp_path / "identity", MasterKey.generate())
    with pytest.raises(EvidenceError, match="another master key"):
        stranger.get(SESSION, item.id)
    with pytest.raises(EvidenceError, match="another master key"):
        stranger.list(SESSION)
    with pytest.raises(EvidenceError, match="another master key"):
        stranger.put(SESSION, "snapshot", b"x")
    keyless = EvidenceStore.local(tmp_path / "identity", None)
    with pytest.raises(EvidenceError, match="no master key"):
        keyless.get(SESSION, item.id)
    assert keyless.count(SESSION) == 1, "listing names and deleting need no key"


@pytest.mark.parametrize(
    "bad", ["", "..", "../etc", "a/b", "a\\b", ".hidden", "a" * 65, "a b", "é", "a\0b", None]
)
def test_bad_ids_are_refused(store: EvidenceStore, bad):
    store.put(SESSION, "snapshot", b"jpeg")
    with pytest.raises(ValueError):
        store.put(bad, "snapshot", b"x")
    with pytest.raises(ValueError):
        store.get(bad, "abc")
    with pytest.raises(ValueError):
        store.get(SESSION, bad)
    with pytest.raises(ValueError):
        store.list(bad)
    with pytest.raises(ValueError):
        store.delete_session(bad)
    assert store.count(SESSION) == 1


def test_bad_kind_content_type_and_meta_are_refused(store: EvidenceStore):
    for kind in ("passport_scan", "", "../snapshot", None):
        with pytest.raises(ValueError, match="kind"):
            store.put(SESSION, kind, b"x")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="kind"):
        store.list(SESSION, kind="passport_scan")
    with pytest.raises(ValueError, match="content type"):
        store.put(SESSION, "snapshot", b"x", content_type="image/jpeg\r\nSet-Cookie: a=b")
    with pytest.raises(ValueError, match="JSON"):
        store.put(SESSION, "snapshot", b"x", meta={"at": object()})
    with pytest.raises(ValueError, match="JSON"):
        store.put(SESSION, "snapshot", b"x", meta={"score": float("nan")})
    with pytest.raises(ValueError, match="too large"):
        store.put(SESSION, "snapshot", b"x", meta={"notes": "x" * 10_000})
    assert store.sessions() == [], "nothing was stored"


def test_list_by_kind_sessions_and_delete_session(store: EvidenceStore, tmp_path: Path):
    reference = store.put(SESSION, "reference_image", _photo(), content_type="image/jpeg")
    store.put(SESSION, "reference_embedding", _embedding(1), meta={"image": reference.id})
    snaps = [
        store.put(SESSION, "snapshot", bytes([i]) * 50, content_type="image/jpeg") for i in range(3)
    ]
    kept = store.put(OTHER, "snapshot", b"other session")

    assert [i.id for i in store.list(SESSION, "snapshot")] == [s.id for s in snaps]
    assert [i.kind for i in store.list(SESSION)] == [
        "reference_image",
        "reference_embedding",
        *["snapshot"] * 3,
    ]
    assert store.list(SESSION, "live_embedding") == [] and store.list("never-seen") == []
    assert store.sessions() == sorted([SESSION, OTHER])
    with pytest.raises(EvidenceNotFound):
        store.get("never-seen", snaps[0].id)
    with pytest.raises(EvidenceNotFound):
        store.get(SESSION, kept.id)

    assert store.delete_session(SESSION) == 5
    assert store.list(SESSION) == [] and store.sessions() == [OTHER]
    with pytest.raises(EvidenceNotFound):
        store.get(SESSION, snaps[0].id)
    assert not (tmp_path / "identity" / SESSION).exists(), "no empty folders left behind"
    assert store.delete_session(SESSION) == 0
    assert store.get(OTHER, kept.id)[1] == b"other session"


def test_a_crash_mid_write_leaves_nothing_that_reads_as_an_item(
    store: EvidenceStore, tmp_path: Path
):
    good = store.put(SESSION, "snapshot", _photo(), content_type="image/jpeg")
    whole = _file(store, SESSION, "snapshot", good.id).read_bytes()
    # what LocalStorage leaves when the process dies before the rename: a hidden temporary file
    torn_id = "TornTornTornTorn"
    folder = tmp_path / "identity" / SESSION / "snapshot"
    (folder / f".{torn_id}.1a2b3c4d.tmp").write_bytes(whole[: len(whole) // 2])
    (tmp_path / "identity" / OTHER).mkdir()
    (tmp_path / "identity" / OTHER / ".key.wrapped.5e6f7a8b.tmp").write_bytes(b"\0" * 20)

    assert [i.id for i in store.list(SESSION)] == [good.id] and store.count(SESSION) == 1
    with pytest.raises(EvidenceNotFound):
        store.get(SESSION, torn_id)
    assert store.sessions() == [SESSION] and store.list(OTHER) == []
    store.storage.discard_incomplete()
    assert not list((tmp_path / "identity").rglob("*.tmp"))
    assert store.get(SESSION, good.id)[0] == good


# -- retention --------------------------------------------------------------------------


@pytest.fixture
def db(config_factory):
    config = config_factory()
    config.data_dir.mkdir(parents=True, mode=0o700)
    database = Database(config.db_url)
    create_all(database)
    yield database, config
    database.close()


def _session(
    s, session_id: str, state: str = "ended", ended_ago: timedelta | None = timedelta(hours=1)
) -> None:
    ended = utcnow() - ended_ago if ended_ago is not None else None
    s.add(
        CallSession(
            id=session_id,
            business="loan_signing",
            state=state,
            customer_name="张三",
            created_at=utcnow() - timedelta(days=30),
            ended_at=ended,
        )
    )


def _recording(s, session_id: str, leg: int, expires_in: timedelta, *, hold: bool = False) -> str:
    recording_id = f"{session_id}-{leg}"
    s.add(
        Recording(
            id=recording_id,
            session_id=session_id,
            leg=leg,
            state="finalized",
            retention_until=utcnow() + expires_in,
            legal_hold=hold,
        )
    )
    return recording_id


def _purge(database, config, store, *, days: float = 0, dry_run: bool = False):
    with database.session() as s:
        report = retention.purge(
            s,
            config.recordings_dir,
            evidence=store,
            now=utcnow() + timedelta(days=days),
            orphan_days=config.identity_orphan_days,
            dry_run=dry_run,
        )
        s.commit()
    return report


def _log(database) -> list[tuple[str, str]]:
    with database.session() as s:
        return [(e.action, e.target) for e in s.exec(select(AccessLog).order_by(AccessLog.seq))]


def test_evidence_goes_with_the_last_recording_of_its_session_unless_held(db, master):
    database, config = db
    store = EvidenceStore.local(config.identity_dir, master)
    two_legs, held, orphan, waiting = (
        "two-legs-session",
        "held-session-001",
        "abandoned-sess-1",
        "still-queued-1",
    )
    with database.session() as s:
        for sid in (two_legs, held):
            _session(s, sid)
        _session(s, orphan, "abandoned", ended_ago=timedelta(hours=2))
        _session(s, waiting, "queued", ended_ago=None)
        s.flush()
        first = _recording(s, two_legs, 1, timedelta(days=-1))
        second = _recording(s, two_legs, 2, timedelta(days=10))
        held_recording = _recording(s, held, 1, timedelta(days=-1), hold=True)
        s.commit()
    for sid in (two_legs, held, orphan, waiting, "not-in-the-db-42"):
        store.put(sid, "reference_image", _photo(), content_type="image/jpeg")
        store.put(sid, "snapshot", b"snapshot " + sid.encode(), content_type="image/jpeg")

    dry = _purge(database, config, store, days=30, dry_run=True)
    assert {(e.session_id, e.items) for e in dry.evidence} == {(two_legs, 2), (orphan, 2)}
    assert len(store.sessions()) == 5 and _log(database) == []

    # today: the first leg expired, the second remains; the held one stays; the orphan is 2 h old
    now = _purge(database, config, store)
    assert [p.recording_id for p in now.recordings] == [first] and now.evidence == []
    assert store.count(two_legs) == 2 and store.count(held) == 2 and store.count(orphan) == 2

    # the orphan (no recording, abandoned) goes a day after the session ended; a queued one never
    later = _purge(database, config, store, days=1)
    assert [(e.session_id, e.items) for e in later.evidence] == [(orphan, 2)]
    assert "no recording" in later.evidence[0].reason and store.count(orphan) == 0

    # the second leg expires: the session's evidence goes with it, the held session's stays
    last = _purge(database, config, store, days=11)
    assert [p.recording_id for p in last.recordings] == [second]
    assert [e.session_id for e in last.evidence] == [two_legs] and store.count(two_legs) == 0
    assert (
        store.count(held) == 2
        and store.count(waiting) == 2
        and store.count("not-in-the-db-42") == 2
    )
    assert ("purge", second) in _log(database) and ("purge_evidence", two_legs) in _log(database)
    assert ("purge_evidence", orphan) in _log(database)

    with database.session() as s:
        retention.set_hold(s, held, False, retention.SYSTEM_USER)
        s.commit()
    released = _purge(database, config, store, days=11)
    assert [p.recording_id for p in released.recordings] == [held_recording]
    assert [e.session_id for e in released.evidence] == [held] and store.count(held) == 0
    assert sorted(store.sessions()) == sorted([waiting, "not-in-the-db-42"])
    with database.session() as s:
        assert access_log.verify(s).ok


def test_orphan_days_setting():
    assert from_env(environ={}).identity_orphan_days == 1
    assert from_env(environ={"VCOUNTER_IDENTITY_ORPHAN_DAYS": "7"}).identity_orphan_days == 7
    assert from_env(environ={"VCOUNTER_DATA_DIR": "/srv/vc"}).identity_dir == Path(
        "/srv/vc/identity"
    )


# -- export and purge from the command line ---------------------------------------------


async def test_export_carries_the_evidence_and_purge_takes_it(counter, tmp_path: Path):
    session_id, recording_id = await recorded_call(counter, seconds=0.5)
    config = counter.app[CONFIG]
    store = EvidenceStore.local(config.identity_dir, MasterKey.load(config.master_key_file))
    photo, snapshot = _photo("biden.jpg"), _photo("obama.jpg")
    reference = store.put(session_id, "reference_image", photo, content_type="image/jpeg")
    store.put(session_id, "reference_embedding", _embedding(3))
    snap = store.put(
        session_id, "snapshot", snapshot, content_type="image/jpeg", meta={"purpose": "agent"}
    )

    package, secret = tmp_path / "evidence.zip", tmp_path / "pass.txt"
    secret.write_text("correct horse battery staple\n")
    done = server_cli(config, "export", session_id, str(package), "--passphrase-file", str(secret))
    assert done.returncode == 0, done.stderr
    with zipfile.ZipFile(package) as z:
        names = set(z.namelist())
        index = json.loads(z.read("evidence/index.json"))
        readme = z.read("README.txt").decode()
        stored = {n: z.read(n) for n in names if n.startswith("evidence/")}
    assert [(e["kind"], e["sha256"], e["created_at"]) for e in index] == [
        ("reference_image", reference.sha256, reference.created_at),
        ("snapshot", snap.sha256, snap.created_at),
    ]
    assert f"evidence/snapshot-{snap.id}.jpg.enc" in names, "embeddings are not exported"
    assert snap.sha256 in readme and reference.sha256 in readme and "IDENTITY EVIDENCE" in readme
    for entry in index:
        assert hashlib.sha256(stored[entry["file"]]).hexdigest() == entry["stored_sha256"]
    assert all(
        photo[200:232] not in data and snapshot[200:232] not in data for data in stored.values()
    )
    assert server_cli(config, "verify", str(package)).returncode == 0

    out = tmp_path / "out"
    played = run_vcounter(
        "decrypt-export", str(package), str(out), "--passphrase-file", str(secret)
    )
    assert played.returncode == 0, played.stderr
    assert (out / "evidence" / f"snapshot-{snap.id}.jpg").read_bytes() == snapshot
    assert (out / "evidence" / f"reference_image-{reference.id}.jpg").read_bytes() == photo
    assert (out / "customer.webm").stat().st_size > 0

    # retention ends: the recording and, with it (its last one), the session's evidence
    def expire(s):
        row = s.get(Recording, recording_id)
        row.retention_until = utcnow() - timedelta(days=1)
        s.add(row)

    await counter.db.run(expire)
    dry = server_cli(config, "purge", "--dry-run")
    assert f"would delete identity evidence of session {session_id} (3 item(s)" in dry.stdout
    assert store.count(session_id) == 3
    purged = server_cli(config, "purge")
    assert purged.returncode == 0, purged.stderr
    assert f"deleted {recording_id}" in purged.stdout
    assert f"deleted identity evidence of session {session_id}" in purged.stdout
    assert store.sessions() == [] and not (config.recordings_dir / recording_id).exists()
    log = await counter.db.run(lambda s: [(e.action, e.target) for e in s.exec(select(AccessLog))])
    assert ("purge", recording_id) in log and ("purge_evidence", session_id) in log
    assert server_cli(config, "verify-log").returncode == 0

"""Recorder building blocks: keys, storage, chunked encryption, spool, timeline clock, segments."""

from __future__ import annotations

import hashlib
import io
import os
import random
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from recorder import (
    IntegrityError,
    LocalStorage,
    MasterKey,
    RecorderError,
    SessionRecorder,
    SigningKey,
    WrongKey,
    finalize,
    open_encrypted,
)
from recorder import segment_format as fmt
from recorder.chain import parse_chain_log
from recorder.encrypted_file import EncryptedWriter
from recorder.spool import PAGE, Spool
from recorder.track_clock import TrackClock

from .helpers import eventually

T0 = 1_700_000_000.0


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# -- keys -------------------------------------------------------------------------------


def test_master_key_file_wrap_and_wrong_key(tmp_path: Path):
    path = tmp_path / "secrets" / "master.key"
    key = MasterKey.create(path)
    assert mode(path) == 0o600 and mode(path.parent) == 0o700
    with pytest.raises(RecorderError, match="refusing to overwrite"):
        MasterKey.create(path)
    data_key = os.urandom(32)
    blob = key.wrap(data_key)
    assert MasterKey.load(path).unwrap(blob) == data_key
    with pytest.raises(WrongKey, match="not this one"):
        MasterKey.generate().unwrap(blob)
    corrupted = bytearray(blob)
    corrupted[-1] ^= 1
    with pytest.raises(IntegrityError):
        key.unwrap(bytes(corrupted))
    assert path.read_bytes().hex()[:8] not in repr(key)


def test_signing_key_file_sign_verify_fingerprint(tmp_path: Path):
    path = tmp_path / "signing.pem"
    key = SigningKey.create(path)
    assert mode(path) == 0o600
    loaded = SigningKey.load(path)
    assert loaded.public_pem() == key.public_pem()
    signature = loaded.sign(b"manifest")
    assert SigningKey.verify(key.public_pem(), signature, b"manifest")
    assert not SigningKey.verify(key.public_pem(), signature, b"manifest!")
    assert not SigningKey.verify(SigningKey.generate().public_pem(), signature, b"manifest")
    raw = serialization.load_pem_public_key(key.public_pem()).public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    assert key.fingerprint() == hashlib.sha256(raw).hexdigest()
    assert "PRIVATE" not in repr(key) and key.fingerprint()[:16] in repr(key)


# -- storage ----------------------------------------------------------------------------


def test_local_storage_atomic_put_list_and_names(tmp_path: Path):
    storage = LocalStorage(tmp_path / "s")
    storage.put_bytes("segments/000001.seg", b"one")
    storage.put_bytes("segments/000001.seg", b"uno")
    storage.put_bytes("chain.log", b"")
    assert storage.list() == ["chain.log", "segments/000001.seg"]
    assert storage.list("segments/") == ["segments/000001.seg"]
    blob = storage.open("segments/000001.seg")
    assert (blob.size, blob.read(1, 10)) == (3, b"no")
    blob.close()
    assert (
        mode(tmp_path / "s" / "segments") == 0o700 and mode(tmp_path / "s" / "chain.log") == 0o600
    )
    # every directory it creates is private, not only the last one (session ids are names)
    storage.put_bytes("2026/11/sess-1/manifest.json", b"{}")
    for d in ("s", "s/2026", "s/2026/11", "s/2026/11/sess-1"):
        assert mode(tmp_path / d) == 0o700, d
    (tmp_path / "s" / "segments" / ".000002.seg.abcd.tmp").write_bytes(b"torn")
    assert storage.list("segments/") == ["segments/000001.seg"]
    storage.discard_incomplete()
    assert sorted(p.name for p in (tmp_path / "s" / "segments").iterdir()) == ["000001.seg"]
    for bad in ("../x", "/etc/passwd", "a/../../b", ".hidden", ""):
        with pytest.raises(RecorderError):
            storage.put_bytes(bad, b"")
    with pytest.raises(FileNotFoundError):
        storage.open("nope")
    storage.delete("chain.log")
    assert not storage.exists("chain.log")


# -- chunked encryption -----------------------------------------------------------------


def encrypt(tmp_path: Path, plaintext: bytes, key: bytes, chunk_size: int = 1000) -> Path:
    storage = LocalStorage(tmp_path)
    out = storage.create("f.enc")
    writer = EncryptedWriter(out, key, len(plaintext), chunk_size=chunk_size)
    for i in range(0, len(plaintext), 777):
        writer.write(plaintext[i : i + 777])
    writer.close()
    out.commit()
    path = tmp_path / "f.enc"
    assert writer.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    return path


def test_encrypted_file_ranges(tmp_path: Path):
    key, plaintext = os.urandom(32), os.urandom(10_500)
    path = encrypt(tmp_path, plaintext, key)
    assert plaintext[:64] not in path.read_bytes()
    rng = random.Random(1)
    with open_encrypted(path, key) as f:
        assert (f.size, f.chunks) == (10_500, 11)
        cases = [(0, 0), (0, 10_500), (999, 2), (1000, 1000), (10_499, 5), (10_500, 1), (20_000, 3)]
        cases += [(rng.randrange(10_600), rng.randrange(3000)) for _ in range(200)]
        for offset, length in cases:
            assert f.read(offset, length) == plaintext[offset : offset + length], (offset, length)
        with pytest.raises(ValueError):
            f.read(-1, 5)
        assert b"".join(f.iter_plaintext()) == plaintext
    empty = encrypt(tmp_path / "empty", b"", key)
    with open_encrypted(empty, key) as f:
        assert f.size == 0 and f.read(0, 10) == b""


def test_encrypted_file_tamper_truncation_wrong_key(tmp_path: Path):
    key = os.urandom(32)
    path = encrypt(tmp_path, os.urandom(5000), key)
    with pytest.raises(WrongKey):
        open_encrypted(path, os.urandom(32))
    data = path.read_bytes()
    path.write_bytes(data[:-10])
    with pytest.raises(IntegrityError, match="truncated"):
        open_encrypted(path, key)
    flipped = bytearray(data)
    flipped[40 + 2 * 1016 + 5] ^= 1  # inside chunk 2
    path.write_bytes(bytes(flipped))
    with open_encrypted(path, key) as f:
        assert len(f.read(0, 2000)) == 2000
        with pytest.raises(IntegrityError, match="chunk 2"):
            f.read(1990, 20)


# -- spool ------------------------------------------------------------------------------


def test_spool_behaves_like_a_file_and_stores_only_ciphertext(tmp_path: Path):
    spool, model = Spool(tmp_path), io.BytesIO()
    rng = random.Random(7)
    marker = b"PLAINTEXT-MARKER" * 64
    for _ in range(300):
        if rng.random() < 0.2:
            where = rng.randrange(model.getbuffer().nbytes + 1)
            spool.seek(where)
            model.seek(where)
        data = (
            marker[: rng.randrange(1, len(marker))]
            if rng.random() < 0.5
            else os.urandom(rng.randrange(1, 3 * PAGE))
        )
        assert spool.write(data) == len(data)
        model.write(data)
        assert spool.tell() == model.tell()
    spool.seek(0, os.SEEK_END)
    assert spool.tell() == spool.size == len(model.getvalue())
    assert b"".join(spool.iter_plaintext()) == model.getvalue()
    spool._file.seek(0)
    assert b"PLAINTEXT-MARKER" not in spool._file.read()
    spool.close()
    assert list(tmp_path.iterdir()) == []


# -- timeline clock ---------------------------------------------------------------------


def test_track_clock_keeps_gaps_and_reanchors_new_streams():
    clock = TrackClock(90_000, origin=T0)
    assert clock.pts_us(0, T0 + 0.5) == (500_000, True)
    assert clock.pts_us(3000, T0 + 0.55) == (533_333, False)  # jitter on arrival does not matter
    assert clock.pts_us(30_000, T0 + 0.9) == (833_333, False)  # lost frames keep their gap
    # reconnect: timestamps start again near 0 -> anchored at the new arrival
    assert clock.pts_us(1234, T0 + 5.0) == (5_000_000, True)
    assert clock.pts_us(1234 + 9000, T0 + 5.1) == (5_100_000, False)
    # a stream jumping far ahead of the wall clock is a new stream too
    assert clock.pts_us(10_000_000_000, T0 + 6.0) == (6_000_000, True)
    clock.restart()
    assert clock.pts_us(10_000_003_000, T0 + 7.0) == (7_000_000, True)


# -- segments ---------------------------------------------------------------------------


def test_segment_round_trip_and_binding(video_clip):
    assert fmt.vp8_keyframe_size(video_clip.packets[0]) == (640, 480)
    assert fmt.vp8_keyframe_size(video_clip.packets[1]) is None
    body = bytearray()
    fmt.append_record(
        body, 0, fmt.FLAG_KEYFRAME, 33_000, 1_700_000_000_033_000, video_clip.packets[0]
    )
    fmt.append_record(body, fmt.EVENT_TRACK, 0, 40_000, 1, b'{"kind":"x","data":{}}')
    plaintext = fmt.build({"index": 3}, body)
    aead = AESGCM(os.urandom(32))
    sealed = fmt.seal(aead, "s1", 3, plaintext)
    header, records = fmt.parse(fmt.unseal(aead, "s1", 3, sealed), 3)
    records = list(records)
    assert header == {"index": 3}
    assert records[0] == fmt.Record(0, 1, 33_000, 1_700_000_000_033_000, video_clip.packets[0])
    assert records[1].track == fmt.EVENT_TRACK
    for session, index in (("s1", 4), ("s2", 3)):  # moved to another place or session: refused
        with pytest.raises(IntegrityError) as err:
            fmt.unseal(aead, session, index, sealed)
        assert err.value.segment == index
    with pytest.raises(IntegrityError, match="truncated"):
        list(fmt.parse(plaintext[:-5], 3)[1])


def test_chain_log_torn_line():
    good = f"000001 10 {'a' * 64} {'b' * 64}\n"
    entries, bad = parse_chain_log(good + f"000002 10 {'c' * 64} {'d' * 20}")
    assert [e.index for e in entries] == [1] and len(bad) == 1


# -- recorder lifecycle -----------------------------------------------------------------


async def test_recorder_seals_on_its_own_and_rejects_bad_use(tmp_path: Path, audio_clip):
    master, signer = MasterKey.generate(), SigningKey.generate()
    rec = SessionRecorder("s1", tmp_path / "s1", master, segment_seconds=0.05)
    await rec.start()
    with pytest.raises(RecorderError):
        rec.write(
            "Customer 1", "audio", b"x", timestamp=0, clock_rate=48000, keyframe=True, arrival=T0
        )
    with pytest.raises(RecorderError):
        rec.write(
            "customer", "screen", b"x", timestamp=0, clock_rate=48000, keyframe=True, arrival=T0
        )
    for i, packet in enumerate(audio_clip.packets[:20]):
        rec.write(
            "customer",
            "audio",
            packet,
            timestamp=i * 960,
            clock_rate=48000,
            keyframe=True,
            arrival=rec.origin + i * 0.02,
        )
    await eventually(
        lambda: rec.segments_stored >= 1, timeout=2
    )  # the ticker sealed it without being asked
    with pytest.raises(RecorderError, match="not closed"):
        finalize(tmp_path / "s1", master, signer, {})
    await rec.aclose()
    await rec.aclose()
    with pytest.raises(RecorderError, match="closed"):
        rec.event("late")
    manifest = finalize(tmp_path / "s1", master, signer, {})
    assert [o["party"] for o in manifest.outputs] == ["customer"]
    assert manifest.outputs[0]["packets"] == {"audio": 20}


async def test_finalize_names_a_missing_segment(tmp_path: Path, audio_clip):
    master = MasterKey.generate()
    async with SessionRecorder("s1", tmp_path, master, clock=lambda: T0) as rec:
        for i, packet in enumerate(audio_clip.packets[:30]):
            rec.write(
                "agent",
                "audio",
                packet,
                timestamp=i * 960,
                clock_rate=48000,
                keyframe=True,
                arrival=T0 + i * 0.02,
            )
            if i % 10 == 9:
                await rec.seal()
    (tmp_path / "segments" / "000002.seg").unlink()
    with pytest.raises(IntegrityError) as err:
        finalize(tmp_path, master, SigningKey.generate(), {})
    assert err.value.segment == 2 and "000002: missing" in str(err.value)

"""Dual recording end to end: real VP8/Opus frames in, encrypted WebMs and a signed manifest out.

Frames come from the shared pre-encoded clips (fixtures ``video_clip`` /
``audio_clip``, looped with continuous timestamps) with simulated arrival
times; the recorder's clock is pinned so the timeline is exact.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import io
import json
import os
import pickle
import sys
from dataclasses import dataclass
from pathlib import Path

import av
import pytest

from recorder import (
    IntegrityError,
    LocalStorage,
    Manifest,
    MasterKey,
    SessionRecorder,
    SigningKey,
    StorageFull,
    WrongKey,
    finalize,
    find_interrupted,
    open_encrypted,
    read_data_key,
    recover,
    segment_writer,
    verify,
)
from recorder.manifest import canonical_json

from .helpers import REPO, FastTime
from .recordings import decrypt_output, demux

T0 = 1_700_000_000.0
DELAY = 0.02  # network delay of every frame in the simulated call
METADATA = {
    "participants": {"customer": "Zhang San", "agent": "alice"},
    "agent": "alice",
    "business_type": "wealth_product",
    "wall_clock": {"start": T0, "end": T0 + 4},
}


@dataclass
class Fed:
    """What was written for one track: (recording-timeline seconds, payload) per frame."""

    frames: list[tuple[float, bytes]]


def stream(clip, seconds: float, *, start: float = 0.0, drop: range = range(0)):
    """One RTP stream of a clip, timestamps from 0: (arrival, payload, keyframe, timestamp, after loss)."""
    for i in range(round(seconds * clip.clock_rate / clip.ticks)):
        if i in drop:
            continue
        j = i % len(clip.packets)
        ts = i * clip.ticks
        yield (
            T0 + start + ts / clip.clock_rate + DELAY,
            clip.packets[j],
            clip.keyframes[j],
            ts,
            i - 1 in drop,
        )


async def play(
    rec: SessionRecorder, tracks: dict, *, seal_every: float = 1.0, seal=None
) -> dict[tuple[str, str], Fed]:
    """Write interleaved frames of several streams in arrival order, sealing every ``seal_every`` s.

    Returns, per track, the frames a player should get back.
    """
    items = []
    for (party, kind), streams in tracks.items():
        for n, (clip, frames) in enumerate(streams):
            items += [
                (a, party, kind, d, k, ts, clip.clock_rate, gap, n) for a, d, k, ts, gap in frames
            ]
    items.sort(key=lambda item: item[0])
    fed: dict[tuple[str, str], Fed] = {key: Fed([]) for key in tracks}
    decodable: dict[tuple[str, str, int], bool] = {}
    next_seal = T0 + seal_every
    for arrival, party, kind, data, key, ts, rate, gap, n in items:
        if arrival >= next_seal:
            await (seal or rec.seal)()
            next_seal += seal_every
        rec.write(
            party,
            kind,
            data,
            timestamp=ts,
            clock_rate=rate,
            keyframe=key,
            arrival=arrival,
            discontinuity=gap,
        )
        # what a player can decode: video from a stream's first keyframe, and again after loss
        ok = decodable.get((party, kind, n), False) and not gap
        decodable[(party, kind, n)] = ok = ok or key
        if ok:
            fed[(party, kind)].frames.append((arrival - T0, data))
    return fed


def call(video, audio, seconds: float) -> dict:
    return {
        (party, kind): [(clip, stream(clip, seconds))]
        for party in ("customer", "agent")
        for kind, clip in (("video", video), ("audio", audio))
    }


@pytest.fixture
def keys(tmp_path: Path) -> tuple[MasterKey, SigningKey]:
    return MasterKey.create(tmp_path / "keys" / "master.key"), SigningKey.create(
        tmp_path / "keys" / "signing.pem"
    )


@pytest.fixture
async def recorded(tmp_path: Path, keys, video_clip, audio_clip):
    """A 4 s call; the customer loses video and audio packets and reconnects at 2.5 s."""
    master, signer = keys
    directory = tmp_path / "sessions" / "s1"
    async with SessionRecorder(
        "s1", directory, master, clock=lambda: T0, segment_seconds=60
    ) as rec:
        rec.event("call_started", {"customer": "Zhang San"}, at=T0)
        tracks = call(video_clip, audio_clip, 4.0)
        for kind, clip in (("video", video_clip), ("audio", audio_clip)):
            tracks[("customer", kind)] = [
                (clip, stream(clip, 2.0, drop=range(15, 20) if kind == "video" else range(40, 45))),
                (clip, stream(clip, 1.5, start=2.5)),  # new stream, timestamps from 0 again
            ]
        fed = await play(rec, tracks)
        rec.event("hang_up", at=T0 + 4.0)
    manifest = finalize(directory, master, signer, METADATA, scratch_dir=tmp_path / "scratch")
    return directory, manifest, fed


async def test_finalized_recordings_play_in_sync_and_match_the_sources(recorded, keys):
    directory, manifest, fed = recorded
    for party in ("customer", "agent"):
        webm = decrypt_output(directory, keys[0], party)
        with av.open(io.BytesIO(webm)) as container:
            assert [s.codec_context.name for s in container.streams] == ["vp8", "opus"]
            assert abs(container.duration / 1e6 - 4.0) < 0.2
            video = container.streams.video[0]
            frames = list(container.decode(video))
            assert (frames[0].width, frames[0].height) == (640, 480)
            assert all((f.width, f.height) == (640, 480) for f in frames)
        packets = demux(webm)
        # audio and video start together, and the payloads are the ones fed, unchanged
        assert abs(packets["video"][0][0] - packets["audio"][0][0]) < 0.03
        for kind in ("video", "audio"):
            assert [d for _, d in packets[kind]] == [d for _, d in fed[(party, kind)].frames]
            for (pts, _), (sent, _) in zip(packets[kind], fed[(party, kind)].frames, strict=True):
                assert abs(pts - sent) < 0.002 + DELAY
    outputs = {o["party"]: o for o in manifest.outputs}
    assert abs(outputs["agent"]["duration_ms"] - 4000) < 100


async def test_packet_loss_keeps_gaps_and_reconnect_resyncs(recorded, keys):
    directory, _, _ = recorded
    packets = demux(decrypt_output(directory, keys[0], "customer"))
    video = [pts for pts, _ in packets["video"]]
    audio = [pts for pts, _ in packets["audio"]]
    # lost packets leave gaps of their duration; undecodable video waits for the next keyframe
    assert video[15] == pytest.approx(DELAY + 30 / 30, abs=0.002)
    assert audio[40] == pytest.approx(DELAY + 45 * 0.020, abs=0.002)
    # after the reconnect both tracks restart at the new stream's arrival, together
    after_v = next(p for p in video if p > 2.1)
    after_a = next(p for p in audio if p > 2.1)
    assert after_v == pytest.approx(2.5 + DELAY, abs=0.002)
    assert abs(after_v - after_a) < 0.1


async def test_manifest_timeline_and_verify(recorded, keys):
    directory, manifest, _ = recorded
    data = manifest.data
    assert data["metadata"] == METADATA
    assert data["recording"]["complete"] and not data["recovered"]
    assert [s["index"] for s in data["segments"]] == list(range(1, len(data["segments"]) + 1))
    assert len(data["segments"]) >= 4
    timeline = json.loads((directory / "timeline.json").read_bytes())
    assert [(e["kind"], e["offset_ms"]) for e in timeline["events"]] == [
        ("call_started", 0),
        ("hang_up", 4000),
    ]
    assert timeline["events"] == data["timeline"]["events"]
    assert (directory / "manifest.json").read_bytes() == canonical_json(data)
    assert SigningKey.verify(
        (directory / "public_key.pem").read_bytes(),
        (directory / "manifest.sig").read_bytes(),
        (directory / "manifest.json").read_bytes(),
    )
    trusted = keys[1].public_pem()
    result = verify(directory, keys[0], trusted)
    assert result.ok, result.problems
    assert result.reason.startswith("verified")
    assert verify(directory).ok  # hashes and signature without any key


async def test_nothing_plaintext_on_disk(recorded, video_clip, audio_clip):
    directory, _, _ = recorded
    needles = [
        video_clip.packets[0][100:132],
        video_clip.packets[5][-32:],
        audio_clip.packets[7][-24:],
        b"Zhang San",
        b"OpusHead",
        b"webm",
    ]
    for path in directory.rglob("*"):
        if path.is_file() and path.name not in ("manifest.json", "timeline.json"):
            content = path.read_bytes()
            assert not any(n in content for n in needles), path
    for path in (directory / "segments").iterdir():
        assert not any(n in path.read_bytes() for n in needles)
    assert not any((directory.parent.parent / "scratch").iterdir())
    assert {p.name for p in directory.iterdir()} == {
        "recording.json",
        "key.wrapped",
        "segments",
        "chain.log",
        "customer.webm.enc",
        "agent.webm.enc",
        "timeline.json",
        "manifest.json",
        "manifest.sig",
        "public_key.pem",
    }


async def test_range_reads_across_chunks(recorded, keys):
    directory, _, _ = recorded
    webm = decrypt_output(directory, keys[0], "agent")
    data_key = read_data_key(LocalStorage(directory), keys[0])
    with open_encrypted(directory / "agent.webm.enc", data_key) as f:
        assert f.size == len(webm) > 3 * 65536
        for offset, length in [
            (0, 1),
            (65535, 2),
            (65536 - 10, 65536 + 20),
            (131000, 70000),
            (f.size - 5, 100),
            (f.size, 10),
            (12345, 0),
        ]:
            assert f.read(offset, length) == webm[offset : offset + length]


async def test_flipped_byte_in_segment_is_named(recorded, keys):
    directory, _, _ = recorded
    path = directory / "segments" / "000002.seg"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    result = verify(directory, keys[0], keys[1].public_pem())
    assert not result.ok
    assert result.reason == "segment 000002: sha256 mismatch"
    assert verify(directory).reason == "segment 000002: sha256 mismatch"


async def test_flipped_byte_in_output_fails(recorded, keys):
    directory, _, _ = recorded
    path = directory / "customer.webm.enc"
    data = bytearray(path.read_bytes())
    data[70000] ^= 0x80
    path.write_bytes(bytes(data))
    result = verify(directory, keys[0])
    assert not result.ok and result.reason == "customer.webm.enc: sha256 mismatch"
    with pytest.raises(IntegrityError):
        with open_encrypted(path, read_data_key(LocalStorage(directory), keys[0])) as f:
            f.read(0, f.size)


async def test_flipped_byte_in_manifest_breaks_signature(recorded, keys):
    directory, _, _ = recorded
    path = directory / "manifest.json"
    raw = path.read_bytes()
    path.write_bytes(raw.replace(b'"alice"', b'"alicf"', 1))
    result = verify(directory, keys[0], keys[1].public_pem())
    assert not result.ok
    assert result.reason.startswith("manifest: signature invalid")


async def test_manifest_re_signed_by_another_key_fails_against_trusted_key(recorded, keys):
    directory, manifest, _ = recorded
    forged = dict(manifest.data, metadata={**METADATA, "agent": "mallory"})
    forger = SigningKey.generate()
    forged["signing_key"] = {"algorithm": "Ed25519", "fingerprint": forger.fingerprint()}
    Manifest.sign(forged, forger).store(LocalStorage(directory))
    assert verify(directory).ok  # self-consistent...
    result = verify(directory, public_key_pem=keys[1].public_pem())  # ...but not by our key
    assert not result.ok
    assert result.reason.startswith("manifest: signed by another key")


async def test_wrong_master_key(recorded, keys):
    directory, _, _ = recorded
    other = MasterKey.generate()
    with pytest.raises(WrongKey):
        read_data_key(LocalStorage(directory), other)
    with pytest.raises(WrongKey):
        finalize(directory, other, keys[1], METADATA)
    result = verify(directory, other)
    assert not result.ok and "not this one" in result.reason
    assert repr(other).startswith("MasterKey(key_id=")


async def test_disk_full_while_recording_loses_nothing(
    tmp_path: Path, keys, video_clip, audio_clip
):
    class DiskFull(LocalStorage):
        failures = 4

        def put_bytes(self, name: str, data: bytes) -> None:
            if name.startswith("segments/") and self.failures:
                self.failures -= 1
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            super().put_bytes(name, data)

    alerts: list = []  # of StorageAlert
    storage = DiskFull(tmp_path / "s2")
    rec = SessionRecorder(
        "s2", storage, keys[0], clock=lambda: T0, segment_seconds=60, on_alert=alerts.append
    )
    await rec.start()
    failed = []

    async def seal() -> None:
        try:
            await rec.seal()
        except StorageFull as exc:  # reported, and the data is kept
            failed.append(exc)

    fed = await play(rec, call(video_clip, audio_clip, 3.0), seal=seal)
    assert len(failed) == 3 and rec.segments_stored == 0 and rec.pending_bytes > 0
    await rec.aclose()
    await rec.aclose()  # idempotent
    assert storage.failures == 0 and rec.pending_bytes == 0
    # told at once (then at most every 10 s), and again once everything held is stored
    assert [a.state for a in alerts] == ["failing", "recovered"], alerts
    assert "disk full" in alerts[0].message and "s2" in alerts[0].message
    assert "nothing lost" in alerts[1].message and not rec.storage_failing
    finalize(storage, keys[0], keys[1], METADATA)
    assert verify(storage, keys[0], keys[1].public_pem()).ok
    for party in ("customer", "agent"):
        packets = demux(decrypt_output(tmp_path / "s2", keys[0], party))
        for kind in ("video", "audio"):
            assert [d for _, d in packets[kind]] == [d for _, d in fed[(party, kind)].frames]


class _Disk(LocalStorage):
    """A local disk that is full (segments refused) while ``full`` is set."""

    full = True

    def put_bytes(self, name: str, data: bytes) -> None:
        if self.full and name.startswith("segments/"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        super().put_bytes(name, data)


async def test_close_waits_as_long_as_storage_fails(tmp_path: Path, keys, audio_clip, monkeypatch):
    """A disk still full at hang-up, for longer than any timeout (the recorder's clock runs 20
    times fast: 3 s here are a minute): the close waits, gives nothing up, and stores everything
    once space returns."""
    monkeypatch.setattr(segment_writer, "time", FastTime(20))
    alerts: list = []  # of StorageAlert
    storage = _Disk(tmp_path / "s5")
    rec = SessionRecorder(
        "s5", storage, keys[0], clock=lambda: T0, segment_seconds=60, on_alert=alerts.append
    )
    await rec.start()
    tracks = {("agent", "audio"): [(audio_clip, stream(audio_clip, 3.0))]}
    fed = await play(rec, tracks, seal_every=60)  # all in the last segment, cut by the close
    closing = asyncio.create_task(rec.aclose())
    await asyncio.sleep(3.0)
    assert not closing.done(), "the close gave up while the disk was full"
    assert rec.pending_bytes > 0 and rec.segments_stored == 0
    storage.full = False
    await asyncio.wait_for(closing, 5)
    assert rec.pending_bytes == 0 and not rec.storage_failing
    states = [a.state for a in alerts]
    # told at once, every 10 (fast) seconds while it lasts, and once it is over
    assert states[0] == "failing" and states.count("failing") >= 3 and states[-1] == "recovered"
    finalize(storage, keys[0], keys[1], METADATA)
    assert verify(storage, keys[0], keys[1].public_pem()).ok
    packets = demux(decrypt_output(tmp_path / "s5", keys[0], "agent"))
    assert [d for _, d in packets["audio"]] == [d for _, d in fed[("agent", "audio")].frames]


async def test_memory_limit_pauses_media_and_keeps_what_was_recorded(
    tmp_path: Path, keys, video_clip, audio_clip
):
    """Storage fails until ``max_pending_bytes`` are held: from then on new media is not recorded
    (the timeline says from when to when, the alert says so), nothing recorded before is dropped,
    and media is recorded again once storage has taken what was held."""
    alerts: list = []  # of StorageAlert
    storage = _Disk(tmp_path / "s6")
    rec = SessionRecorder(
        "s6", storage, keys[0], clock=lambda: T0, segment_seconds=60, on_alert=alerts.append
    )
    await rec.start()
    seals = 0

    async def seal() -> None:  # every 0.5 s of the call
        nonlocal seals
        seals += 1
        if seals == 4:  # 2.0 s: space is back
            storage.full = False
        with contextlib.suppress(StorageFull):
            await rec.seal()
        if seals == 2:  # 1.0 s: memory is full
            rec.max_pending_bytes = rec.pending_bytes

    fed = await play(rec, call(video_clip, audio_clip, 3.0), seal_every=0.5, seal=seal)
    await rec.aclose()
    assert [a.state for a in alerts] == ["failing", "paused", "recovered"], alerts
    assert alerts[-1].not_recorded == rec.frames_not_recorded > 0
    assert "not recorded" in alerts[-1].message
    finalize(storage, keys[0], keys[1], METADATA)
    assert verify(storage, keys[0], keys[1].public_pem()).ok
    events = json.loads((tmp_path / "s6" / "timeline.json").read_bytes())["events"]
    paused = next(e for e in events if e["kind"] == "recording_paused")
    resumed = next(e for e in events if e["kind"] == "recording_resumed")
    assert paused["offset_ms"] == pytest.approx(1000, abs=40)
    assert resumed["offset_ms"] == pytest.approx(2000, abs=40)
    assert resumed["data"]["not_recorded_frames"] == rec.frames_not_recorded
    keyframes = {p for p, k in zip(video_clip.packets, video_clip.keyframes, strict=True) if k}
    for party in ("customer", "agent"):
        packets = demux(decrypt_output(tmp_path / "s6", keys[0], party))
        for kind in ("video", "audio"):
            expected, waiting = [], False
            for t, data in fed[(party, kind)].frames:
                if 1.0 <= t < 2.0:  # not recorded; video goes on at the next keyframe
                    waiting = kind == "video"
                    continue
                if waiting and data not in keyframes:
                    continue
                waiting = False
                expected.append(data)
            got = [d for _, d in packets[kind]]
            # everything before the pause, nothing of it, everything after
            assert got == expected, (party, kind, len(got), len(expected))


CRASHING_RECORDER = """
import asyncio, pickle, sys
from recorder import MasterKey, SessionRecorder

video, keyframes, audio = pickle.load(open(sys.argv[1], "rb"))
T0 = 1_700_000_000.0

async def main():
    rec = SessionRecorder("s3", sys.argv[2], MasterKey.load(sys.argv[3]), clock=lambda: T0, segment_seconds=3600)
    await rec.start()
    frames = sorted(
        [(T0 + i / 30, "video", video[i % len(video)], keyframes[i % len(video)], i * 3000, 90000) for i in range(120)]
        + [(T0 + i / 50, "audio", audio[i % len(audio)], True, i * 960, 48000) for i in range(200)]
    )
    second = 1
    for arrival, kind, data, key, ts, rate in frames:
        if arrival >= T0 + second and second <= 3:  # seal 0-1, 1-2, 2-3 s; 3-4 s stays open
            await rec.seal()
            print("sealed", second, flush=True)
            second += 1
        for party in ("customer", "agent"):
            rec.write(party, kind, data, timestamp=ts, clock_rate=rate, keyframe=key, arrival=arrival)
    print("unsealed", flush=True)
    await asyncio.sleep(60)

asyncio.run(main())
"""


async def test_kill_9_then_recover(tmp_path: Path, keys, video_clip, audio_clip):
    master, signer = keys
    clips = tmp_path / "clips.pickle"
    clips.write_bytes(pickle.dumps((video_clip.packets, video_clip.keyframes, audio_clip.packets)))
    root = tmp_path / "sessions"
    (root / "done").mkdir(parents=True)
    (root / "done" / "recording.json").write_text("{}")
    (root / "done" / "manifest.json").write_text("{}")
    directory = root / "s3"
    master_path = tmp_path / "keys" / "master.key"
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        CRASHING_RECORDER,
        str(clips),
        str(directory),
        str(master_path),
        cwd=REPO,
        stdout=asyncio.subprocess.PIPE,
    )
    assert child.stdout is not None
    try:
        lines = [
            (await asyncio.wait_for(child.stdout.readline(), 30)).decode().strip() for _ in range(4)
        ]
        assert lines == ["sealed 1", "sealed 2", "sealed 3", "unsealed"]
    finally:
        child.kill()  # SIGKILL: no cleanup of any kind
        await child.wait()
    # a torn write of the next segment, as a filesystem without atomic rename might leave it
    segments = sorted((directory / "segments").iterdir())
    assert [p.name for p in segments] == ["000001.seg", "000002.seg", "000003.seg"]
    (directory / "segments" / "000004.seg").write_bytes(segments[-1].read_bytes()[:5000])

    assert find_interrupted(root) == [directory]
    manifest = recover(directory, master, signer, METADATA)
    assert manifest.data["recovered"] and not manifest.data["recording"]["complete"]
    assert manifest.data["dropped"] == [{"index": 4, "reason": "torn write", "size": 5000}]
    assert (directory / "dropped" / "000004.seg").exists()
    result = verify(directory, master, signer.public_pem())
    assert result.ok, result.problems
    assert any("recovered" in note for note in result.notes)
    assert find_interrupted(root) == []
    # 4 s were fed; only the unsealed last second is lost
    for party in ("customer", "agent"):
        with av.open(io.BytesIO(decrypt_output(directory, master, party))) as container:
            assert abs(container.duration / 1e6 - 3.0) < 0.2
            assert len(list(container.decode(video=0))) == 90
    assert recover(directory, master, signer, METADATA).raw == manifest.raw  # idempotent


async def test_crash_between_segment_and_chain_log_keeps_the_segment(
    tmp_path: Path, keys, audio_clip
):
    master, signer = keys
    async with SessionRecorder("s4", tmp_path, master, clock=lambda: T0) as rec:
        for i, packet in enumerate(audio_clip.packets[:60]):
            rec.write(
                "agent",
                "audio",
                packet,
                timestamp=i * 960,
                clock_rate=48000,
                keyframe=True,
                arrival=T0 + i * 0.02,
            )
            if i % 20 == 19:
                await rec.seal()
    chain_log = tmp_path / "chain.log"
    lines = chain_log.read_text().splitlines(keepends=True)
    chain_log.write_text("".join(lines[:-2]) + lines[-2][:30])  # last entry lost, one torn
    (tmp_path / ".manifest.json.1234.tmp").write_text("half")
    manifest = recover(tmp_path, master, signer, METADATA)
    assert manifest.data["dropped"] == [] and manifest.data["recording"]["complete"]
    assert len(manifest.data["segments"]) == len(lines)
    assert not (tmp_path / ".manifest.json.1234.tmp").exists()
    assert verify(tmp_path, master, signer.public_pem()).ok
    assert manifest.outputs[0]["packets"] == {"audio": 60}


@pytest.mark.browser
async def test_chromium_plays_and_seeks_both_recordings(recorded, keys, tmp_path: Path):
    from playwright.async_api import async_playwright

    from .browser import CHROMIUM_ARGS, require_chromium

    directory, _, _ = recorded
    for party in ("customer", "agent"):  # plaintext only in this test's temp dir
        (tmp_path / f"{party}.webm").write_bytes(decrypt_output(directory, keys[0], party))
    (tmp_path / "index.html").write_text(
        '<video id="customer" src="customer.webm" muted></video>'
        '<video id="agent" src="agent.webm" muted></video>'
    )
    script = """async (id) => {
        const v = document.getElementById(id);
        if (v.readyState < 1) await new Promise(r => v.addEventListener('loadedmetadata', r, {once: true}));
        v.currentTime = 2.7;
        await new Promise(r => v.addEventListener('seeked', r, {once: true}));
        await v.play();
        await new Promise(r => setTimeout(r, 600));
        v.pause();
        return {duration: v.duration, width: v.videoWidth, height: v.videoHeight,
                time: v.currentTime, error: v.error && v.error.message};
    }"""
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=require_chromium(), args=CHROMIUM_ARGS)
        try:
            page = await browser.new_page()
            await page.goto(f"file://{tmp_path}/index.html")
            for party in ("customer", "agent"):
                state = await page.evaluate(script, party)
                assert state["error"] is None
                assert (state["width"], state["height"]) == (640, 480)
                assert abs(state["duration"] - 4.0) < 0.2
                assert 2.9 < state["time"] < 4.0  # played on from the seek point
        finally:
            await browser.close()

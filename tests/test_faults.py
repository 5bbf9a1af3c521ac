"""Reliability: what the counter survives without losing what it recorded.

A real ``vcounter serve`` killed with SIGKILL in the middle of a call, and a real full disk: a
small tmpfs (``mount -t tmpfs``, so root) that a file fills and leaves again, under the
recordings -- and under the database too -- when the agent accepts, during the call and at
hang-up. Every case ends with the recording checked the way an auditor would: it verifies, and
the media recorded before the fault is in it.
"""

from __future__ import annotations

import asyncio
import errno
import json
import os
import subprocess
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import select

from recorder import MasterKey, SigningKey, segment_writer, verify
from recorder.storage import LocalStorage, read_all
from server.appkeys import CONFIG
from server.db import CallSession, Database, Recording, SessionEvent, utcnow
from signaling.contrib.headless import HeadlessParticipant

from .helpers import PASSWORD, FastTime, eventually, session_events
from .recordings import decrypt_output, demux, recorded_call, wait_recordings
from .server_process import ServerProcess

pytestmark = pytest.mark.slow


class Disk:
    """A tmpfs of ``size_mb`` mounted at ``path``: :meth:`fill` takes all its free space (a file of
    zeros), :meth:`free` gives it back."""

    def __init__(self, path: Path, size_mb: int) -> None:
        self.path = path
        path.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size_mb}m,mode=0700", "tmpfs", str(path)],
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs (root needed): {done.stderr.strip()}")
        self._filler = path / "filler"

    def fill(self) -> None:
        with open(self._filler, "ab", buffering=0) as f:
            for block in (1 << 20, 1 << 12):
                try:
                    while True:
                        f.write(bytes(block))
                except OSError as exc:
                    assert exc.errno == errno.ENOSPC, exc
        assert os.statvfs(self.path).f_bavail == 0

    def free(self) -> None:
        self._filler.unlink(missing_ok=True)

    def unmount(self) -> None:
        subprocess.run(["umount", "--lazy", str(self.path)], check=False)


@pytest.fixture
def disks() -> Iterator[Any]:
    """Mounts tmpfs disks for a test; ask for it before ``make_counter``: unmounted after the
    counters stopped."""
    mounted: list[Disk] = []

    def make(path: Path, size_mb: int = 64) -> Disk:
        disk = Disk(path, size_mb)
        mounted.append(disk)
        return disk

    yield make
    for disk in reversed(mounted):
        disk.unmount()


async def _recording(counter: Any, recording_id: str) -> Recording:
    return await counter.db.run(lambda s: s.get(Recording, recording_id))


def _span_s(directory: Path, master: Path, party: str = "customer") -> float:
    video = demux(decrypt_output(directory, master, party))["video"]
    return video[-1][0] - video[0][0]


# -- a killed server ---------------------------------------------------------------------


@pytest.fixture
async def server_process(tmp_path):
    keys = tmp_path / "keys"
    server = ServerProcess(
        tmp_path / "data",
        env={
            "VCOUNTER_MASTER_KEY_FILE": str(keys / "master.key"),
            "VCOUNTER_SIGNING_KEY_FILE": str(keys / "signing.pem"),
            # its SIGTERM at the end of the test stops it at once, open sessions or not
            "VCOUNTER_DRAIN_TIMEOUT_S": "0",
        },
    )
    done = server.cli(
        "user",
        "add",
        "--role",
        "agent",
        "--username",
        "alice",
        "--password",
        PASSWORD,
        "--skills",
        "account_opening",
    )
    assert done.returncode == 0, done.stderr
    await server.start()
    yield server
    server.stop()


async def test_kill9_mid_call_loses_at_most_two_seconds_and_the_restart_recovers_it(
    server_process, video_clip, audio_clip
):
    server = server_process
    customer = HeadlessParticipant(server.url, video=video_clip, audio=audio_clip, name="customer")
    agent = HeadlessParticipant(server.url, video=video_clip, audio=audio_clip, name="agent")
    try:
        await customer.join("account_opening", "Crash victim")
        await agent.login("alice", PASSWORD)
        await agent.set_ready()
        await agent.accept_next()
        await agent.wait_media(frames=20)
        await asyncio.sleep(4.0)  # the call goes on: a few segments are sealed
        session_id = customer.session_id
        segments = server.data_dir / "recordings" / f"{session_id}-1" / "segments"
        stored = len(list(segments.glob("*.seg")))
        # the worst moment: just before the next segment is cut (every 2 s), 1.8 s unsealed
        await eventually(lambda: len(list(segments.glob("*.seg"))) > stored, timeout=5)
        sealed_at = max(p.stat().st_mtime for p in segments.glob("*.seg"))
        await asyncio.sleep(max(0.0, sealed_at + 1.8 - time.time()))
        killed_at = time.time()
        server.kill9()
        # both clients see the server go
        await eventually(lambda: customer.ws.closed and agent.ws.closed, timeout=5)
    finally:
        await customer.aclose()
        await agent.aclose()

    recording_dir = server.data_dir / "recordings" / f"{session_id}-1"
    assert len(list(recording_dir.glob("segments/*.seg"))) >= 3, "sealed before the crash"
    await server.start()
    db = Database(f"sqlite:///{server.data_dir / 'vcounter.db'}")
    try:
        with db.session() as s:
            row = s.get(CallSession, session_id)
            assert (row.state, row.end_reason) == ("failed", "server_restart")
            kinds = [
                e.kind
                for e in s.exec(
                    select(SessionEvent)
                    .where(SessionEvent.session_id == session_id)
                    .order_by(SessionEvent.id)
                )
            ]
            # what happened before the crash is still there, then the failure
            assert kinds[:1] == ["queued"] and "call_started" in kinds and kinds[-1] == "failed"
            assert s.get(Recording, f"{session_id}-1").state == "recovered"
    finally:
        db.close()
    # the interrupted recording was recovered at start-up and verifies
    master = MasterKey.load(server.env_path("master.key"))
    trusted = SigningKey.load(server.env_path("signing.pem")).public_pem()
    result = verify(recording_dir, master, trusted)
    assert result.ok, result.reason
    manifest = json.loads((recording_dir / "manifest.json").read_text())
    assert manifest["recovered"] is True and manifest["metadata"]["end_reason"] == "server_crash"
    # lost: from the end of the last recorded frame to the kill, at most the unsealed segment
    for party in ("customer", "agent"):
        video = demux(decrypt_output(recording_dir, master, party))["video"]
        lost_s = killed_at - (manifest["recording"]["started_at"] + video[-1][0] + 1 / 30)
        assert lost_s <= 2.0, (party, lost_s)
        assert video[-1][0] - video[0][0] >= 4.0  # and the call before it is there
    # the restarted server serves new customers
    late = HeadlessParticipant(server.url, name="after")
    try:
        await late.join("account_opening", "After the crash")
    finally:
        await late.aclose()


# -- a full disk ---------------------------------------------------------------------------


async def test_disk_full_at_accept_the_call_waits_with_a_reason_and_starts_recorded_later(
    disks, make_counter, tmp_path, video_clip, audio_clip
):
    """No call goes on unrecorded: the agent and the customer are told why, nobody is cut off,
    the customer keeps their place; once space is back the same session's call is recorded."""
    disk = disks(tmp_path / "data" / "recordings", size_mb=32)
    counter = await make_counter(video_clip, audio_clip)
    config = counter.app[CONFIG]
    customer = await counter.customer("account_opening", "Full disk")
    agent = await counter.agent("bob")
    disk.fill()
    since = len(agent.messages)
    await agent.accept_next()
    withdrawn = await agent.wait_for("offer_withdrawn", since=since)
    assert withdrawn == {
        "type": "offer_withdrawn",
        "session_id": customer.session_id,
        "reason": "recording_unavailable",
    }
    await agent.wait_for("status", since=since, status="away")
    told = await customer.wait_for("error", code="recording_unavailable")
    assert "cannot be recorded" in told["message"] and not told.get("fatal")
    assert customer.count("call_started") == agent.count("call_started") == 0
    assert not customer.ws.closed and not agent.ws.closed
    assert counter.broker.session(customer.session_id).state == "queued"
    [failed] = await wait_recordings(counter.db, customer.session_id)
    assert failed.state == "failed" and "did not start" in failed.problem
    kinds = [e.kind for e in await session_events(counter, customer.session_id)]
    assert {"call_not_started", "recording_alert", "requeued"} <= set(kinds), kinds

    disk.free()
    since = len(customer.messages)
    await agent.set_ready()
    await agent.accept_next()  # the same customer, first in the queue
    await customer.wait_for("call_started", since=since)
    await agent.wait_media(frames=10)
    await asyncio.sleep(1.5)
    await agent.hangup()
    rows = await wait_recordings(counter.db, customer.session_id)
    assert [(r.leg, r.state) for r in rows] == [(1, "failed"), (2, "finalized")]
    directory = config.recordings_dir / rows[1].id
    trusted = SigningKey.load(config.signing_key_file).public_pem()
    result = await asyncio.to_thread(
        verify, directory, MasterKey.load(config.master_key_file), trusted
    )
    assert result.ok, result.reason
    assert _span_s(directory, config.master_key_file) >= 1.5


async def test_disk_full_mid_call_with_the_database_on_it_loses_nothing_and_the_agent_knows(
    disks, make_counter, tmp_path, video_clip, audio_clip
):
    """The recordings and the database share the disk that fills: the call goes on, the agent is
    told and told again when space is back, the alert reaches the timeline once the database can
    write it, and every second of the call is in the recording."""
    disk = disks(tmp_path / "data", size_mb=64)
    counter = await make_counter(video_clip, audio_clip)
    config = counter.app[CONFIG]
    customer = await counter.customer("loan_signing", "Full disk mid-call")
    agent = await counter.agent("carol")
    await agent.accept_next()
    await agent.wait_media(frames=10)
    t0 = time.monotonic()
    since = len(agent.messages)
    disk.fill()
    failing = await agent.wait_for("recording_alert", 6, since=since, state="failing")
    assert failing["session_id"] == customer.session_id and "disk full" in failing["message"]
    await asyncio.sleep(4.0)  # two more segments cannot be stored
    disk.free()
    await agent.wait_for("recording_alert", 6, since=since, state="recovered")
    await agent.wait_media(frames=10)  # media never stopped
    await agent.hangup()
    call_s = time.monotonic() - t0
    [row] = await wait_recordings(counter.db, customer.session_id)
    assert row.state == "finalized" and "nothing lost" in row.problem
    directory = config.recordings_dir / row.id
    assert _span_s(directory, config.master_key_file) >= call_s - 0.5
    events = await session_events(counter, customer.session_id)
    alerts = [e.data for e in events if e.kind == "recording_alert"]
    # written although the database was on the full disk when they were raised
    assert [a["state"] for a in alerts][:1] == ["failing"] and "recovered" in [
        a["state"] for a in alerts
    ]
    manifest = json.loads((directory / "manifest.json").read_text())
    assert "recording_alert" in [e["kind"] for e in manifest["timeline"]["events"]]


async def test_disk_full_at_hang_up_the_recording_waits_for_space_and_loses_nothing(
    disks, make_counter, tmp_path, video_clip, audio_clip, monkeypatch
):
    """The disk is full from hang-up for longer than any timeout (the recorder's clock runs 20
    times fast: 3 s here are a minute): the row says why it is not finished yet, the agent is
    told, and once space is back the whole call is stored, finalised and verifies."""
    disk = disks(tmp_path / "data" / "recordings", size_mb=32)
    counter = await make_counter(video_clip, audio_clip)
    config = counter.app[CONFIG]
    customer = await counter.customer("account_opening", "Full at hang-up")
    agent = await counter.agent("bob")
    await agent.accept_next()
    await agent.wait_media(frames=10)
    t0 = time.monotonic()
    await asyncio.sleep(3.0)
    monkeypatch.setattr(segment_writer, "time", FastTime(20))
    disk.fill()
    since = len(agent.messages)
    await agent.hangup()
    call_s = time.monotonic() - t0
    await agent.wait_for("call_ended", since=since)
    failing = await agent.wait_for("recording_alert", 5, since=since, state="failing")
    assert failing["session_id"] == customer.session_id
    recording_id = f"{customer.session_id}-1"

    async def explained() -> Recording | None:
        row = await _recording(counter, recording_id)
        return row if row.problem and "held in memory" in row.problem else None

    row = await eventually(explained, timeout=5)
    assert row.state == "recording"  # not finished, and the row says why
    await asyncio.sleep(3.0)  # a minute on the recorder's clock
    assert (await _recording(counter, recording_id)).state == "recording"
    disk.free()
    [row] = await wait_recordings(counter.db, customer.session_id)
    assert row.state == "finalized" and "nothing lost" in row.problem
    await agent.wait_for("recording_alert", 5, since=since, state="recovered")
    directory = config.recordings_dir / row.id
    trusted = SigningKey.load(config.signing_key_file).public_pem()
    result = await asyncio.to_thread(
        verify, directory, MasterKey.load(config.master_key_file), trusted
    )
    assert result.ok, result.reason
    for party in ("customer", "agent"):
        assert _span_s(directory, config.master_key_file, party) >= call_s - 0.5


async def test_a_restart_settles_a_finished_recording_the_database_was_not_told_of(
    make_counter, video_clip, audio_clip
):
    """The process ended between finalising a recording and writing so to its row (a database on
    a full disk): the next start finds the signed manifest and settles the row."""
    counter = await make_counter(video_clip, audio_clip)
    session_id, recording_id = await recorded_call(counter, seconds=1.0)
    await counter.aclose()
    await counter.server.close()

    def unfinished(s: Any) -> None:
        row = s.get(Recording, recording_id)
        row.state, row.lease_until = "recording", utcnow() - timedelta(seconds=60)
        row.manifest_sha256 = row.duration_ms = None
        s.add(row)

    db = Database(counter.app[CONFIG].db_url)
    try:
        await db.run(unfinished)
    finally:
        db.close()
    again = await make_counter(video_clip, audio_clip)
    row = await _recording(again, recording_id)
    assert row.state == "finalized" and row.manifest_sha256 and row.duration_ms


def test_a_failed_write_on_a_full_disk_leaves_nothing_behind(disks, tmp_path):
    """Each failed attempt used to leave its temporary file: the retries of a recording on a full
    disk must not eat the space that comes back."""
    disk = disks(tmp_path / "disk", size_mb=1)
    storage = LocalStorage(disk.path / "recording")
    storage.put_bytes("chain.log", b"first line\n")
    disk.fill()
    for attempt in range(5):
        with pytest.raises(OSError) as failed:
            storage.put_bytes("chain.log", b"a longer chain log\n" * 100 + bytes([attempt]))
        assert failed.value.errno == errno.ENOSPC
    assert sorted(p.name for p in (disk.path / "recording").iterdir()) == ["chain.log"]
    disk.free()
    storage.put_bytes("chain.log", b"stored\n")
    assert read_all(storage, "chain.log") == b"stored\n"


def _children(pid: int) -> list[int]:
    """Processes whose parent is ``pid`` now (from /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.append(int(entry.name))
    return found


def _running(pid: int) -> bool:
    """The process exists and is not a zombie waiting to be reaped."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


async def test_face_workers_exit_when_their_server_is_killed(tmp_path: Path) -> None:
    server = ServerProcess(
        tmp_path / "data", env={"VCOUNTER_IDENTITY": "1", "VCOUNTER_IDENTITY_WORKERS": "1"}
    )
    await server.start()
    try:
        assert server.proc is not None
        workers = await eventually(lambda: _children(server.proc.pid), timeout=20)
        server.kill9()  # perhaps before its face workers finished starting
        # they notice they were re-parented and exit: no orphan keeps the models and face data
        await eventually(
            lambda: not any(_running(pid) for pid in workers), timeout=20, interval=0.2
        )
    finally:
        server.stop()

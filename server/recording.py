"""Dual recording of every call: wires the media hub's taps to the recorder.

When a call becomes active the :class:`RecordingService` starts a
:class:`recorder.SessionRecorder` for that call leg and adds a sink to each of
the four taps (customer and agent, audio and video): the sink appends every
encoded frame to the open segment, synchronously, without decoding. Session
events (from the broker's log) go onto the recording's timeline too. When the
call ends the recording is sealed and finalised (per-party WebM, signed
manifest) in a worker thread, and its row in the database says so. At start-up
recordings that a killed process left behind are recovered and finalised.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlmodel import Session as DbSession
from sqlmodel import select

from recorder import MasterKey, SessionRecorder, SigningKey, finalize, find_interrupted, recover
from recorder.exceptions import RecorderError
from signaling.broker import Session
from signaling.media_hub import MediaHub
from signaling.frames import EncodedFrame

from .config import Config
from .db import CallSession, Database, Participant, Recording, SessionEvent, User, utcnow

logger = logging.getLogger(__name__)

PARTIES = ("customer", "agent")
KINDS = ("audio", "video")


def load_keys(config: Config) -> tuple[MasterKey, SigningKey]:
    """Load the master and signing keys; create them (0600) for development when missing."""
    master_path, signing_path = Path(config.master_key_file), Path(config.signing_key_file)
    data_dir = Path(config.data_dir).resolve()
    if data_dir in master_path.resolve().parents:
        logger.warning("the master key %s is inside the data directory: keep it elsewhere", master_path)
    if master_path.exists():
        master = MasterKey.load(master_path)
    else:
        master_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        master = MasterKey.create(master_path)
        logger.warning("created a new recording master key at %s: back it up, recordings cannot "
                       "be read without it", master_path)
    if signing_path.exists():
        signing = SigningKey.load(signing_path)
    else:
        signing_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        signing = SigningKey.create(signing_path)
        logger.warning("created a new manifest signing key at %s (fingerprint %s)", signing_path,
                       signing.fingerprint())
    return master, signing


@dataclass
class _Active:
    recording_id: str
    session_id: str
    recorder: SessionRecorder
    started_at: datetime
    removers: list[Any] = field(default_factory=list)
    generations: dict[tuple[str, str], int] = field(default_factory=dict)


class RecordingService:
    def __init__(self, config: Config, db: Database, hub: MediaHub, master: MasterKey,
                 signing: SigningKey,
                 log_event: Callable[[str, str, dict[str, object]], Awaitable[None]] | None = None) -> None:
        self.config = config
        self.db = db
        self.hub = hub
        self.master = master
        self.signing = signing
        self.root = config.recordings_dir
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="recording")
        self._active: dict[str, _Active] = {}
        self._finishing: set[asyncio.Task[None]] = set()
        #: writes a session event (the broker's log): recording alerts become anomalies auditors see
        self._log_event = log_event
        self._closed = False

    # -- live recording ------------------------------------------------------------

    async def call_started(self, session: Session) -> None:
        """Broker hook: the call is active, start recording it (both parties, audio and video)."""
        if self._closed or session.id in self._active:
            return
        media = self.hub.call(session.id)
        leg = await self.db.run(lambda s: len(s.exec(
            select(Recording).where(Recording.session_id == session.id)).all()) + 1)
        recording_id = f"{session.id}-{leg}"
        loop = asyncio.get_running_loop()
        recorder = SessionRecorder(
            recording_id, self.root / recording_id, self.master,
            segment_seconds=self.config.segment_seconds, executor=self._executor,
            on_alert=lambda text, sid=session.id: self._alert(sid, text), clock=loop.time)
        await recorder.start()
        # first on the timeline: nothing else can reach this recorder before it is in ``_active``
        recorder.event("recording_started", {"recording_id": recording_id, "business": session.business,
                                             "agent": session.agent.username if session.agent else None})
        started = utcnow()
        active = _Active(recording_id, session.id, recorder, started)
        for party in PARTIES:
            for kind in KINDS:
                tap = media.tap(party, kind)
                active.generations[(party, kind)] = tap.generation
                active.removers.append(tap.add_sink(self._sink(active, party, kind, tap)))
        self._active[session.id] = active
        retention = started + timedelta(days=self.config.retention_for(session.business))
        await self.db.run(lambda s: s.add(Recording(
            id=recording_id, session_id=session.id, leg=leg, started_at=started,
            retention_until=retention)))
        logger.info("session %s: recording %s started", session.id, recording_id)

    def _sink(self, active: _Active, party: str, kind: str, tap: Any):  # type: ignore[no-untyped-def]
        recorder = active.recorder
        key = (party, kind)

        def sink(frame: EncodedFrame) -> None:
            if tap.generation != active.generations[key]:
                # the participant reconnected: a new RTP stream starts on the same timeline
                active.generations[key] = tap.generation
                recorder.new_stream(party, kind)
            recorder.write(party, kind, frame.data, timestamp=frame.timestamp,
                           clock_rate=frame.clock_rate, keyframe=frame.keyframe, arrival=frame.arrival)

        return sink

    def event(self, session_id: str, kind: str, data: dict[str, object]) -> None:
        """Put a session event on the active recording's timeline (no-op without one)."""
        active = self._active.get(session_id)
        if active is not None:
            active.recorder.event(kind, dict(data))

    def _alert(self, session_id: str, text: str) -> None:
        """The recorder cannot store segments (disk full...): it keeps them and retries; we tell people."""
        logger.error("session %s: recording alert: %s", session_id, text)
        if self._log_event is not None:
            task = asyncio.get_running_loop().create_task(
                self._log_event(session_id, "recording_alert", {"message": text}))
            self._finishing.add(task)
            task.add_done_callback(self._finishing.discard)

    async def call_ended(self, session: Session) -> None:
        """Broker hook: stop feeding the recording; seal and finalise it in the background."""
        active = self._active.pop(session.id, None)
        if active is None:
            return
        for remove in active.removers:
            remove()
        active.recorder.event("recording_stopped", {"reason": session.end_reason or session.state})
        metadata = self._metadata(session, active)
        task = asyncio.get_running_loop().create_task(self._finish(active, metadata),
                                                       name=f"finalize-{active.recording_id}")
        self._finishing.add(task)
        task.add_done_callback(self._finishing.discard)

    def _metadata(self, session: Session, active: _Active) -> dict[str, Any]:
        agent = session.agent
        return {
            "session_id": session.id,
            "recording_id": active.recording_id,
            "business": session.business,
            "customer": {"display_name": session.display_name},
            "agent": {"id": agent.id, "username": agent.username, "display_name": agent.display_name}
            if agent else None,
            "node_id": self.config.node_id,
            "call_started_at": active.started_at.isoformat(),
            "call_ended_at": utcnow().isoformat(),
            "end_reason": session.end_reason or session.state,
        }

    async def _finish(self, active: _Active, metadata: dict[str, Any]) -> None:
        directory = self.root / active.recording_id
        try:
            await active.recorder.aclose()
            loop = asyncio.get_running_loop()
            manifest = await loop.run_in_executor(
                self._executor, finalize, directory, self.master, self.signing, metadata)
            await self._mark(active.recording_id, "finalized", manifest)
        except (RecorderError, OSError) as exc:
            logger.exception("recording %s could not be finalised", active.recording_id)
            await self._mark_failed(active.recording_id, str(exc))

    async def _mark(self, recording_id: str, state: str, manifest: Any) -> None:
        outputs = manifest.data.get("outputs", [])
        duration = max((o.get("duration_ms") or 0 for o in outputs), default=0)
        size = sum(o.get("size", 0) for o in outputs) + sum(
            seg.get("size", 0) for seg in manifest.data.get("segments", []))
        digest = hashlib.sha256(manifest.raw).hexdigest()

        def work(s: DbSession) -> None:
            row = s.get(Recording, recording_id)
            if row is None:
                return
            row.state = state
            row.ended_at = utcnow()
            row.duration_ms = int(duration)
            row.size_bytes = int(size)
            row.manifest_sha256 = digest
            if manifest.data.get("dropped"):
                row.problem = f"recovered after a crash; dropped {len(manifest.data['dropped'])} segment(s)"
            s.add(row)

        await self.db.run(work)
        logger.info("recording %s %s (%d ms)", recording_id, state, duration)

    async def _mark_failed(self, recording_id: str, problem: str) -> None:
        def work(s: DbSession) -> None:
            row = s.get(Recording, recording_id)
            if row is not None:
                row.state = "failed"
                row.problem = problem[:500]
                row.ended_at = utcnow()
                s.add(row)

        await self.db.run(work)

    # -- recovery ------------------------------------------------------------------

    async def recover_interrupted(self) -> list[str]:
        """Finalise recordings a killed process left behind; returns their ids."""
        recovered = []
        for directory in find_interrupted(self.root):
            recording_id = directory.name
            metadata = await self.db.run(lambda s, rid=recording_id: _recovery_metadata(s, rid))
            try:
                manifest = await asyncio.get_running_loop().run_in_executor(
                    self._executor, recover, directory, self.master, self.signing, metadata)
            except (RecorderError, OSError) as exc:
                logger.error("recording %s could not be recovered: %s", recording_id, exc)
                await self._mark_failed(recording_id, f"recovery failed: {exc}")
                continue
            await self._mark(recording_id, "recovered", manifest)
            recovered.append(recording_id)
        if recovered:
            logger.warning("recovered %d interrupted recording(s): %s", len(recovered), ", ".join(recovered))
        return recovered

    async def aclose(self) -> None:
        """Finish every recording (calls are ended first by the broker); idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._finishing:
            await asyncio.gather(*self._finishing, return_exceptions=True)
        for active in list(self._active.values()):
            for remove in active.removers:
                remove()
            await active.recorder.aclose()
        self._active.clear()
        self._executor.shutdown(wait=True)


def _recovery_metadata(s: DbSession, recording_id: str) -> dict[str, Any]:
    row = s.get(Recording, recording_id)
    session_id = row.session_id if row else recording_id.rsplit("-", 1)[0]
    call = s.get(CallSession, session_id)
    agent = s.get(User, call.agent_id) if call and call.agent_id else None
    customer = s.exec(select(Participant).where(Participant.session_id == session_id,
                                                Participant.role == "customer")).first()
    last_event = s.exec(select(SessionEvent).where(SessionEvent.session_id == session_id)
                        .order_by(SessionEvent.id.desc())).first()  # type: ignore[union-attr]
    return {
        "session_id": session_id,
        "recording_id": recording_id,
        "business": call.business if call else None,
        "customer": {"display_name": customer.display_name} if customer else None,
        "agent": {"id": agent.id, "username": agent.username, "display_name": agent.display_name}
        if agent else None,
        "call_started_at": row.started_at.isoformat() if row else None,
        "call_ended_at": last_event.at.isoformat() if last_event else None,
        "end_reason": "server_crash",
        "recovered_at": datetime.now(UTC).isoformat(),
        "recovered_by_pid": os.getpid(),
    }

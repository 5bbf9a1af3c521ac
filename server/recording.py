"""Dual recording of every call: wires the media hub's taps to the recorder.

When a call becomes active the :class:`RecordingService` starts a
:class:`recorder.SessionRecorder` for that call leg and adds a sink to each of
the four taps (customer and agent, audio and video): the sink appends every
encoded frame to the open segment, synchronously, without decoding. Session
events (from the broker's log) go onto the recording's timeline too. When the
call ends the recording is sealed and finalised (per-party WebM, signed
manifest) in a worker thread, and its row in the database says so.

Where recordings live is the configured object store (``Config.storage_url``,
:mod:`recorder.object_store`): the data directory, or an S3-compatible store
that every node reaches, written through a local spool and uploaded as segments
seal.

Each recording row carries a **lease** (``lease_node``, ``lease_until``, by the
database's clock), taken when recording starts and renewed every third of
``Config.node_lease_s`` until the recording is finalised. A recording whose
lease lapsed was left unfinished by a node that died (or lost the database):

- at start-up a node recovers the recordings that a killed process left in its
  data directory (with a shared store: its spool) and those of its own id's
  earlier run;
- at every renewal it takes over the recordings whose lease lapsed and that it
  can reach -- with a shared store (S3) any node's, with the local one those on
  its own disk -- one atomic ``UPDATE ... WHERE lease_until < now`` per
  recording, so exactly one node wins, and finalises them from the store
  (``recovered: true`` in the manifest).

A full disk never costs what was recorded: a recording that cannot start stops its call from
starting (:class:`~signaling.exceptions.SignalingError` ``recording_unavailable`` to the broker,
which tells both parties and keeps the customer's place in the queue); during and after a call
the recorder holds what it cannot store and retries, finalisation waits for the space it needs,
and every alert goes to the log, to the session's timeline (``recording_alert``) and to the
agent's screen (``recording_alert`` message). Database writes about recordings that fail (a
database on the same full disk) are kept and retried in order until they go through.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import logging
import os
import time
from collections import deque
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any, Literal

from sqlalchemy import update
from sqlmodel import Session as DbSession
from sqlmodel import col, or_, select

from recorder import (
    MasterKey,
    ObjectStore,
    SessionRecorder,
    SigningKey,
    finalize,
    find_interrupted,
    open_object_store,
    recover,
)
from recorder.exceptions import RecorderError
from recorder.segment_writer import ALERT_INTERVAL_S, AlertState, StorageAlert
from recorder.storage import Storage
from signaling import messages as m
from signaling.broker import Session
from signaling.exceptions import SignalingError
from signaling.frames import EncodedFrame
from signaling.media_hub import MediaHub

from .config import Config
from .db import CallSession, Database, Participant, Recording, SessionEvent, User, utcnow
from .node_registry import database_now

logger = logging.getLogger(__name__)

PARTIES = ("customer", "agent")
KINDS = ("audio", "video")
#: seconds a stopping server waits for recordings whose storage fails to be stored and finalised,
#: before it gives up what they still hold in memory (what is stored is recovered at next start)
SHUTDOWN_WAIT_S = 30.0
#: seconds a stopping server goes on retrying the database writes that failed
WRITES_WAIT_S = 5.0
#: seconds between two attempts of a failing finalisation or database write (doubling up to)
RETRY_FIRST_S = 0.5
RETRY_MAX_S = 5.0
#: failed database writes held for retrying at most (the oldest is dropped, and logged, beyond)
MAX_HELD_WRITES = 10_000


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return "disk full"
    cause = getattr(exc, "orig", None) or exc  # the driver's error, not SQLAlchemy's SQL dump
    return f"{cause.__class__.__name__}: {cause}"


def _unavailable(why: str) -> SignalingError:
    """What the broker tells the parties of a call that cannot start because it cannot be recorded."""
    return SignalingError(
        f"this call cannot be recorded right now ({why}), so it cannot start; the customer keeps "
        "their place in the queue",
        code="recording_unavailable",
    )


def load_keys(config: Config) -> tuple[MasterKey, SigningKey]:
    """Load the master and signing keys; create them (0600) for development when missing."""
    # relative paths resolve beside the data directory, as the CLI's verifiers resolve them
    master_path, signing_path = config.master_key_path, config.signing_key_path
    data_dir = Path(config.data_dir).resolve()
    if data_dir in master_path.resolve().parents:
        logger.warning(
            "the master key %s is inside the data directory: keep it elsewhere", master_path
        )
    if master_path.exists():
        master = MasterKey.load(master_path)
    else:
        master_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        master = MasterKey.create(master_path)
        logger.warning(
            "created a new recording master key at %s: back it up, recordings cannot "
            "be read without it",
            master_path,
        )
    if signing_path.exists():
        signing = SigningKey.load(signing_path)
    else:
        signing_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        signing = SigningKey.create(signing_path)
        logger.warning(
            "created a new manifest signing key at %s (fingerprint %s)",
            signing_path,
            signing.fingerprint(),
        )
    return master, signing


def s3_client(config: Config) -> Any:
    """A boto3 S3 client for ``config.s3_endpoint_url`` (None: AWS itself); credentials and region
    come from boto3's own sources (``AWS_*`` variables, config files, instance roles).

    Path-style addressing with an endpoint (MinIO, Ceph RGW), short timeouts and few retries (the
    uploader retries on its own schedule), checksums only where the API requires them (S3-compatible
    stores differ on the newer ones; every object is covered by the recording's own SHA-256 chain,
    and uploads carry Content-MD5).
    """
    import boto3
    from botocore.config import Config as BotoConfig

    endpoint = config.s3_endpoint_url or None
    boto_config = BotoConfig(
        connect_timeout=3,
        read_timeout=20,
        retries={"total_max_attempts": 2, "mode": "standard"},
        s3={"addressing_style": "path" if endpoint else "auto"},
        max_pool_connections=16,
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
    )
    return boto3.session.Session().client("s3", endpoint_url=endpoint, config=boto_config)


def object_store(config: Config, *, uploads: bool = True) -> ObjectStore:
    """The store ``config.storage_url`` names; ``uploads=False`` for a command that only reads and
    deletes (no background uploader). With S3 the spool is ``<data_dir>/spool``."""
    return open_object_store(
        config.storage_url,
        recordings_dir=config.recordings_dir,
        identity_dir=config.identity_dir,
        spool_dir=Path(config.data_dir) / "spool",
        s3_client=lambda: s3_client(config),
        uploads=uploads,
    )


@dataclass
class _Active:
    recording_id: str
    session_id: str
    session: Session
    recorder: SessionRecorder
    started_at: datetime
    removers: list[Any] = field(default_factory=list)
    generations: dict[tuple[str, str], int] = field(default_factory=dict)
    #: monotonic time of the last alert about its finalisation
    last_alert: float = -ALERT_INTERVAL_S


class RecordingService:
    """Records every call into ``store`` (default: the one ``config.storage_url`` names, owned and
    closed by the service); call :meth:`recover_interrupted`, then :meth:`start`."""

    def __init__(
        self,
        config: Config,
        db: Database,
        hub: MediaHub,
        master: MasterKey,
        signing: SigningKey,
        log_event: Callable[[str, str, dict[str, object]], Awaitable[None]] | None = None,
        *,
        store: ObjectStore | None = None,
        notify: Callable[[Session, str, m.RecordingAlert], object] | None = None,
    ) -> None:
        self.config = config
        self.db = db
        self.hub = hub
        self.master = master
        self.signing = signing
        self.store = store if store is not None else object_store(config)
        self._owns_store = store is None
        #: the recordings directory of the local store (with S3: where nothing is written)
        self.root = config.recordings_dir
        if self.store.kind == "file":
            self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.node_id = config.node_id
        self.lease_s = config.node_lease_s
        self._executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="recording")
        #: by session: the calls being recorded
        self._active: dict[str, _Active] = {}
        #: by recording: every recording made here until its row says how it ended
        self._recordings: dict[str, _Active] = {}
        #: recordings whose lease this node holds and renews (recording, finalising, recovering)
        self._leased: set[str] = set()
        self._finishing: set[asyncio.Task[None]] = set()
        self._lease_task: asyncio.Task[None] | None = None
        #: writes a session event (the broker's log): recording alerts become anomalies auditors see
        self._log_event = log_event
        #: sends a message to a party of a session (the broker's ``send``): alerts to the agent
        self._notify = notify
        #: database writes not done yet (failed: retried in order by ``_writer``)
        self._writes: deque[tuple[str, Callable[[], Awaitable[object]]]] = deque()
        self._writer: asyncio.Task[None] | None = None
        self._closed = False

    def start(self) -> None:
        """Start renewing this node's leases (and, with a shared store, taking over lapsed ones)."""
        if self._lease_task is None and not self._closed:
            self._lease_task = asyncio.get_running_loop().create_task(
                self._lease_loop(), name=f"recording-leases-{self.node_id}"
            )

    def storage(self, recording_id: str) -> Storage:
        """A recording's storage, to read it (blocking to use: call it in a thread)."""
        return self.store.recording(recording_id)

    def health(self) -> dict[str, Any]:
        """``{"kind", "pending_uploads", "ok"}``: where recordings go and whether they get there."""
        return self.store.health()

    # -- live recording ------------------------------------------------------------

    async def call_started(self, session: Session) -> None:
        """Broker hook: the call is active, start recording it (both parties, audio and video)."""
        if self._closed or session.id in self._active:
            return
        media = self.hub.call(session.id)
        started = utcnow()
        retention = started + timedelta(days=self.config.retention_for(session.business))

        def insert(s: DbSession) -> str:
            # the row (and its lease) first: a recording in the store always has a row to recover by
            leg = len(s.exec(select(Recording).where(Recording.session_id == session.id)).all()) + 1
            recording_id = f"{session.id}-{leg}"
            s.add(
                Recording(
                    id=recording_id,
                    session_id=session.id,
                    leg=leg,
                    started_at=started,
                    retention_until=retention,
                    lease_node=self.node_id,
                    lease_until=database_now(s) + timedelta(seconds=self.lease_s),
                )
            )
            return recording_id

        try:
            recording_id = await self.db.run(insert)
        except Exception as exc:  # a database on a full disk, or unreachable
            text = f"the recording could not start: its row cannot be written ({_reason(exc)})"
            logger.error("session %s: %s", session.id, text)
            self._log_alert(session.id, {"state": "not_started", "message": text})
            raise _unavailable("its database refuses writes") from exc
        self._leased.add(recording_id)
        loop = asyncio.get_running_loop()
        try:
            storage = await loop.run_in_executor(
                self._executor, self.store.new_recording, recording_id
            )
            recorder = SessionRecorder(
                recording_id,
                storage,
                self.master,
                segment_seconds=self.config.segment_seconds,
                executor=self._executor,
                on_alert=partial(self._storage_alert, recording_id),
                clock=loop.time,
            )
            await recorder.start()
        except (RecorderError, OSError) as exc:
            self._leased.discard(recording_id)
            text = f"recording {recording_id} could not start: {_reason(exc)}"
            logger.error("session %s: %s", session.id, text)
            self._log_alert(
                session.id, {"state": "not_started", "message": text, "recording_id": recording_id}
            )
            self._persist(
                f"recording {recording_id} failed",
                partial(self._mark_failed, recording_id, f"recording did not start: {exc}"),
            )
            raise _unavailable("its storage refuses writes") from exc
        # first on the timeline: nothing else can reach this recorder before it is in ``_active``
        recorder.event(
            "recording_started",
            {
                "recording_id": recording_id,
                "business": session.business,
                "agent": session.agent.username if session.agent else None,
            },
        )
        active = _Active(recording_id, session.id, session, recorder, started)
        self._recordings[recording_id] = active
        for party in PARTIES:
            for kind in KINDS:
                tap = media.tap(party, kind)
                active.generations[(party, kind)] = tap.generation
                active.removers.append(tap.add_sink(self._sink(active, party, kind, tap)))
        self._active[session.id] = active
        logger.info("session %s: recording %s started in %r", session.id, recording_id, storage)

    def _sink(self, active: _Active, party: str, kind: str, tap: Any):  # type: ignore[no-untyped-def]
        recorder = active.recorder
        key = (party, kind)

        def sink(frame: EncodedFrame) -> None:
            if tap.generation != active.generations[key]:
                # the participant reconnected: a new RTP stream starts on the same timeline
                active.generations[key] = tap.generation
                recorder.new_stream(party, kind)
            recorder.write(
                party,
                kind,
                frame.data,
                timestamp=frame.timestamp,
                clock_rate=frame.clock_rate,
                keyframe=frame.keyframe,
                arrival=frame.arrival,
            )

        return sink

    def event(self, session_id: str, kind: str, data: dict[str, object]) -> None:
        """Put a session event on the active recording's timeline (no-op without one)."""
        active = self._active.get(session_id)
        if active is not None and kind != "recording_alert":  # :meth:`_alert` puts those there
            active.recorder.event(kind, dict(data))

    # -- alerts -------------------------------------------------------------------------

    def _storage_alert(self, recording_id: str, alert: StorageAlert) -> None:
        """The recorder's storage fails (it holds what it cannot store and retries), pauses media
        (its memory limit), or works again."""
        active = self._recordings.get(recording_id)
        if active is None:
            logger.error("recording %s: %s", recording_id, alert.message)
            return
        self._alert(active, alert.state, alert.message)
        if alert.state == "recovered":
            problem = (
                f"storage failed for {alert.failing_s:.0f} s; everything recorded was stored late"
                + (
                    f", but {alert.not_recorded} media frames were not recorded (memory limit)"
                    if alert.not_recorded
                    else ", nothing lost"
                )
            )
        else:
            problem = (
                f"storage failing, retrying: {alert.held_bytes / 1e6:.1f} MB held in memory"
                + ("; new media not recorded (memory limit)" if alert.state == "paused" else "")
            )
        self._persist(
            f"recording {recording_id} problem", partial(self._set_problem, recording_id, problem)
        )

    def _alert(
        self, active: _Active, state: AlertState | Literal["lease_lost"], message: str
    ) -> None:
        """Tell everyone who must know: the log, the recording's and the session's timelines
        (``recording_alert``: an anomaly auditors see), and the call's agent (not of a lease
        another node took: this node goes on recording)."""
        if state == "recovered":
            logger.warning("session %s: recording alert: %s", active.session_id, message)
        else:
            logger.error("session %s: recording alert: %s", active.session_id, message)
        data: dict[str, object] = {
            "state": state,
            "message": message,
            "recording_id": active.recording_id,
        }
        if not active.recorder.closed:
            active.recorder.event("recording_alert", dict(data))
        self._log_alert(active.session_id, data)
        if self._notify is not None and state != "lease_lost":
            try:
                self._notify(
                    active.session,
                    "agent",
                    m.RecordingAlert(session_id=active.session_id, state=state, message=message),
                )
            except Exception:
                logger.exception("session %s: the agent could not be told", active.session_id)

    def _log_alert(self, session_id: str, data: dict[str, object]) -> None:
        """A ``recording_alert`` on the session's timeline, kept and retried until written."""
        if self._log_event is None:
            return
        data = {**data, "raised_at": utcnow().isoformat()}  # a retried write lands later
        self._persist(
            f"session {session_id} recording alert",
            partial(self._log_event, session_id, "recording_alert", data),
        )

    # -- database writes that must not be lost -----------------------------------------------

    def _persist(self, what: str, write: Callable[[], Awaitable[object]]) -> None:
        """Do ``write`` (a database write) in the background, after those before it; one that
        fails (a database on a full disk) is logged, kept and retried until it goes through."""
        if len(self._writes) >= MAX_HELD_WRITES:
            dropped, _ = self._writes.popleft()
            logger.error("too many database writes held: dropped the oldest (%s)", dropped)
        self._writes.append((what, write))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.get_running_loop().create_task(
                self._write_held(), name=f"recording-writes-{self.node_id}"
            )

    async def _write_held(self) -> None:
        delay, failing_since, last_log = RETRY_FIRST_S, 0.0, -ALERT_INTERVAL_S
        while self._writes:
            what, write = self._writes[0]
            try:
                await write()
            except Exception as exc:
                now = time.monotonic()
                failing_since = failing_since or now
                if now - last_log >= ALERT_INTERVAL_S:
                    last_log = now
                    logger.error(
                        "could not write %s to the database (%s): kept with %d other write(s), "
                        "retrying",
                        what,
                        _reason(exc),
                        len(self._writes) - 1,
                    )
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX_S)
                continue
            self._writes.popleft()
            if failing_since:
                logger.warning(
                    "database writes go through again after %.0f s (%s)",
                    time.monotonic() - failing_since,
                    what,
                )
                delay, failing_since, last_log = RETRY_FIRST_S, 0.0, -ALERT_INTERVAL_S

    async def _set_problem(self, recording_id: str, problem: str) -> None:
        def work(s: DbSession) -> None:
            row = s.get(Recording, recording_id)
            if row is not None:
                row.problem = problem[:500]
                s.add(row)

        await self.db.run(work)

    async def call_ended(self, session: Session) -> None:
        """Broker hook: stop feeding the recording; seal and finalise it in the background."""
        active = self._active.pop(session.id, None)
        if active is None:
            return
        for remove in active.removers:
            remove()
        active.recorder.event("recording_stopped", {"reason": session.end_reason or session.state})
        self._spawn_finish(active, self._metadata(session, active))

    def _spawn_finish(self, active: _Active, metadata: dict[str, Any]) -> None:
        task = asyncio.get_running_loop().create_task(
            self._finish(active, metadata), name=f"finalize-{active.recording_id}"
        )
        self._finishing.add(task)
        task.add_done_callback(self._finishing.discard)

    def _metadata(self, session: Session, active: _Active) -> dict[str, Any]:
        agent = session.agent
        return {
            "session_id": session.id,
            "recording_id": active.recording_id,
            "business": session.business,
            "customer": {"display_name": session.display_name},
            "agent": {
                "id": agent.id,
                "username": agent.username,
                "display_name": agent.display_name,
            }
            if agent
            else None,
            "node_id": self.config.node_id,
            "call_started_at": active.started_at.isoformat(),
            "call_ended_at": utcnow().isoformat(),
            "end_reason": session.end_reason or session.state,
        }

    async def _finish(self, active: _Active, metadata: dict[str, Any]) -> None:
        """Store what the recorder holds and finalise, however long a full disk makes that take;
        its row says "recording" (lease renewed, ``problem`` saying why) until then."""
        recording_id = active.recording_id
        storage = active.recorder.storage
        try:
            await active.recorder.aclose()  # waits, retrying, while storage fails
            manifest = await self._finalize(active, storage, metadata)
        except RecorderError as exc:  # not a failing disk: the recording itself is damaged
            logger.exception("recording %s could not be finalised", recording_id)
            mark = partial(self._mark_failed, recording_id, str(exc))
        else:
            self.store.finished(storage)
            mark = partial(self._mark, recording_id, "finalized", manifest)
        self._persist(f"recording {recording_id} ended", partial(self._ended, recording_id, mark))

    async def _ended(self, recording_id: str, mark: Callable[[], Awaitable[None]]) -> None:
        """Write how the recording ended, then stop holding its lease."""
        await mark()
        self._leased.discard(recording_id)
        self._recordings.pop(recording_id, None)

    async def _finalize(self, active: _Active, storage: Storage, metadata: dict[str, Any]) -> Any:
        """``finalize``, retried while storage fails (the segments are safe: a restart would
        recover them); an alert every ``ALERT_INTERVAL_S``."""
        loop = asyncio.get_running_loop()
        delay, failing_since = RETRY_FIRST_S, 0.0
        while True:
            try:
                return_value = await loop.run_in_executor(
                    self._executor, finalize, storage, self.master, self.signing, metadata
                )
            except OSError as exc:  # a full disk, an unreachable store (StorageUnavailable)
                now = time.monotonic()
                failing_since = failing_since or now
                if now - active.last_alert >= ALERT_INTERVAL_S:
                    active.last_alert = now
                    text = (
                        f"recording {active.recording_id}: stored, but not finalised yet "
                        f"({_reason(exc)}); retrying"
                    )
                    self._alert(active, "failing", text)
                    self._persist(
                        f"recording {active.recording_id} problem",
                        partial(self._set_problem, active.recording_id, text),
                    )
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX_S)
                continue
            if failing_since:
                self._alert(
                    active,
                    "recovered",
                    f"recording {active.recording_id}: finalised after "
                    f"{time.monotonic() - failing_since:.0f} s of failing storage",
                )
            return return_value

    async def _mark(self, recording_id: str, state: str, manifest: Any) -> None:
        outputs = manifest.data.get("outputs", [])
        duration = max((o.get("duration_ms") or 0 for o in outputs), default=0)
        size = sum(o.get("size", 0) for o in outputs) + sum(
            seg.get("size", 0) for seg in manifest.data.get("segments", [])
        )
        digest = hashlib.sha256(manifest.raw).hexdigest()

        def work(s: DbSession) -> None:
            row = s.get(Recording, recording_id)
            if row is None:
                return
            row.state = state
            row.ended_at = utcnow()
            row.lease_until = None
            row.duration_ms = int(duration)
            row.size_bytes = int(size)
            row.manifest_sha256 = digest
            if manifest.data.get("dropped"):
                row.problem = (
                    f"recovered after a crash; dropped {len(manifest.data['dropped'])} segment(s)"
                )
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
                row.lease_until = None
                s.add(row)

        await self.db.run(work)

    # -- recovery and leases ---------------------------------------------------------

    async def recover_interrupted(self) -> list[str]:
        """At start-up: finalise the recordings a killed process left behind; returns their ids.

        Local store: the recording directories without a manifest (each claimed first: one that
        a live node sharing the directory is recording is left to it). Shared store: this node's
        spool is uploaded, and the recordings of this node id's earlier run and those whose lease
        lapsed are taken over and finalised from the store.
        """
        recovered: list[str] = []
        if self.store.shared:
            await asyncio.to_thread(self.store.probe)  # an unreachable store is logged at once
            await self._upload_spooled()
            for recording_id in await self.db.run(
                lambda s: self._claim_lapsed(s, own_earlier_run=True)
            ):
                if await self._recover(recording_id):
                    recovered.append(recording_id)
        else:
            for directory in find_interrupted(self.root):
                recording_id = directory.name
                if not await self.db.run(
                    partial(self._claim, recording_id=recording_id, own_earlier_run=True)
                ):
                    logger.info(
                        "recording %s is being recorded by a live node: left to it", recording_id
                    )
                    continue
                if await self._recover(recording_id):
                    recovered.append(recording_id)
            # rows still "recording" of recordings this disk holds finished (the database could
            # not be told before the process ended)
            for recording_id in await self.db.run(
                lambda s: self._claim_lapsed(s, own_earlier_run=True)
            ):
                if await self._recover(recording_id):
                    recovered.append(recording_id)
        if recovered:
            logger.warning(
                "recovered %d interrupted recording(s): %s", len(recovered), ", ".join(recovered)
            )
        return recovered

    async def _upload_spooled(self) -> None:
        """Queue for upload what an earlier process left in the spool of recordings no live node is
        writing (the spool of one that is being recorded goes with its recovery)."""
        spooled = await asyncio.to_thread(self.store.spooled_recordings)
        if not spooled:
            return
        rows = await self.db.run(
            lambda s: {
                r.id: r for r in s.exec(select(Recording).where(col(Recording.id).in_(spooled)))
            }
        )
        loop = asyncio.get_running_loop()
        for recording_id in spooled:
            row = rows.get(recording_id)
            if row is not None and row.state == "recording":
                continue
            storage = await loop.run_in_executor(self._executor, self.store.resume, recording_id)
            self.store.finished(storage)

    def _claim(self, s: DbSession, recording_id: str, *, own_earlier_run: bool = False) -> bool:
        """Take the lease of a recording left unfinished: one atomic UPDATE, so that of several
        nodes exactly one wins. True also for a recording that has no row or is not being recorded."""
        row = s.get(Recording, recording_id)
        if row is None or row.state != "recording":
            return True
        holder = row.lease_node  # the UPDATE below refreshes ``row``
        now = database_now(s)
        lapsed = or_(col(Recording.lease_until).is_(None), col(Recording.lease_until) < now)
        if own_earlier_run:
            lapsed = or_(lapsed, col(Recording.lease_node) == self.node_id)
        done = s.execute(
            update(Recording)
            .where(
                col(Recording.id) == recording_id,
                col(Recording.state) == "recording",
                lapsed,
            )
            .values(lease_node=self.node_id, lease_until=now + timedelta(seconds=self.lease_s))
        )
        if done.rowcount != 1:  # type: ignore[attr-defined]
            return False
        if holder and holder != self.node_id:
            logger.warning(
                "recording %s: took it over from node %s (lease lapsed)", recording_id, holder
            )
        self._leased.add(recording_id)
        return True

    def _claim_lapsed(self, s: DbSession, *, own_earlier_run: bool = False) -> list[str]:
        """Claim every recording being recorded whose lease lapsed (and, at start-up, those of this
        node id's earlier run) that this node can reach; returns the ids claimed."""
        now = database_now(s)
        candidates = s.exec(
            select(Recording.id, Recording.lease_node, Recording.lease_until).where(
                Recording.state == "recording"
            )
        ).all()
        claimed = []
        for recording_id, node, until in candidates:
            if recording_id in self._leased:
                continue
            lapsed = until is None or (until if until.tzinfo else until.replace(tzinfo=UTC)) < now
            if (
                (lapsed or (own_earlier_run and node == self.node_id))
                and self._reachable(recording_id)
                and self._claim(s, recording_id, own_earlier_run=own_earlier_run)
            ):
                claimed.append(recording_id)
        return claimed

    def _reachable(self, recording_id: str) -> bool:
        """Whether this node can finish the recording: always with a shared store; with the local
        one, when its directory is on this node's disk (unfinished, or finalised by a process that
        died before its row said so)."""
        if self.store.shared:
            return True
        return (self.root / recording_id / "recording.json").is_file()

    async def _recover(self, recording_id: str) -> bool:
        """Finalise a claimed recording from what its store holds; False when it cannot be now."""
        loop = asyncio.get_running_loop()
        try:
            metadata = await self.db.run(lambda s: _recovery_metadata(s, recording_id))
            metadata["recovered_by_node"] = self.node_id
            storage = await loop.run_in_executor(self._executor, self.store.resume, recording_id)
            manifest = await loop.run_in_executor(
                self._executor, recover, storage, self.master, self.signing, metadata
            )
        except OSError as exc:
            # an unreachable store, a full disk: nothing is wrong with the recording; the lease
            # lapses again and this or another node retries
            logger.error(
                "recording %s cannot be recovered now (%s): retried later",
                recording_id,
                _reason(exc),
            )
            self._leased.discard(recording_id)
            return False
        except RecorderError as exc:
            logger.error("recording %s could not be recovered: %s", recording_id, exc)
            try:
                await self._mark_failed(recording_id, f"recovery failed: {exc}")
            finally:
                self._leased.discard(recording_id)
            return False
        self.store.finished(storage)
        try:
            # a manifest finalisation made before its row could say so is not a recovery
            state = "recovered" if manifest.data.get("recovered") else "finalized"
            await self._mark(recording_id, state, manifest)
        finally:
            self._leased.discard(recording_id)
        return True

    def _renew(self, s: DbSession) -> list[str]:
        """Extend the leases this node holds; returns those another node took meanwhile."""
        held = sorted(self._leased)
        if not held:
            return []
        now = database_now(s)
        s.execute(
            update(Recording)
            .where(
                col(Recording.id).in_(held),
                col(Recording.lease_node) == self.node_id,
                col(Recording.state) == "recording",
            )
            .values(lease_until=now + timedelta(seconds=self.lease_s))
        )
        rows = s.exec(
            select(Recording.id, Recording.lease_node).where(col(Recording.id).in_(held))
        ).all()
        return [rid for rid, node in rows if node != self.node_id]

    async def _lease_loop(self) -> None:
        while True:
            await asyncio.sleep(self.lease_s / 3)
            try:
                for recording_id in await self.db.run(self._renew):
                    await self._lost_lease(recording_id)
                for recording_id in await self.db.run(self._claim_lapsed):
                    await self._recover(recording_id)
                if not self.store.health()["pending_uploads"]:
                    await asyncio.to_thread(self.store.probe)
            except Exception:
                logger.exception("node %s: recording leases could not be renewed", self.node_id)

    async def _lost_lease(self, recording_id: str) -> None:
        """Another node took over a recording this node still holds (this node lost the database
        for longer than the lease): it goes on recording; its spool is uploaded again, and its own
        finalisation then supersedes the takeover's."""
        self._leased.discard(recording_id)
        active = next((a for a in self._active.values() if a.recording_id == recording_id), None)
        text = (
            f"recording {recording_id}: its lease was taken over by another node while this node "
            "was recording it; the complete recording is uploaded again"
        )
        logger.error("%s", text)
        if active is not None:
            storage = active.recorder.storage
            resume = getattr(storage, "resume", None)
            if resume is not None:
                await asyncio.get_running_loop().run_in_executor(self._executor, resume)
            self._alert(active, "lease_lost", text)

    async def aclose(self) -> None:
        """Finish every recording, those of calls still going on too; idempotent.

        Recordings whose storage still fails get ``SHUTDOWN_WAIT_S``; then what they hold in
        memory is given up (logged, and written on the row): what they stored is recovered at
        the next start. Failed database writes get ``WRITES_WAIT_S`` more.
        """
        if self._closed:
            return
        self._closed = True
        # calls still going on (the broker ends them after this): finalised as they are
        for active in list(self._active.values()):
            for remove in active.removers:
                remove()
            active.recorder.event("recording_stopped", {"reason": "server_shutdown"})
            metadata = self._metadata(active.session, active)
            self._spawn_finish(active, {**metadata, "end_reason": "server_shutdown"})
        self._active.clear()
        if self._finishing:
            _, stuck = await asyncio.wait(set(self._finishing), timeout=SHUTDOWN_WAIT_S)
            for task in stuck:
                task.cancel()
            await asyncio.gather(*stuck, return_exceptions=True)
        for active in list(self._recordings.values()):
            lost = await active.recorder.abandon()
            if lost:
                text = (
                    f"the server stopped while storage still failed: {lost / 1e6:.1f} MB recorded "
                    "but not stored were lost; what was stored is recovered at the next start"
                )
                logger.critical("recording %s: %s", active.recording_id, text)
                self._persist(
                    f"recording {active.recording_id} problem",
                    partial(self._set_problem, active.recording_id, text),
                )
        lease_task, self._lease_task = self._lease_task, None
        if lease_task is not None:
            lease_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await lease_task
        writer = self._writer
        if writer is not None and not writer.done():
            await asyncio.wait([writer], timeout=WRITES_WAIT_S)
            if not writer.done():
                writer.cancel()
                await asyncio.wait([writer])
                logger.critical(
                    "the server stopped with %d database write(s) about recordings not done: %s",
                    len(self._writes),
                    "; ".join(what for what, _ in list(self._writes)[:20]),
                )
        self._executor.shutdown(wait=True)
        if self._owns_store:
            await asyncio.to_thread(self.store.close)


def _recovery_metadata(s: DbSession, recording_id: str) -> dict[str, Any]:
    row = s.get(Recording, recording_id)
    session_id = row.session_id if row else recording_id.rsplit("-", 1)[0]
    call = s.get(CallSession, session_id)
    agent = s.get(User, call.agent_id) if call and call.agent_id else None
    customer = s.exec(
        select(Participant).where(
            Participant.session_id == session_id, Participant.role == "customer"
        )
    ).first()
    last_event = s.exec(
        select(SessionEvent)
        .where(SessionEvent.session_id == session_id)
        .order_by(col(SessionEvent.id).desc())
    ).first()
    return {
        "session_id": session_id,
        "recording_id": recording_id,
        "business": call.business if call else None,
        "customer": {"display_name": customer.display_name} if customer else None,
        "agent": {"id": agent.id, "username": agent.username, "display_name": agent.display_name}
        if agent
        else None,
        "call_started_at": row.started_at.isoformat() if row else None,
        "call_ended_at": last_event.at.isoformat() if last_event else None,
        "end_reason": "server_crash",
        "recovered_at": datetime.now(UTC).isoformat(),
        "recovered_by_pid": os.getpid(),
    }

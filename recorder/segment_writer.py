"""Records one session's encoded frames and events into sealed, chained segments.

:meth:`SessionRecorder.write` and :meth:`SessionRecorder.event` are cheap and
synchronous: they append a record to the in-memory segment. Every
``segment_seconds`` (and on :meth:`~SessionRecorder.seal` and
:meth:`~SessionRecorder.aclose`) the segment is cut; a worker thread encrypts
it, stores it atomically and appends it to the hash chain, in order. Nothing
plaintext reaches storage, so a ``kill -9`` loses only the unsealed segment.

If storage fails (disk full), nothing recorded is given up: sealed segments stay
in memory and storing is retried on every tick, ``on_alert`` is told
(:class:`StorageAlert`: ``failing`` at once and every ``ALERT_INTERVAL_S``,
``recovered`` once everything held is stored). :meth:`~SessionRecorder.aclose`
waits, retrying, until the last segment is stored, however long that takes.
Memory is bounded: once ``max_pending_bytes`` are held, new media frames are
not recorded (``paused``, with ``recording_paused`` on the timeline) until
storing has brought it under half of that (``recording_resumed``); what was
recorded before is never dropped. Only :meth:`~SessionRecorder.abandon` (the
process is stopping) gives up what is still held.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import json
import logging
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from . import segment_format as fmt
from .chain import ChainEntry, genesis, link
from .exceptions import RecorderError, StorageFull
from .keys import MasterKey, new_data_key
from .layout import CHAIN_LOG, KEY_FILE, PARTY_RE, RECORDING, segment_name
from .manifest import FORMAT
from .storage import Storage, as_storage
from .track_clock import TrackClock

logger = logging.getLogger(__name__)
_T = TypeVar("_T")

CODECS = {"video": "VP8", "audio": "opus"}
#: a segment this large is cut at once, whatever the time
MAX_SEGMENT_BYTES = 16 << 20
#: at most one alert per this many seconds while storage keeps failing
ALERT_INTERVAL_S = 10.0
#: recorded bytes held in memory (storage failing) past which new media is not recorded
MAX_PENDING_BYTES = 256 << 20
#: seconds between two attempts to store what is held, while closing (doubling from the first)
RETRY_FIRST_S = 0.05
RETRY_MAX_S = 1.0

AlertState = Literal["failing", "paused", "recovered"]


@dataclass(frozen=True)
class StorageAlert:
    """What :class:`SessionRecorder` tells ``on_alert`` about its storage.

    ``failing``: a store failed; everything is held in memory and retried.
    ``paused``: ``max_pending_bytes`` are held: new media is not recorded until
    storage takes it again. ``recovered``: everything held is stored.
    """

    recording: str
    state: AlertState
    message: str
    #: recorded bytes not yet stored
    held_bytes: int
    #: seconds since the first failure of this episode
    failing_s: float = 0.0
    #: media frames not recorded while paused, in this episode
    not_recorded: int = 0

    def __str__(self) -> str:
        return self.message


@dataclass
class _Pending:
    """A cut segment on its way to storage: plaintext until its first store attempt seals it."""

    index: int
    header: dict[str, Any]
    body: bytearray
    sealed: bytes | None = None
    stored: bool = False

    @property
    def size(self) -> int:
        return len(self.sealed) if self.sealed is not None else len(self.body)


class SessionRecorder:
    """Writes one session's recording into ``directory`` (a path or a :class:`Storage`).

    ``clock`` is the clock of frame ``arrival`` and event ``at`` values: epoch
    seconds by default; pass ``loop.time`` to feed ``EncodedFrame.arrival``
    (event-loop time) as is. The recording timeline starts at its value on
    construction; records store arrivals converted to epoch time. Use as
    ``async with`` or call :meth:`start` and :meth:`aclose`.
    """

    def __init__(
        self,
        session_id: str,
        directory: str | Path | Storage,
        master_key: MasterKey,
        *,
        segment_seconds: float = 2.0,
        executor: Executor | None = None,
        on_alert: Callable[[StorageAlert], None] | None = None,
        clock: Callable[[], float] = time.time,
        max_pending_bytes: int = MAX_PENDING_BYTES,
    ) -> None:
        self.session_id = session_id
        self.storage = as_storage(directory)
        self.segment_seconds = segment_seconds
        self.max_pending_bytes = max_pending_bytes
        self._executor = executor
        self._on_alert = on_alert
        self._clock = clock
        data_key = new_data_key()
        self._wrapped_key = master_key.wrap(data_key)
        self._master_key_id = master_key.key_id
        self._aead = AESGCM(data_key)
        #: recording start on the arrival clock, and as epoch seconds
        self.origin = clock()
        self.started_at = time.time()
        self._tracks: dict[tuple[str, str], tuple[fmt.TrackInfo, TrackClock]] = {}
        self._buffer = bytearray()
        self._records = 0
        self._index = 0
        self._pending: deque[_Pending] = deque()
        #: bytes of the segments in ``_pending`` (kept as they are cut, sealed and stored)
        self._pending_size = 0
        self._chain = genesis(session_id)
        self._chain_log: list[str] = []
        self._lock = asyncio.Lock()
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing: asyncio.Task[None] | None = None
        self._closed = False
        self._key_stored = False
        self._last_alert = -ALERT_INTERVAL_S
        #: monotonic time of the first failure of the current episode (None: storage works)
        self._failing_since: float | None = None
        #: arrival-clock time media recording paused (memory bound reached), else None
        self._paused_at: float | None = None
        #: media frames not recorded while paused, this episode and in all
        self._not_recorded = 0
        self.frames_not_recorded = 0
        #: tracks whose next recorded frame follows frames that were not recorded
        self._gap_tracks: set[int] = set()

    def __repr__(self) -> str:
        return f"SessionRecorder({self.session_id!r}, {self.storage!r})"

    async def __aenter__(self) -> SessionRecorder:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    @property
    def segments_stored(self) -> int:
        return len(self._chain_log)

    @property
    def pending_bytes(self) -> int:
        """Bytes recorded but not yet safely stored (the open segment and any unstored ones)."""
        return len(self._buffer) + self._pending_size

    @property
    def closed(self) -> bool:
        """No more frames or events are taken (what is held may still be on its way to storage)."""
        return self._closed

    @property
    def storage_failing(self) -> bool:
        return self._failing_since is not None

    @property
    def media_paused(self) -> bool:
        """New media frames are not recorded: ``max_pending_bytes`` are held, storage failing."""
        return self._paused_at is not None

    async def start(self) -> None:
        """Store the wrapped data key and start sealing every ``segment_seconds``."""
        if self._task is not None:
            return
        try:
            async with self._lock:
                await self._in_thread(self._store_key)
        except OSError as exc:
            raise StorageFull(
                f"recording {self.session_id}: cannot store its key ({exc.strerror})"
            ) from exc
        self._task = asyncio.create_task(self._run(), name=f"recorder {self.session_id}")
        logger.info("recording %s started in %r", self.session_id, self.storage)

    # -- hot path: called from the event loop for every frame ---------------------------

    def write(
        self,
        party: str,
        kind: str,
        data: bytes,
        *,
        timestamp: int,
        clock_rate: int,
        keyframe: bool,
        arrival: float,
        discontinuity: bool = False,
    ) -> None:
        """Append one encoded frame (a whole VP8 frame or Opus packet) of ``party``'s ``kind`` track.

        Pass ``discontinuity=True`` when frames were lost just before this one (e.g. the
        tap subscription's ``dropped`` count grew): the WebM then skips video up to the
        next keyframe, so players never meet a frame whose references are missing.
        """
        if self._closed:
            raise RecorderError(f"recording {self.session_id} is closed")
        entry = self._tracks.get((party, kind)) or self._add_track(party, kind, clock_rate)
        info, clock = entry
        pts_us, new_stream = clock.pts_us(timestamp, arrival)
        if self._held_back(arrival):
            self._not_recorded += 1
            self.frames_not_recorded += 1
            self._gap_tracks.add(info.id)
            return
        if info.id in self._gap_tracks:
            self._gap_tracks.discard(info.id)
            discontinuity = True
        if keyframe and not info.width and kind == "video":
            info.width, info.height = fmt.vp8_keyframe_size(data) or (0, 0)
        flags = (
            (fmt.FLAG_KEYFRAME if keyframe else 0)
            | (fmt.FLAG_NEW_STREAM if new_stream else 0)
            | (fmt.FLAG_AFTER_GAP if discontinuity else 0)
        )
        self._append(info.id, flags, pts_us, arrival, data)

    def _held_back(self, arrival: float) -> bool:
        """Whether a media frame arriving now is not recorded (back-pressure on a full memory).

        Pauses at ``max_pending_bytes`` held and resumes under half of it, so that storage
        coming back has room to catch up; events are always recorded.
        """
        held = self.pending_bytes
        if self._paused_at is None:
            if held < self.max_pending_bytes:
                return False
            self._paused_at = arrival
            self._timeline(
                "recording_paused",
                {"held_bytes": held, "reason": "storage failing, memory limit reached"},
                arrival,
            )
            message = (
                f"recording {self.session_id}: {held / 1e6:.1f} MB held in memory while storage "
                f"fails (limit {self.max_pending_bytes / 1e6:.1f} MB): new media is not recorded "
                "until storage takes it again; what was recorded is kept"
            )
            logger.error("%s", message)
            self._report("paused", message)
            return True
        if held > self.max_pending_bytes // 2:
            return True
        paused_s = max(0.0, arrival - self._paused_at)
        self._paused_at = None
        self._timeline(
            "recording_resumed",
            {"not_recorded_frames": self._not_recorded, "paused_s": round(paused_s, 3)},
            arrival,
        )
        logger.warning(
            "recording %s: media recorded again after %.1f s (%d frames not recorded)",
            self.session_id,
            paused_s,
            self._not_recorded,
        )
        if self._failing_since is None:
            self._not_recorded = 0
        return False

    def new_stream(self, party: str, kind: str) -> None:
        """The participant's track restarted (e.g. a reconnect): re-anchor at its next frame."""
        entry = self._tracks.get((party, kind))
        if entry is not None:
            entry[1].restart()

    def event(
        self, kind: str, data: dict[str, Any] | None = None, *, at: float | None = None
    ) -> int:
        """Record a timeline event; returns its offset from recording start in milliseconds."""
        if self._closed:
            raise RecorderError(f"recording {self.session_id} is closed")
        return self._timeline(kind, data, self._clock() if at is None else at)

    def _timeline(self, kind: str, data: dict[str, Any] | None, at: float) -> int:
        offset_us = round((at - self.origin) * 1_000_000)
        payload = json.dumps({"kind": kind, "data": data or {}}, separators=(",", ":")).encode()
        self._append(fmt.EVENT_TRACK, 0, offset_us, at, payload)
        return offset_us // 1000

    def _add_track(
        self, party: str, kind: str, clock_rate: int
    ) -> tuple[fmt.TrackInfo, TrackClock]:
        if not PARTY_RE.match(party):
            raise RecorderError(f"invalid party name {party!r}")
        if kind not in CODECS:
            raise RecorderError(f"invalid track kind {kind!r}")
        if len(self._tracks) >= fmt.MAX_TRACKS:
            raise RecorderError("too many tracks")
        info = fmt.TrackInfo(len(self._tracks), party, kind, CODECS[kind], clock_rate)
        entry = self._tracks[(party, kind)] = (info, TrackClock(clock_rate, self.origin))
        return entry

    def _append(self, track: int, flags: int, pts_us: int, arrival: float, payload: bytes) -> None:
        wall_us = round((self.started_at + arrival - self.origin) * 1_000_000)
        fmt.append_record(self._buffer, track, flags, pts_us, wall_us, payload)
        self._records += 1
        if len(self._buffer) >= MAX_SEGMENT_BYTES:
            self._cut(final=False)

    # -- sealing ------------------------------------------------------------------

    def _cut(self, *, final: bool) -> None:
        """Close the open segment (if it has records, or it is the final one)."""
        if not self._records and not final:
            return
        self._index += 1
        header = fmt.header_json(
            self.session_id,
            self._index,
            self.started_at,
            time.time(),
            final,
            [info for info, _ in self._tracks.values()],
        )
        body, self._buffer, self._records = self._buffer, bytearray(), 0
        self._pending.append(_Pending(self._index, header, body))
        self._pending_size += len(body)

    async def seal(self) -> None:
        """Cut the open segment now and store everything pending (e.g. after a key business step).

        Raises :class:`StorageFull` if storage fails; the data stays in memory and is retried.
        """
        if self._closed:
            raise RecorderError(f"recording {self.session_id} is closed")
        self._cut(final=False)
        await self._flush()

    async def _flush(self) -> None:
        async with self._lock:
            while self._pending:
                item = self._pending[0]
                before = item.size
                try:
                    entry = await self._in_thread(
                        self._store, item, self._chain, "".join(self._chain_log)
                    )
                except OSError as exc:
                    self._pending_size += item.size - before  # sealed by the attempt
                    self._alert(item, exc)
                    raise StorageFull(
                        f"recording {self.session_id}: segment {item.index:06d} not stored "
                        f"({errno.errorcode.get(exc.errno or 0, exc.strerror)})"
                    ) from exc
                self._pending.popleft()
                self._pending_size -= before
                self._chain = bytes.fromhex(entry.chain)
                self._chain_log.append(entry.line())
            if self._failing_since is not None:
                self._recovered()

    def _store_key(self) -> None:
        """Worker thread: the wrapped data key, then ``recording.json`` (the marker recovery looks for)."""
        if not self._key_stored:
            self.storage.put_bytes(KEY_FILE, self._wrapped_key)
            info = {
                "format": FORMAT,
                "session_id": self.session_id,
                "started_at": self.started_at,
                "master_key_id": self._master_key_id,
            }
            self.storage.put_bytes(RECORDING, json.dumps(info, sort_keys=True).encode())
            self._key_stored = True

    def _store(self, item: _Pending, previous: bytes, chain_log: str) -> ChainEntry:
        """Worker thread: encrypt (once), store the segment, then the extended chain log."""
        self._store_key()
        if item.sealed is None:
            plaintext = fmt.build(item.header, item.body)
            item.sealed = fmt.seal(self._aead, self.session_id, item.index, plaintext)
            item.body = bytearray()
        digest = hashlib.sha256(item.sealed).digest()
        entry = ChainEntry(item.index, len(item.sealed), digest.hex(), link(previous, digest).hex())
        if not item.stored:
            self.storage.put_bytes(segment_name(item.index), item.sealed)
            item.stored = True
        self.storage.put_bytes(CHAIN_LOG, (chain_log + entry.line()).encode())
        return entry

    def _alert(self, item: _Pending, exc: OSError) -> None:
        now = time.monotonic()
        if self._failing_since is None:
            self._failing_since = now
        if now - self._last_alert < ALERT_INTERVAL_S:
            return
        self._last_alert = now
        reason = "disk full" if exc.errno == errno.ENOSPC else (exc.strerror or str(exc))
        message = (
            f"recording {self.session_id}: cannot store segment {item.index:06d} ({reason}); "
            f"{len(self._pending)} segment(s), {self.pending_bytes / 1e6:.1f} MB held in memory, "
            "retrying" + ("; new media is not recorded (memory limit)" if self.media_paused else "")
        )
        logger.error("%s", message)
        self._report("failing", message)

    def _recovered(self) -> None:
        assert self._failing_since is not None
        failing_s = time.monotonic() - self._failing_since
        lost = self._not_recorded
        message = f"recording {self.session_id}: storage works again after {failing_s:.0f} s; " + (
            f"everything recorded is stored, but {lost} media frame(s) were not recorded "
            "(memory limit)"
            if lost
            else "everything recorded is stored, nothing lost"
        )
        logger.warning("%s", message)
        self._report("recovered", message, failing_s=failing_s)
        self._failing_since = None
        self._last_alert = -ALERT_INTERVAL_S
        if self._paused_at is None:
            self._not_recorded = 0

    def _report(
        self,
        state: AlertState,
        message: str,
        *,
        failing_s: float | None = None,
    ) -> None:
        if self._on_alert is None:
            return
        if failing_s is None:
            since = self._failing_since
            failing_s = 0.0 if since is None else time.monotonic() - since
        alert = StorageAlert(
            self.session_id, state, message, self.pending_bytes, failing_s, self._not_recorded
        )
        try:
            self._on_alert(alert)
        except Exception:
            logger.exception("recording %s: the alert callback failed", self.session_id)

    async def _run(self) -> None:
        # cuts on a fixed schedule: a store that takes a while (a loaded machine, a failing
        # disk) does not stretch the next segment, so a kill loses at most ``segment_seconds``
        loop = asyncio.get_running_loop()
        cut_at = loop.time() + self.segment_seconds
        while not self._stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), max(0.0, cut_at - loop.time()))
            if self._stopping.is_set():
                return
            cut_at = max(cut_at + self.segment_seconds, loop.time())
            self._cut(final=False)
            with contextlib.suppress(StorageFull):
                await self._flush()

    async def _in_thread(self, fn: Callable[..., _T], *args: Any) -> _T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def aclose(self) -> None:
        """Seal the last segment (marked final) and store everything; idempotent.

        While storage fails this waits, retrying every ``RETRY_MAX_S`` at most (and alerting
        every ``ALERT_INTERVAL_S``) until everything is stored: nothing is given up. The
        retries run in a task of their own: a cancelled caller does not stop them (call
        again to wait for them, or :meth:`abandon`).
        """
        if not self._closed:
            self._closed = True
            self._stopping.set()
            try:
                if self._task is not None:
                    # shielded: being cancelled here must not cut a store short
                    await asyncio.shield(self._task)
            finally:
                self._cut(final=True)
                self._closing = asyncio.create_task(
                    self._store_all(), name=f"recorder {self.session_id} closing"
                )
        if self._closing is not None:
            await asyncio.shield(self._closing)

    async def _store_all(self) -> None:
        delay = RETRY_FIRST_S
        while True:
            try:
                await self._flush()
                break
            except StorageFull:
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX_S)
        logger.info("recording %s closed: %d segments", self.session_id, self.segments_stored)

    async def abandon(self) -> int:
        """Stop storing (the process is stopping while storage still fails); returns the bytes
        given up. What was stored stays a valid, recoverable recording."""
        self._closed = True
        self._stopping.set()
        for task in (self._task, self._closing):
            if task is not None and not task.done():
                task.cancel()
                await asyncio.wait([task])
        lost = self.pending_bytes
        if lost:
            logger.critical(
                "recording %s: gave up %d unstored segment(s), %.1f MB, that storage did not take",
                self.session_id,
                len(self._pending) + (1 if self._buffer else 0),
                lost / 1e6,
            )
        self._pending.clear()
        self._pending_size = 0
        self._buffer = bytearray()
        return lost

"""Records one session's encoded frames and events into sealed, chained segments.

:meth:`SessionRecorder.write` and :meth:`SessionRecorder.event` are cheap and
synchronous: they append a record to the in-memory segment. Every
``segment_seconds`` (and on :meth:`~SessionRecorder.seal` and
:meth:`~SessionRecorder.aclose`) the segment is cut; a worker thread encrypts
it, stores it atomically and appends it to the hash chain, in order. Nothing
plaintext reaches storage, so a ``kill -9`` loses only the unsealed segment.

If storage fails (disk full), sealed segments stay in memory, ``on_alert`` is
called, and storing is retried on every tick; :meth:`~SessionRecorder.aclose`
keeps retrying for ``close_timeout`` seconds and then raises
:class:`StorageFull` with the data still held (call it again to retry).
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
from typing import Any, TypeVar

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
        on_alert: Callable[[str], None] | None = None,
        clock: Callable[[], float] = time.time,
        close_timeout: float = 30.0,
    ) -> None:
        self.session_id = session_id
        self.storage = as_storage(directory)
        self.segment_seconds = segment_seconds
        self.close_timeout = close_timeout
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
        self._chain = genesis(session_id)
        self._chain_log: list[str] = []
        self._lock = asyncio.Lock()
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self._key_stored = False
        self._last_alert = -ALERT_INTERVAL_S

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
        return len(self._buffer) + sum(p.size for p in self._pending)

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
        if keyframe and not info.width and kind == "video":
            info.width, info.height = fmt.vp8_keyframe_size(data) or (0, 0)
        flags = (
            (fmt.FLAG_KEYFRAME if keyframe else 0)
            | (fmt.FLAG_NEW_STREAM if new_stream else 0)
            | (fmt.FLAG_AFTER_GAP if discontinuity else 0)
        )
        self._append(info.id, flags, pts_us, arrival, data)

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
        at = self._clock() if at is None else at
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
                try:
                    entry = await self._in_thread(
                        self._store, item, self._chain, "".join(self._chain_log)
                    )
                except OSError as exc:
                    self._alert(item, exc)
                    raise StorageFull(
                        f"recording {self.session_id}: segment {item.index:06d} not stored "
                        f"({errno.errorcode.get(exc.errno or 0, exc.strerror)})"
                    ) from exc
                self._pending.popleft()
                self._chain = bytes.fromhex(entry.chain)
                self._chain_log.append(entry.line())

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
        if now - self._last_alert < ALERT_INTERVAL_S:
            return
        self._last_alert = now
        reason = "disk full" if exc.errno == errno.ENOSPC else (exc.strerror or str(exc))
        message = (
            f"recording {self.session_id}: cannot store segment {item.index:06d} ({reason}); "
            f"{len(self._pending)} segment(s), {self.pending_bytes / 1e6:.1f} MB held in memory, retrying"
        )
        logger.error("%s", message)
        if self._on_alert is not None:
            self._on_alert(message)

    async def _run(self) -> None:
        while not self._stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self.segment_seconds)
            if self._stopping.is_set():
                return
            self._cut(final=False)
            with contextlib.suppress(StorageFull):
                await self._flush()

    async def _in_thread(self, fn: Callable[..., _T], *args: Any) -> _T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def aclose(self) -> None:
        """Seal the last segment (marked final) and store everything; idempotent.

        Retries failing storage for ``close_timeout`` seconds, then raises
        :class:`StorageFull`; the data is still held and another call retries.
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
        deadline = time.monotonic() + self.close_timeout
        delay = 0.05
        while True:
            try:
                await self._flush()
                break
            except StorageFull:
                if time.monotonic() + delay > deadline:
                    raise
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
        logger.info("recording %s closed: %d segments", self.session_id, self.segments_stored)

"""One tap per incoming track: encoded frames to the recorder, decoded frames on demand.

A :class:`TrackTap` carries one participant's audio or video. It is fed with
reassembled :class:`~signaling.frames.EncodedFrame` objects by
:meth:`TrackTap.push` (from :class:`~signaling.rtp_forward.FrameAssembler`, or
from aiortc's jitter buffer through :func:`signaling.passthrough.tap_receiver`)
and hands them to its consumers:

* :meth:`TrackTap.add_sink` calls a function for every encoded frame,
  synchronously on the event loop, until the remover it returned is called.
  The recorder (``server/recording.py``) records through it.
* :meth:`TrackTap.subscribe_decoded` returns a :class:`DecodedSubscription`
  whose ``recv()`` yields ``av.VideoFrame``/``av.AudioFrame`` and raises
  ``MediaStreamError`` at the end, like an aiortc ``MediaStreamTrack``. A
  decoder runs (in a worker thread) only while at least one decoded
  subscription is open; identity checks use it.

Frames are only reassembled while some consumer exists (:attr:`TrackTap.wants_frames`);
otherwise the forwarding path just counts packets (:meth:`TrackTap.note_packet`).
A decoded subscriber that falls behind loses its oldest frames, never blocks
the tap, and is told how many it dropped. When the participant reconnects, the
hub :meth:`TrackTap.attach`-es the new receiver to the same tap, so consumers
are unaffected; :attr:`TrackTap.generation` tells them a new stream began.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from typing import cast

import av
from aiortc.codecs import get_decoder
from aiortc.codecs.base import Decoder
from aiortc.jitterbuffer import JitterFrame
from aiortc.mediastreams import MediaStreamError

from .frames import EncodedFrame

logger = logging.getLogger(__name__)

#: encoded frames waiting for the decoder at most (about 2 s of video)
DEFAULT_BACKLOG = 64
#: at most one keyframe request to the sender per this many seconds
KEYFRAME_REQUEST_INTERVAL = 0.3


class DecodedSubscription:
    """Decoded frames of one tap for one consumer, read like an aiortc track."""

    def __init__(self, tap: TrackTap, backlog: int) -> None:
        self._tap = tap
        self._frames: deque[av.VideoFrame | av.AudioFrame] = deque(maxlen=backlog)
        self._ready = asyncio.Event()
        self._closed = False
        #: frames lost because this subscriber fell ``backlog`` frames behind
        self.dropped = 0

    def _push(self, frame: av.VideoFrame | av.AudioFrame) -> None:
        if self._closed:
            return
        if len(self._frames) == self._frames.maxlen:
            self.dropped += 1
        self._frames.append(frame)
        self._ready.set()

    async def recv(self) -> av.VideoFrame | av.AudioFrame:
        """Next decoded frame; raises ``MediaStreamError`` once closed and drained."""
        while not self._frames:
            if self._closed:
                raise MediaStreamError
            self._ready.clear()
            await self._ready.wait()
        return self._frames.popleft()

    def _end(self) -> None:
        self._closed = True
        self._ready.set()

    def close(self) -> None:
        """Stop receiving; idempotent."""
        if not self._closed:
            self._end()
            self._tap._unsubscribe(self)

    @property
    def closed(self) -> bool:
        return self._closed


class TrackTap:
    """Fan-out point for one participant's audio or video.

    ``request_keyframe`` is called (as a coroutine) when a consumer needs a
    keyframe from the sender: a new decoded subscriber, a forwarding track that
    switched source, or a keyframe request from the receiving browser.
    """

    def __init__(
        self,
        kind: str,
        *,
        name: str = "",
        request_keyframe: Callable[[], Awaitable[object]] | None = None,
    ) -> None:
        self.kind = kind
        self.name = name or kind
        self._sinks: list[Callable[[EncodedFrame], None]] = []
        self._decoded: list[DecodedSubscription] = []
        self._request_keyframe = request_keyframe
        self._decode_queue: asyncio.Queue[EncodedFrame | None] | None = None
        self._decode_task: asyncio.Task[None] | None = None
        #: decoder tasks told to stop, awaited in aclose()
        self._stopping: set[asyncio.Task[None]] = set()
        self._keyframe_task: asyncio.Task[object] | None = None
        self._waiting_keyframe = False
        self._last_keyframe_request = float("-inf")
        self._closed = False
        self.keyframe_requests = 0
        #: counters for tests, stats and benchmarks
        self.frames_in = 0
        self.bytes_in = 0
        self.keyframes_in = 0
        self.frames_decoded = 0
        self.last_frame_at: float | None = None
        #: the source generation: bumped at every attach() so consumers can spot a new sender
        self.generation = 0

    # -- wiring ------------------------------------------------------------------

    def attach(self, request_keyframe: Callable[[], Awaitable[object]] | None) -> None:
        """A (new) receiver feeds this tap: e.g. the participant reconnected."""
        self._request_keyframe = request_keyframe
        self._last_keyframe_request = float("-inf")
        self.generation += 1
        self._waiting_keyframe = self.kind == "video"

    def push(self, frame: EncodedFrame) -> None:
        """Called by the receiver's sink on the event loop for each reassembled frame."""
        if self._closed:
            return
        self.frames_in += 1
        self.bytes_in += len(frame.data)
        self.last_frame_at = frame.arrival
        if frame.keyframe and self.kind == "video":
            self.keyframes_in += 1
        for sink in self._sinks:
            try:
                sink(frame)
            except Exception:
                logger.exception("%s: frame sink failed", self.name)
        if self._decode_queue is not None:
            if self._waiting_keyframe and not frame.keyframe:
                return
            self._waiting_keyframe = False
            if self._decode_queue.qsize() < DEFAULT_BACKLOG:
                self._decode_queue.put_nowait(frame)

    def note_packet(self, now: float, size: int, marker: int, keyframe_start: bool) -> None:
        """Count a forwarded packet while nobody wants frames (no frame is assembled then)."""
        self.last_frame_at = now
        self.bytes_in += size
        if marker or self.kind == "audio":
            self.frames_in += 1
        if keyframe_start:
            self.keyframes_in += 1

    @property
    def wants_frames(self) -> bool:
        """Whether some consumer (recorder, identity check...) needs reassembled frames."""
        return bool(self._sinks or self._decoded)

    def request_keyframe(self) -> None:
        """Ask the sender for a keyframe (coalesced: at most one request in flight)."""
        if self.kind != "video" or self._request_keyframe is None or self._closed:
            return
        if self._keyframe_task is not None and not self._keyframe_task.done():
            return
        loop = asyncio.get_running_loop()
        if loop.time() - self._last_keyframe_request < KEYFRAME_REQUEST_INTERVAL:
            return
        self._last_keyframe_request = loop.time()
        self.keyframe_requests += 1
        self._keyframe_task = loop.create_task(self._send_keyframe_request())

    async def _send_keyframe_request(self) -> None:
        try:
            if self._request_keyframe is not None:
                await self._request_keyframe()
        except Exception:  # a closing transport: the next request will retry
            logger.debug("%s: keyframe request failed", self.name, exc_info=True)

    # -- subscriptions -------------------------------------------------------------

    def add_sink(self, sink: Callable[[EncodedFrame], None]) -> Callable[[], None]:
        """Call ``sink(frame)`` synchronously for every encoded frame; returns a remover.

        The encoded-frame path (the recorder's): for cheap, non-blocking
        consumers, with no queue and no task switch per frame. It ends when the
        remover is called; a closing tap drops its sinks without calling them
        again (whoever added a sink learns that the call ended from the broker).
        A change of :attr:`generation` between two frames means a new stream
        from a new connection of the sender.
        """
        if not self._closed:
            self._sinks.append(sink)

        def remove() -> None:
            if sink in self._sinks:
                self._sinks.remove(sink)

        return remove

    def subscribe_decoded(self, backlog: int = 8) -> DecodedSubscription:
        """Decoded frames; the decoder starts now and stops with the last subscriber."""
        sub = DecodedSubscription(self, backlog)
        if self._closed:
            sub._end()
            return sub
        self._decoded.append(sub)
        if self._decode_task is None:
            self._decode_queue = asyncio.Queue()
            self._waiting_keyframe = self.kind == "video"
            self._decode_task = asyncio.get_running_loop().create_task(
                self._run_decoder(), name=f"decode-{self.name}"
            )
            self.request_keyframe()
        return sub

    def _unsubscribe(self, sub: DecodedSubscription) -> None:
        if sub in self._decoded:
            self._decoded.remove(sub)
        if not self._decoded:
            self._stop_decoder()

    @property
    def decoding(self) -> bool:
        return self._decode_task is not None

    # -- decoder -------------------------------------------------------------------

    def _stop_decoder(self) -> None:
        if self._decode_queue is not None:
            self._decode_queue.put_nowait(None)
        if self._decode_task is not None:
            task = self._decode_task
            self._stopping.add(task)
            task.add_done_callback(self._stopping.discard)
        self._decode_queue = None
        self._decode_task = None

    async def _run_decoder(self) -> None:
        queue = self._decode_queue
        assert queue is not None
        loop = asyncio.get_running_loop()
        decoder: Decoder | None = None
        codec_name = None
        while True:
            frame = await queue.get()
            if frame is None:
                break
            if decoder is None or frame.codec.name != codec_name:
                decoder = get_decoder(frame.codec)
                codec_name = frame.codec.name
            try:
                decoded = await loop.run_in_executor(
                    None, decoder.decode, JitterFrame(frame.data, frame.timestamp)
                )
            except av.FFmpegError:
                logger.info("%s: decode error, asking for a keyframe", self.name)
                self._waiting_keyframe = True
                self.request_keyframe()
                continue
            # aiortc types decode() as returning av.Frame: its decoders make video or audio frames
            for out in cast("list[av.VideoFrame | av.AudioFrame]", decoded):
                self.frames_decoded += 1
                for sub in list(self._decoded):
                    sub._push(out)

    async def aclose(self) -> None:
        """End every subscription and stop decoding; idempotent."""
        if self._closed:
            return
        self._closed = True
        for sub in self._decoded:
            sub._end()
        self._decoded.clear()
        self._sinks.clear()
        self._stop_decoder()
        if self._stopping:
            await asyncio.gather(*self._stopping, return_exceptions=True)
        if self._keyframe_task is not None:
            self._keyframe_task.cancel()
            await asyncio.gather(self._keyframe_task, return_exceptions=True)

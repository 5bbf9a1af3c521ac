"""Pre-encoded media for headless participants.

Encoding 640x480 VP8 in real time costs a core per stream; benchmarks run
dozens of participants on one machine, so headless participants encode a clip
once (:func:`encode_video`, :func:`encode_audio`) and :class:`EncodedLoopTrack`
replays the packets in a loop at their own pace, with continuous timestamps.
aiortc's sender packetises ``av.Packet`` objects without encoding. A keyframe
request makes the track jump to the next keyframe of the clip.
"""

from __future__ import annotations

import asyncio
import fractions
import logging
import math
import time
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av
import numpy as np
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from ..rtp_forward import Outbound

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class EncodedClip:
    kind: str
    packets: list[bytes]
    keyframes: list[bool]
    #: duration of one packet in clock ticks
    ticks: int
    clock_rate: int

    @property
    def duration_s(self) -> float:
        return len(self.packets) * self.ticks / self.clock_rate


def _synthetic_frames(width: int, height: int, count: int) -> Iterator[av.VideoFrame]:
    """Moving colour bars with a frame counter: cheap, never blank, easy to tell apart."""
    x = np.arange(width, dtype=np.int32)
    for i in range(count):
        hue = ((x + i * 8) % width) * 255 // width
        img = np.empty((height, width, 3), dtype=np.uint8)
        img[:, :, 0] = hue
        img[:, :, 1] = 255 - hue
        img[:, :, 2] = (i * 4) % 256
        block = (i * 16) % max(1, width - 64)
        img[height // 2 - 32 : height // 2 + 32, block : block + 64] = 255
        yield av.VideoFrame.from_ndarray(img, format="rgb24")


def _file_frames(path: Path, width: int, height: int, count: int) -> Iterator[av.VideoFrame]:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        n = 0
        while n < count:
            for frame in container.decode(stream):
                yield frame.reformat(width=width, height=height, format="yuv420p")
                n += 1
                if n >= count:
                    return
            container.seek(0)


def encode_video(
    source: str | Path | None = None,
    *,
    width: int = 640,
    height: int = 480,
    fps: int = 30,
    seconds: float = 4.0,
    bitrate: int = 600_000,
    keyframe_interval: int = 30,
) -> EncodedClip:
    """Encode ``seconds`` of video (a file, or synthetic bars when ``source`` is None) to VP8."""
    count = max(1, int(seconds * fps))
    codec = av.CodecContext.create("libvpx", "w")
    codec.width = width
    codec.height = height
    codec.pix_fmt = "yuv420p"
    codec.time_base = fractions.Fraction(1, fps)
    codec.bit_rate = bitrate
    codec.gop_size = keyframe_interval
    codec.options = {"deadline": "realtime", "cpu-used": "8", "lag-in-frames": "0"}
    frames = (
        _synthetic_frames(width, height, count)
        if source is None
        else _file_frames(Path(source), width, height, count)
    )
    packets: list[bytes] = []
    keyframes: list[bool] = []
    for i, frame in enumerate(frames):
        frame = frame.reformat(format="yuv420p") if frame.format.name != "yuv420p" else frame
        frame.pts = i
        frame.time_base = codec.time_base
        if i % keyframe_interval == 0:
            frame.pict_type = av.video.frame.PictureType.I
        for packet in codec.encode(frame):
            packets.append(bytes(packet))
            keyframes.append(bool(packet.is_keyframe))
    for packet in codec.encode(None):
        packets.append(bytes(packet))
        keyframes.append(bool(packet.is_keyframe))
    return EncodedClip("video", packets, keyframes, ticks=90000 // fps, clock_rate=90000)


def encode_audio(
    seconds: float = 4.0,
    *,
    frequency: float = 440.0,
    pulses: tuple[float, ...] = (),
    pulse_s: float = 0.08,
) -> EncodedClip:
    """Encode a tone to Opus: continuous (with a 4 Hz wobble), or only in ``pulse_s`` bursts
    starting at each of ``pulses`` (seconds into the clip), for synchronisation tests."""
    rate = 48000
    samples_per_packet = 960  # 20 ms
    count = max(1, int(seconds * rate / samples_per_packet))
    codec = av.CodecContext.create("libopus", "w")
    codec.sample_rate = rate
    codec.layout = "stereo"
    codec.format = "s16"
    codec.bit_rate = 32000
    packets: list[bytes] = []
    t = np.arange(samples_per_packet) / rate
    for i in range(count):
        tt = t + i * samples_per_packet / rate
        if pulses:
            gate = np.zeros_like(tt)
            for start in pulses:
                gate[(tt >= start) & (tt < start + pulse_s)] = 1.0
            wave = 0.6 * np.sin(2 * math.pi * frequency * tt) * gate
        else:
            wave = (
                0.3
                * np.sin(2 * math.pi * frequency * tt)
                * (0.6 + 0.4 * np.sin(2 * math.pi * 4 * tt))
            )
        pcm = (wave * 32767).astype(np.int16)
        stereo = np.repeat(pcm, 2).reshape(1, -1)
        frame = av.AudioFrame.from_ndarray(stereo, format="s16", layout="stereo")
        frame.sample_rate = rate
        frame.pts = i * samples_per_packet
        for packet in codec.encode(frame):
            packets.append(bytes(packet))
    return EncodedClip("audio", packets, [True] * len(packets), ticks=960, clock_rate=rate)


class EncodedLoopTrack(MediaStreamTrack):
    """Plays an :class:`EncodedClip` in a loop, in real time, without encoding."""

    def __init__(self, clip: EncodedClip) -> None:
        super().__init__()
        self.kind = clip.kind
        self._clip = clip
        self._index = 0
        self._pts = 0
        self._start: float | None = None
        self._time_base = fractions.Fraction(1, clip.clock_rate)
        self.frames_sent = 0
        self.keyframe_requests = 0

    def request_keyframe(self) -> None:
        """Jump to the next keyframe of the clip (what a live encoder would produce)."""
        self.keyframe_requests += 1
        keyframes = self._clip.keyframes
        n = len(keyframes)
        for step in range(n):
            i = (self._index + step) % n
            if keyframes[i]:
                self._index = i
                return

    async def recv(self) -> av.Packet:
        if self.readyState != "live":
            raise MediaStreamError
        if self._start is None:
            self._start = time.monotonic()
        due = self._start + self._pts / self._clip.clock_rate
        delay = due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        packet = av.Packet(self._clip.packets[self._index])
        packet.pts = self._pts
        packet.time_base = self._time_base
        self._index = (self._index + 1) % len(self._clip.packets)
        self._pts += self._clip.ticks
        self.frames_sent += 1
        return packet


# -- lean sending: ready-made RTP packets straight to the socket ----------------------------

#: largest VP8 payload per RTP packet (descriptor included), as aiortc and browsers use
_VP8_MAX_PAYLOAD = 1200
_VP8_DESCRIPTOR = 4  # X, I, 15-bit picture id


def packetize(clip: EncodedClip) -> list[list[bytes]]:
    """The RTP payloads of each frame of ``clip``, VP8 without its 4-byte descriptor.

    Opus frames are one packet each. VP8 frames are split into chunks that,
    with the descriptor :class:`ClipSender` puts in front (RFC 7741: start bit
    and a 15-bit picture id that keeps counting across loops), fit in
    :data:`_VP8_MAX_PAYLOAD`.
    """
    if clip.kind == "audio":
        return [[packet] for packet in clip.packets]
    size = _VP8_MAX_PAYLOAD - _VP8_DESCRIPTOR
    return [
        [frame[i : i + size] for i in range(0, len(frame), size)] or [b""] for frame in clip.packets
    ]


#: how often the shared pacer of one event loop sends what is due (seconds)
PACER_INTERVAL_S = 0.01


class _Pacer:
    """One timer per event loop sends the due frames of every :class:`ClipSender`.

    A timer per sender would wake the loop for each frame (80 times a second
    per participant); one tick every :data:`PACER_INTERVAL_S` sends a batch,
    at most that much later than due (as a browser's paced sender does).
    """

    _by_loop: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Pacer] = (
        weakref.WeakKeyDictionary()
    )

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._senders: dict[ClipSender, None] = {}
        self._handle: asyncio.Handle | None = None

    @classmethod
    def of(cls, loop: asyncio.AbstractEventLoop) -> _Pacer:
        pacer = cls._by_loop.get(loop)
        if pacer is None:
            pacer = cls._by_loop[loop] = cls(loop)
        return pacer

    def add(self, sender: ClipSender) -> None:
        self._senders[sender] = None
        if self._handle is None:
            self._handle = self._loop.call_soon(self._tick)

    def remove(self, sender: ClipSender) -> None:
        self._senders.pop(sender, None)
        if not self._senders and self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _tick(self) -> None:
        now = self._loop.time()
        for sender in list(self._senders):
            try:
                sender.send_due(now)
            except Exception:  # one broken sender must not stop the others
                logger.exception("clip sender failed")
                self.remove(sender)
        self._handle = (
            self._loop.call_at(now + PACER_INTERVAL_S, self._tick) if self._senders else None
        )


class ClipSender:
    """Plays an :class:`EncodedClip` on a peer connection's sender as ready-made RTP packets.

    The lean counterpart of :class:`EncodedLoopTrack` for benchmarks: instead
    of aiortc's send loop (a task per track, packetising each frame and
    awaiting each packet), the frames are sent by the loop's shared
    :class:`_Pacer` through the hub's own
    :class:`~signaling.rtp_forward.Outbound` (header, extensions, NACK history
    as RTX, sender-report bookkeeping), encrypted and written to the socket
    synchronously. The sender's track is a
    :class:`~signaling.rtp_forward.HoldingTrack` so aiortc's loop stays idle.
    Paced (from the moment the transport connects) and looped like
    :class:`EncodedLoopTrack`; a keyframe request jumps to the next keyframe.
    """

    generation = 0

    def __init__(self, clip: EncodedClip, sender: Any, holding: Any) -> None:
        self.kind = clip.kind
        self._clip = clip
        self._frames = packetize(clip)
        self._holding = holding
        self._sender = sender
        self.outbound = Outbound(self, sender)
        self._index = 0
        self._seq = 0
        self._ts = 0
        self._picture_id = 0
        #: loop time at which the clip's timestamp 0 is due (None: not connected yet)
        self._start: float | None = None
        self._sent_ticks = 0
        self._stopped = False
        self.frames_sent = 0
        self.keyframe_requests = 0
        self._pacer = _Pacer.of(asyncio.get_running_loop())
        self._pacer.add(self)

    # what an Outbound asks of its upstream
    def request_keyframe(self) -> None:
        """Jump to the next keyframe of the clip (what a live encoder would produce)."""
        self.keyframe_requests += 1
        keyframes = self._clip.keyframes
        for step in range(len(keyframes)):
            i = (self._index + step) % len(keyframes)
            if keyframes[i]:
                self._index = i
                return

    async def nack_upstream(self, seq: int) -> None:
        """Nothing upstream of a clip: a packet out of the NACK history is gone."""

    async def relay_remb(self, bitrate: int) -> None:
        """A clip cannot change its bitrate."""

    def stop(self) -> None:
        self._stopped = True
        self._pacer.remove(self)
        self.outbound.close()
        self._holding.stop()

    def send_due(self, now: float) -> None:
        """Send every frame due by ``now`` (called by the pacer)."""
        transport = self._sender.transport
        if transport is None or transport.state != "connected" or not self.outbound.ready:
            self._start = None  # (re)starts with the connection, continuing the clip
            return
        if self._start is None:
            self._start = now - self._sent_ticks / self._clip.clock_rate
        rate = self._clip.clock_rate
        while self._start + self._sent_ticks / rate <= now and not self._stopped:
            self._send_frame(now)

    def _send_frame(self, now: float) -> None:
        payloads = self._frames[self._index]
        # advance first: a keyframe request while building (a new outbound) jumps from here
        self._index = (self._index + 1) % len(self._frames)
        video = self.kind == "video"
        last = len(payloads) - 1
        outbound = self.outbound
        pid = self._picture_id
        for i, payload in enumerate(payloads):
            if video:
                payload = (
                    bytes((0x90 if i == 0 else 0x80, 0x80, 0x80 | (pid >> 8), pid & 0xFF)) + payload
                )
            packet = outbound.build(0, self._seq, self._ts, int(i == last), payload, now)
            self._seq = (self._seq + 1) & 0xFFFF
            if packet is not None and not outbound.send_now(packet):
                outbound.send_later(packet)
        self._picture_id = (pid + 1) & 0x7FFF
        self._ts = (self._ts + self._clip.ticks) & 0xFFFFFFFF
        self._sent_ticks += self._clip.ticks
        self.frames_sent += 1

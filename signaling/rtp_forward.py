"""Packet-level forwarding: one participant's RTP goes to the other as it arrives.

An SFU forwards packets, not frames. For each (source participant, kind) a
:class:`Lane` takes the decrypted RTP packets of that participant's audio or
video straight from the DTLS transport (:func:`signaling.passthrough.hook_rtp_data`)
and hands each one to the :class:`Outbound` of the other participant, which
rewrites the 12-byte header (its own SSRC, payload type, sequence numbers and
timestamps) and writes its own header extensions, then encrypts and sends it.
Nothing is depacketised, reassembled, re-packetised or queued on the way, and
no task switch happens per packet: this is what makes passthrough cheap
(``docs/benchmarks.md``).

What aiortc's receive path did besides reassembling frames is kept:

* **Frames for the taps.** While a consumer wants frames (the recorder, an
  identity check), the lane also reassembles them (:class:`FrameAssembler`) and
  pushes them to the tap. With no consumer it only counts. Either way it feeds
  the receiver-report statistics and marks the source active, as aiortc's
  receiver (which never sees these packets) would have.
* **Loss.** The outbound keeps the last :data:`HISTORY` packets and answers the
  receiving browser's NACKs from them (as RTX where negotiated). A packet the
  hub never got is asked for upstream, mapped back to the sender's numbering.
* **Bandwidth.** The receiving browser's REMB is relayed to the sending one.
* **Keyframes.** PLI/FIR from the receiving browser reach the sender
  (``media_hub``); a new outbound, or a source that reconnected, starts at the
  first packet of a keyframe and rebases sequence numbers and timestamps so
  the receiving browser sees one continuous stream.
* **Sender reports.** The outbound updates what its sender's RTCP loop reports
  (NTP/RTP time, packet and octet counts) so the browser can sync audio and video.
"""

from __future__ import annotations

import asyncio
import logging
import random
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import NoReturn, Protocol

from aiortc import MediaStreamTrack, RTCRtpReceiver, RTCRtpSender
from aiortc.mediastreams import MediaStreamError
from aiortc.rtcdtlstransport import RTCDtlsTransport
from aiortc.rtcrtpparameters import RTCRtpCodecParameters, RTCRtpSendParameters
from aiortc.rtp import (
    RTCP_PSFB_APP,
    RTCP_RTPFB_NACK,
    AnyRtcpPacket,
    RtcpPsfbPacket,
    RtcpRtpfbPacket,
    pack_remb_fci,
    unpack_remb_fci,
)

from . import passthrough
from .frames import EncodedFrame, is_keyframe
from .track_tap import TrackTap

logger = logging.getLogger(__name__)

_HEADER = struct.Struct("!BBHII")
#: packets kept per outbound stream to answer NACKs (about 2 s of 640x480 video)
HISTORY = 256
_HISTORY_MASK = HISTORY - 1
#: seconds between refreshes of the receiver's "active source" list (keyframe requests use it)
_ACTIVE_REFRESH_S = 1.0
_NTP_EPOCH_OFFSET = 2208988800  # 1900-01-01 -> 1970-01-01, seconds
_ABS_SEND_TIME = "http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time"
_MID = "urn:ietf:params:rtp-hdrext:sdes:mid"


def ntp_now() -> int:
    """The current time as a 64-bit NTP timestamp."""
    return int((time.time() + _NTP_EPOCH_OFFSET) * 4294967296.0)


def parse_rtp(data: bytes) -> tuple[int, int, int, int, bytes] | None:
    """``(marker, payload_type, sequence_number, timestamp, payload)``; None if malformed.

    The payload excludes CSRCs, header extensions and padding.
    """
    size = len(data)
    if size < 12 or data[0] >> 6 != 2:
        return None
    first = data[0]
    pos = 12 + 4 * (first & 0x0F)
    if first & 0x10:
        if pos + 4 > size:
            return None
        pos += 4 + 4 * ((data[pos + 2] << 8) | data[pos + 3])
    end = size - data[-1] if first & 0x20 else size
    if pos > end:
        return None
    second = data[1]
    return (
        second >> 7,
        second & 0x7F,
        (data[2] << 8) | data[3],
        int.from_bytes(data[4:8], "big"),
        data[pos:end],
    )


def vp8_descriptor_size(payload: bytes) -> int:
    """Length of the VP8 payload descriptor (RFC 7741) at the start of ``payload``; -1 if cut off."""
    if not payload:
        return -1
    pos = 1
    if payload[0] & 0x80:  # X: extension byte
        if len(payload) < 2:
            return -1
        ext = payload[1]
        pos = 2
        if ext & 0x80:  # I: picture id, 7 or 15 bits
            if len(payload) <= pos:
                return -1
            pos += 2 if payload[pos] & 0x80 else 1
        if ext & 0x40:  # L: TL0PICIDX
            pos += 1
        if ext & 0x30:  # T or K: TID/KEYIDX
            pos += 1
    return pos if pos < len(payload) else -1


def vp8_starts_keyframe(payload: bytes) -> bool:
    """Whether an RTP payload (RFC 7741) is the first packet of a VP8 keyframe."""
    if not payload or not payload[0] & 0x10 or payload[0] & 0x0F:  # S bit, partition 0
        return False
    pos = vp8_descriptor_size(payload)
    return pos > 0 and payload[pos] & 0x01 == 0


def _newer16(a: int, b: int) -> bool:
    return a != b and (a - b) & 0xFFFF < 0x8000


class HoldingTrack(MediaStreamTrack):
    """Holds a forwarding sender's place: aiortc's send loop waits on it, packets bypass it."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind
        self._stopped = asyncio.Event()

    async def recv(self) -> NoReturn:
        await self._stopped.wait()
        raise MediaStreamError

    def stop(self) -> None:
        self._stopped.set()
        super().stop()


#: how long (in 90 kHz ticks) an incomplete video frame waits for a retransmission before the
#: frames after it go to the taps without it (100 ms)
_HOLD_TICKS = 9000
_MAX_PENDING_FRAMES = 64


class FrameAssembler:
    """Reassembles one stream's frames from its packets, for the tap's consumers.

    Runs only while a consumer (the recorder, an identity check) wants frames.
    Frames go out in timestamp order; a video frame missing a packet waits up to
    100 ms for it (a retransmission the receiving browser asked for) before later
    frames go on without it and a keyframe is requested. Timestamps start at 0
    and unwrap, as aiortc's receiver gives them.
    """

    def __init__(
        self,
        codec: RTCRtpCodecParameters,
        push: Callable[[EncodedFrame], None],
        on_loss: Callable[[], None],
    ) -> None:
        self._codec = codec
        self._video = codec.mimeType.lower().startswith("video/")
        self._push = push
        self._on_loss = on_loss
        self._frames: dict[int, list] = {}  # timestamp -> [parts by seq, first seq, last seq]
        self._done: int | None = None
        #: sequence number the next frame out should start at (None: any)
        self._expected: int | None = None
        self._raw: int | None = None
        self._value = 0
        self.lost = 0

    def _unwrap(self, timestamp: int) -> int:
        if self._raw is None:
            self._raw = timestamp
            return 0
        delta = (timestamp - self._raw) & 0xFFFFFFFF
        if delta >= 0x80000000:
            return self._value + delta - 0x100000000  # reordered: older than the newest seen
        self._raw = timestamp
        self._value += delta
        return self._value

    def add(self, seq: int, timestamp: int, marker: int, payload: bytes, now: float) -> None:
        ts = self._unwrap(timestamp)
        if self._done is not None and ts <= self._done:
            return  # late or repeated: its turn has passed
        if not self._video:
            self._done = ts
            self._push(
                EncodedFrame(
                    data=payload, timestamp=ts, codec=self._codec, keyframe=True, arrival=now
                )
            )
            return
        size = vp8_descriptor_size(payload)
        if size < 0:
            return
        frame = self._frames.get(ts)
        if frame is None:
            frame = self._frames[ts] = [{}, None, None]
        frame[0][seq] = payload[size:]
        if payload[0] & 0x10 and not payload[0] & 0x0F:
            frame[1] = seq
        if marker:
            frame[2] = seq
        elif frame[2] is None and len(self._frames) == 1:
            return  # the only frame pending and its end not seen yet: nothing can go out
        self._flush(now)

    def _flush(self, now: float) -> None:
        frames = self._frames
        while frames:
            head = min(frames)
            parts, first, last = frames[head]
            complete = False
            if first is not None and last is not None:
                count = ((last - first) & 0xFFFF) + 1
                complete = len(parts) >= count and all(
                    (first + i) & 0xFFFF in parts for i in range(count)
                )
            # in sequence: nothing (a whole frame, say) is missing between the last frame out and this one
            in_sequence = self._expected is None or first == self._expected
            expired = max(frames) - head > _HOLD_TICKS or len(frames) > _MAX_PENDING_FRAMES
            if complete and (in_sequence or expired):
                if not in_sequence:
                    self._lose()
                data = b"".join(parts[(first + i) & 0xFFFF] for i in range(count))
                del frames[head]
                self._done = head
                self._expected = (last + 1) & 0xFFFF
                self._push(
                    EncodedFrame(
                        data=data,
                        timestamp=head,
                        codec=self._codec,
                        keyframe=is_keyframe(self._codec.mimeType, data),
                        arrival=now,
                    )
                )
                continue
            if expired:
                del frames[head]
                self._done = head
                self._expected = (last + 1) & 0xFFFF if last is not None else None
                self._lose()
                continue
            break

    def _lose(self) -> None:
        self.lost += 1
        self._on_loss()


@dataclass(slots=True)
class Source:
    """One SSRC arriving on a participant's transport."""

    lane: Lane
    receiver: RTCRtpReceiver
    generation: int
    ssrc: int
    rtx: bool
    clock_rate: int
    #: the media codec (for an RTX stream: the codec it repairs)
    codec: RTCRtpCodecParameters
    active_at: float = float("-inf")


class Upstream(Protocol):
    """Where an :class:`Outbound`'s packets come from: a :class:`Lane` (or any other packet
    source, such as the clip players of ``signaling.contrib``)."""

    kind: str
    #: bumped when the source changes (the outbound then restarts at a keyframe and rebases)
    generation: int

    def request_keyframe(self) -> None: ...
    async def nack_upstream(self, seq: int) -> None: ...
    async def relay_remb(self, bitrate: int) -> None: ...


class Lane:
    """One participant's audio or video, from its receiver to the other participant's sender."""

    def __init__(self, tap: TrackTap) -> None:
        self.tap = tap
        self.kind = tap.kind
        self.receiver: RTCRtpReceiver | None = None
        self.dtls: RTCDtlsTransport | None = None
        self.generation = -1
        #: SSRC of the current source's media (not RTX) stream, once seen
        self.media_ssrc: int | None = None
        self.outbound: Outbound | None = None
        self._assembler: FrameAssembler | None = None
        self.packets_in = 0

    def attach_receiver(self, receiver: RTCRtpReceiver, dtls: RTCDtlsTransport) -> None:
        """A (new) connection of the source participant: called after the tap's attach()."""
        self.receiver = receiver
        self.dtls = dtls
        self.generation = self.tap.generation
        self.media_ssrc = None
        self._assembler = None

    def _process(self, source: Source, data: bytes) -> bytes | None:
        """Account for one decrypted packet; returns what the outbound should send, if anything."""
        parsed = parse_rtp(data)
        if parsed is None:
            return None
        marker, _pt, seq, timestamp, payload = parsed
        tap = self.tap
        loop_time = asyncio.get_running_loop().time()
        # what aiortc's receiver would have noted: receiver reports, sources for keyframe requests
        passthrough.count_received(source.receiver, source.ssrc, source.clock_rate, seq, timestamp)
        if loop_time - source.active_at > _ACTIVE_REFRESH_S:
            source.active_at = loop_time
            passthrough.mark_source_active(source.receiver, source.ssrc)
        if source.generation != self.generation:
            return None  # an old connection of the source, still draining
        if source.rtx:
            if len(payload) < 3:  # padding probe, or nothing to repair
                return None
            seq = (payload[0] << 8) | payload[1]
            payload = payload[2:]
        else:
            self.media_ssrc = source.ssrc
            if not payload:
                return None
        if tap.wants_frames:
            assembler = self._assembler
            if assembler is None:
                assembler = self._assembler = FrameAssembler(
                    source.codec, tap.push, tap.request_keyframe
                )
            assembler.add(seq, timestamp, marker, payload, loop_time)
        else:
            self._assembler = None
            if not source.rtx:
                tap.note_packet(
                    loop_time,
                    len(payload),
                    marker,
                    self.kind == "video" and vp8_starts_keyframe(payload),
                )
        self.packets_in += 1
        outbound = self.outbound
        if outbound is None:
            return None
        return outbound.build(self.generation, seq, timestamp, marker, payload, loop_time)

    def take(self, source: Source, srtp: bytes) -> bool:
        """Forward an encrypted packet synchronously, from the socket callback; False: not here."""
        outbound = self.outbound
        if self.dtls is None or (outbound is not None and not outbound.can_send_now()):
            return False
        data = passthrough.unprotect_rtp(self.dtls, srtp)
        if data is None:
            return True  # failed authentication: dropped, as aiortc would
        packet = self._process(source, data)
        if packet is not None and outbound is not None and not outbound.send_now(packet):
            outbound.send_later(packet)
        return True

    async def receive(self, source: Source, data: bytes, arrival_ms: int) -> None:
        """A decrypted packet from aiortc's receive task (the outbound could not send at once)."""
        packet = self._process(source, data)
        if packet is not None and self.outbound is not None:
            await self.outbound.send(packet)

    def request_keyframe(self) -> None:
        self.tap.request_keyframe()

    async def nack_upstream(self, seq: int) -> None:
        """Ask the source for a packet the hub never received."""
        if self.receiver is None or self.media_ssrc is None:
            return
        ssrc = self.media_ssrc
        await passthrough.send_receiver_rtcp(
            self.receiver,
            lambda rtcp_ssrc: RtcpRtpfbPacket(
                fmt=RTCP_RTPFB_NACK, ssrc=rtcp_ssrc, media_ssrc=ssrc, lost=[seq]
            ),
        )

    async def relay_remb(self, bitrate: int) -> None:
        """Pass the receiving browser's bandwidth estimate to the source."""
        if self.receiver is None or self.media_ssrc is None:
            return
        fci = pack_remb_fci(bitrate, [self.media_ssrc])
        await passthrough.send_receiver_rtcp(
            self.receiver,
            lambda rtcp_ssrc: RtcpPsfbPacket(
                fmt=RTCP_PSFB_APP, ssrc=rtcp_ssrc, media_ssrc=0, fci=fci
            ),
        )


class Ingress:
    """Takes a participant's decrypted RTP packets off its DTLS transport for the lanes."""

    def __init__(self, dtls: RTCDtlsTransport) -> None:
        self.dtls = dtls
        self._lanes: dict[RTCRtpReceiver, tuple[Lane, int]] = {}
        self._sources: dict[int, Source] = {}
        self.unrouted = 0
        self.taken = 0
        passthrough.hook_rtp_data(dtls, self._handle)
        passthrough.hook_datagrams(dtls, self._take)

    def add(self, receiver: RTCRtpReceiver, lane: Lane) -> None:
        self._lanes[receiver] = (lane, lane.generation)

    def close(self) -> None:
        self._lanes.clear()
        self._sources.clear()

    def _resolve(self, data: bytes, ssrc: int) -> Source | None:
        receiver = passthrough.route_rtp(self.dtls, data)
        entry = self._lanes.get(receiver) if receiver is not None else None
        if receiver is None or entry is None:
            return None
        lane, generation = entry
        codec = passthrough.receiver_codecs(receiver).get(data[1] & 0x7F)
        if codec is None:
            return None  # the receiver has not started yet, or an unknown payload type
        rtx = passthrough.is_rtx_codec(codec)
        media_codec = codec
        if rtx:
            apt = codec.parameters.get("apt")
            repaired = (
                passthrough.receiver_codecs(receiver).get(apt) if isinstance(apt, int) else None
            )
            if repaired is None:
                return None
            media_codec = repaired
        source = Source(
            lane=lane,
            receiver=receiver,
            generation=generation,
            ssrc=ssrc,
            rtx=rtx,
            clock_rate=codec.clockRate,
            codec=media_codec,
        )
        self._sources[ssrc] = source
        return source

    def _take(self, srtp: bytes) -> bool:
        source = self._sources.get(int.from_bytes(srtp[8:12], "big"))
        if source is None or not source.lane.take(source, srtp):
            return False
        self.taken += 1
        return True

    async def _handle(self, data: bytes, arrival_ms: int, original: passthrough.RtpHandler) -> None:
        if len(data) < 12:
            return
        ssrc = int.from_bytes(data[8:12], "big")
        source = self._sources.get(ssrc)
        if source is None:
            source = self._resolve(data, ssrc)
            if source is None:
                self.unrouted += 1
                await original(data, arrival_ms)
                return
        await source.lane.receive(source, data, arrival_ms)


class Outbound:
    """The forwarding sender of one lane on the receiving participant's peer connection."""

    def __init__(self, lane: Upstream, sender: RTCRtpSender) -> None:
        self.lane = lane
        self.kind = lane.kind
        self._sender = sender
        self._dtls: RTCDtlsTransport | None = None
        self._clock_rate = 90000 if lane.kind == "video" else 48000
        self._ssrc, self._rtx_ssrc = passthrough.sender_ssrcs(sender)
        self._pt = 0
        self._rtx_pt: int | None = None
        self._rtx_seq = random.randint(0, 0xFFFF)
        self._first = 0x80
        self._ext_head = b""
        self._ext_tail = b""
        self._abs_send_time = False
        self._history: list[tuple[int, int, int, bytes] | None] = [None] * HISTORY
        self._generation = -1
        self._seq_base = random.randint(0, 0xFFFF)
        self._ts_base = random.randint(0, 0xFFFFFFFF)
        self._seq_offset = 0
        self._ts_offset = 0
        self._last_seq: int | None = None
        self._last_ts = 0
        self._last_wall = 0.0
        self._ready = False
        self._closed = False
        self._sending: set[asyncio.Task[None]] = set()
        self.packets = 0
        self.octets = 0
        self.skipped = 0
        self.retransmitted = 0
        self.nack_misses = 0
        passthrough.on_send_parameters(sender, self._configure)
        passthrough.on_retransmit(sender, self.retransmit)
        passthrough.on_sender_rtcp(sender, self._on_rtcp)

    def _configure(self, parameters: RTCRtpSendParameters) -> None:
        codec = parameters.codecs[0]
        assert codec.payloadType is not None  # negotiated codecs always have one
        self._pt = codec.payloadType
        for candidate in parameters.codecs:
            if (
                passthrough.is_rtx_codec(candidate)
                and candidate.parameters.get("apt") == codec.payloadType
            ):
                self._rtx_pt = candidate.payloadType
        ids = {ext.uri: ext.id for ext in parameters.headerExtensions}
        elements = b""
        abs_id = ids.get(_ABS_SEND_TIME)
        mid_id = ids.get(_MID)
        mid = (parameters.muxId or "").encode()
        if mid_id and 0 < len(mid) <= 16:
            elements = bytes([(mid_id << 4) | (len(mid) - 1)]) + mid
        size = len(elements) + (4 if abs_id else 0)
        if size:
            padding = b"\x00" * (-size % 4)
            words = (size + len(padding)) // 4
            self._first = 0x90
            self._ext_head = b"\xbe\xde" + words.to_bytes(2, "big")
            if abs_id:
                self._ext_head += bytes([(abs_id << 4) | 2])
                self._abs_send_time = True
            self._ext_tail = elements + padding
        self._dtls = self._sender.transport
        self._ready = True

    def close(self) -> None:
        self._closed = True

    def _rebase(self, generation: int, seq: int, timestamp: int, now: float) -> None:
        if self._last_seq is None:
            self._seq_offset = (self._seq_base - seq) & 0xFFFF
            self._ts_offset = (self._ts_base - timestamp) & 0xFFFFFFFF
        else:
            # a new source (the sender reconnected): continue the numbering, plus the time gap
            gap = max(1, int((now - self._last_wall) * self._clock_rate))
            self._seq_offset = (self._last_seq + 1 - seq) & 0xFFFF
            self._ts_offset = (self._last_ts + gap - timestamp) & 0xFFFFFFFF
        self._generation = generation

    def build(
        self, generation: int, seq: int, timestamp: int, marker: int, payload: bytes, now: float
    ) -> bytes | None:
        """The packet to send for a source packet (None: not yet, e.g. waiting for a keyframe)."""
        if not self._ready or self._closed:
            return None
        if generation != self._generation:
            if self.kind == "video" and not vp8_starts_keyframe(payload):
                # a decoder joining mid-stream can do nothing with delta frames
                self.skipped += 1
                self.lane.request_keyframe()
                return None
            self._rebase(generation, seq, timestamp, now)
        out_seq = (seq + self._seq_offset) & 0xFFFF
        out_ts = (timestamp + self._ts_offset) & 0xFFFFFFFF
        ntp = ntp_now()
        header = _HEADER.pack(self._first, (marker << 7) | self._pt, out_seq, out_ts, self._ssrc)
        if self._abs_send_time:
            packet = b"".join(
                (
                    header,
                    self._ext_head,
                    ((ntp >> 14) & 0xFFFFFF).to_bytes(3, "big"),
                    self._ext_tail,
                    payload,
                )
            )
        else:
            packet = b"".join((header, self._ext_head, self._ext_tail, payload))
        self._history[out_seq & _HISTORY_MASK] = (out_seq, out_ts, marker, payload)
        if self._last_seq is None or _newer16(out_seq, self._last_seq):
            self._last_seq = out_seq
            self._last_ts = out_ts
            self._last_wall = now
        self.packets += 1
        self.octets += len(payload)
        passthrough.note_sent(self._sender, ntp, out_ts, self.packets, self.octets)
        return packet

    @property
    def ready(self) -> bool:
        """Negotiated (send parameters known) and not closed."""
        return self._ready and not self._closed

    def can_send_now(self) -> bool:
        return not self._ready or self._dtls is None or passthrough.can_send_now(self._dtls)

    def send_now(self, packet: bytes) -> bool:
        return self._dtls is not None and passthrough.send_rtp_now(self._dtls, packet)

    def send_later(self, packet: bytes) -> None:
        task = asyncio.get_running_loop().create_task(self.send(packet))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def send(self, packet: bytes) -> None:
        if self._dtls is None or self._closed:
            return
        if passthrough.send_rtp_now(self._dtls, packet):
            return
        try:
            await passthrough.send_rtp(self._dtls, packet)
        except ConnectionError:
            pass

    async def retransmit(self, seq: int) -> None:
        """The receiving browser NACKed ``seq``: resend it, or ask the source for it."""
        if not self._ready or self._closed:
            return
        entry = self._history[seq & _HISTORY_MASK]
        if entry is None or entry[0] != seq:
            self.nack_misses += 1
            if self._last_seq is not None and self._generation == self.lane.generation:
                await self.lane.nack_upstream((seq - self._seq_offset) & 0xFFFF)
            return
        _, out_ts, marker, payload = entry
        abs_time = ((ntp_now() >> 14) & 0xFFFFFF).to_bytes(3, "big") if self._abs_send_time else b""
        if self._rtx_pt is not None:
            header = _HEADER.pack(
                self._first, (marker << 7) | self._rtx_pt, self._rtx_seq, out_ts, self._rtx_ssrc
            )
            self._rtx_seq = (self._rtx_seq + 1) & 0xFFFF
            payload = seq.to_bytes(2, "big") + payload
        else:
            header = _HEADER.pack(self._first, (marker << 7) | self._pt, seq, out_ts, self._ssrc)
        self.retransmitted += 1
        await self.send(b"".join((header, self._ext_head, abs_time, self._ext_tail, payload)))

    async def _on_rtcp(self, packet: AnyRtcpPacket) -> None:
        if isinstance(packet, RtcpPsfbPacket) and packet.fmt == RTCP_PSFB_APP:
            try:
                bitrate, ssrcs = unpack_remb_fci(packet.fci)
            except ValueError:
                return
            if self._ssrc in ssrcs:
                await self.lane.relay_remb(bitrate)

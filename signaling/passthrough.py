"""The one place that reaches into aiortc's internals, for encoded passthrough.

aiortc has no public API to receive encoded frames or to learn that a remote
receiver asked for a keyframe. The media hub needs both to forward media
without decoding and re-encoding it, so this module adapts exactly two things:

* **Receiving.** ``RTCRtpReceiver`` depayloads RTP, reassembles frames in its
  jitter buffer and puts ``(codec, JitterFrame)`` on a private
  ``queue.Queue`` that a decoder thread drains. :func:`tap_receiver` swaps that
  queue, before the receiver starts, for a sink that hands each reassembled
  frame to a callback on the event loop. aiortc's decoder thread then idles
  until the receiver stops; nothing is decoded.
* **Keyframe requests.** ``RTCRtpSender`` handles RTCP PLI/FIR by calling its
  ``_send_keyframe()``, which only matters to its encoder. :func:`on_keyframe_request`
  wraps that method on one sender instance so the hub can pass the request
  upstream to the browser that encodes the media.

Sending encoded frames needs no adaptation: a track whose ``recv()`` returns an
``av.Packet`` is packetised by the sender's codec without encoding (public
behaviour of ``RTCRtpSender``).

The aiortc version is pinned in ``pyproject.toml``; :func:`check_compatible`
verifies the private names at import time of the hub and
``tests/test_passthrough_compat.py`` fails loudly if an upgrade moves them.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass

import aiortc
from aiortc import RTCRtpReceiver, RTCRtpSender
from aiortc.rtcrtpparameters import RTCRtpCodecParameters

from .exceptions import MediaError

#: The aiortc release this module was written against.
SUPPORTED_AIORTC = "1.16.0"

_QUEUE_ATTR = "_RTCRtpReceiver__decoder_queue"
#: aiortc's audio jitter buffer holds ``prefetch=4`` packets (20 ms each) before it
#: releases the first: audio frames complete ~60 ms after they arrived. Arrival
#: times are corrected by this so audio and video stay in sync on a timeline.
RECEIVE_DELAY_S = {"audio": 0.06, "video": 0.0}
_THREAD_ATTR = "_RTCRtpReceiver__decoder_thread"


@dataclass(slots=True)
class EncodedFrame:
    """One reassembled encoded frame, exactly as the sender's encoder produced it.

    ``timestamp`` is in the codec's clock (90 kHz for video, 48 kHz for Opus),
    starting near 0 for the stream (aiortc maps the RTP timestamp).
    """

    data: bytes
    timestamp: int
    codec: RTCRtpCodecParameters
    keyframe: bool
    #: event-loop time (seconds) at which the frame arrived (corrected for aiortc's
    #: jitter-buffer hold, see RECEIVE_DELAY_S)
    arrival: float

    @property
    def clock_rate(self) -> int:
        return self.codec.clockRate

    @property
    def mime_type(self) -> str:
        return self.codec.mimeType


def is_keyframe(mime_type: str, data: bytes) -> bool:
    """Whether an encoded frame can be decoded on its own."""
    mime = mime_type.lower()
    if mime == "video/vp8":
        # VP8 frame tag (RFC 6386 §9.1): bit 0 of the first byte is 0 for key frames
        return len(data) > 0 and (data[0] & 0x01) == 0
    if mime.startswith("audio/"):
        return True
    return False


def check_compatible() -> None:
    """Raise :class:`MediaError` if aiortc's internals differ from what this module expects."""
    probe_receiver = RTCRtpReceiver.__init__.__code__.co_names
    problems = []
    if aiortc.__version__ != SUPPORTED_AIORTC:
        problems.append(f"aiortc {aiortc.__version__} is installed, {SUPPORTED_AIORTC} is supported")
    if "_RTCRtpReceiver__decoder_queue" not in probe_receiver:
        problems.append("RTCRtpReceiver no longer has __decoder_queue")
    if not callable(getattr(RTCRtpSender, "_send_keyframe", None)):
        problems.append("RTCRtpSender no longer has _send_keyframe()")
    from aiortc import rtcrtpreceiver

    if not callable(getattr(rtcrtpreceiver, "decoder_worker", None)):
        problems.append("aiortc.rtcrtpreceiver.decoder_worker is gone")
    if problems:
        raise MediaError("encoded passthrough cannot work: " + "; ".join(problems))


class _EncodedSink:
    """Stands in for the receiver's decoder queue.

    ``put()`` is called on the event loop by ``RTCRtpReceiver._handle_rtp_packet``
    with ``(codec, JitterFrame)``, and with ``None`` when the receiver stops.
    ``get()`` is called by aiortc's decoder thread: it blocks until the stop and
    then returns ``None``, which ends that thread (and the receiver's track).
    """

    def __init__(self, callback: Callable[[EncodedFrame], None], kind: str) -> None:
        self._callback = callback
        self._delay = RECEIVE_DELAY_S.get(kind, 0.0)
        self._stopped = threading.Event()
        self._loop = asyncio.get_running_loop()

    def put(self, item: object) -> None:
        if item is None:
            self._stopped.set()
            return
        codec, jitter_frame = item  # type: ignore[misc]
        data = jitter_frame.data
        self._callback(
            EncodedFrame(
                data=data,
                timestamp=jitter_frame.timestamp,
                codec=codec,
                keyframe=is_keyframe(codec.mimeType, data),
                arrival=self._loop.time() - self._delay,
            )
        )

    def get(self) -> None:
        self._stopped.wait()
        return None

    def put_nowait(self, item: object) -> None:  # queue.Queue compatibility
        self.put(item)


def tap_receiver(receiver: RTCRtpReceiver, callback: Callable[[EncodedFrame], None]) -> None:
    """Route a receiver's reassembled encoded frames to ``callback`` instead of its decoder.

    Must be called before the receiver starts (in the peer connection's
    ``track`` event, or right after ``setRemoteDescription``).
    """
    if getattr(receiver, _THREAD_ATTR, None) is not None:
        raise MediaError("receiver already started: tap it from the 'track' event")
    current = getattr(receiver, _QUEUE_ATTR, None)
    if not isinstance(current, queue.Queue | _EncodedSink):
        raise MediaError("aiortc receiver internals changed: no decoder queue to tap")
    kind = receiver.track.kind if receiver.track is not None else "video"
    setattr(receiver, _QUEUE_ATTR, _EncodedSink(callback, kind))


def is_tapped(receiver: RTCRtpReceiver) -> bool:
    return isinstance(getattr(receiver, _QUEUE_ATTR, None), _EncodedSink)


def on_keyframe_request(sender: RTCRtpSender, callback: Callable[[], None]) -> None:
    """Call ``callback`` whenever the remote peer of ``sender`` sends PLI or FIR."""
    original = sender._send_keyframe

    def _send_keyframe() -> None:
        original()
        callback()

    sender._send_keyframe = _send_keyframe  # type: ignore[method-assign]


async def request_keyframe(receiver: RTCRtpReceiver) -> bool:
    """Send a PLI to the remote sender of ``receiver``; False if no SSRC is known yet."""
    sources = receiver.getSynchronizationSources()
    if not sources:
        return False
    for source in sources:
        await receiver._send_rtcp_pli(source.source)
    return True

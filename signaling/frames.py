"""Encoded media frames, as the taps hand them to the recorder and identity checks.

Plain data: nothing here depends on how the frame was reassembled (from
forwarded RTP packets by :class:`~signaling.rtp_forward.FrameAssembler`, or by
aiortc's jitter buffer through :func:`~signaling.passthrough.tap_receiver`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from aiortc.rtcrtpparameters import RTCRtpCodecParameters


@dataclass(slots=True)
class EncodedFrame:
    """One reassembled encoded frame, exactly as the sender's encoder produced it.

    ``timestamp`` is in the codec's clock (90 kHz for video, 48 kHz for Opus),
    starting near 0 for the stream (the RTP timestamp, rebased and unwrapped).
    """

    data: bytes
    timestamp: int
    codec: RTCRtpCodecParameters
    keyframe: bool
    #: event-loop time (seconds) at which the frame arrived (less any time the receiving path
    #: held it back, such as aiortc's audio jitter buffer: ``passthrough.RECEIVE_DELAY_S``)
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

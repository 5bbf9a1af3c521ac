"""A track that sends another participant's encoded frames, untouched.

:class:`ForwardTrack` is what the media hub gives a peer connection's sender:
its ``recv()`` returns ``av.Packet`` objects, which aiortc's ``RTCRtpSender``
packetises with the negotiated codec without encoding (see
``signaling/passthrough.py``). The track reads from a
:class:`~signaling.track_tap.TrackTap`; when the source participant reconnects
the tap's generation changes and the track rebases timestamps so that the
receiving browser sees one continuous stream, and asks for a keyframe.
"""

from __future__ import annotations

import fractions

import av
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from .track_tap import TrackTap

#: frames a forwarding track may fall behind before it drops (about 300 ms): a live
#: call is better served by a short gap and a keyframe than by seconds of delay
FORWARD_BACKLOG = {"video": 10, "audio": 16}


class ForwardTrack(MediaStreamTrack):
    def __init__(self, tap: TrackTap) -> None:
        super().__init__()
        self.kind = tap.kind
        self._tap = tap
        self._sub = tap.subscribe_encoded(FORWARD_BACKLOG.get(tap.kind, 16))
        self._dropped_seen = 0
        self._generation = -1
        self._offset = 0
        self._last_out: int | None = None
        self._last_wall: float | None = None
        self._clock_rate = 90000 if tap.kind == "video" else 48000
        self._time_base = fractions.Fraction(1, self._clock_rate)
        self._need_keyframe = tap.kind == "video"
        self.frames_sent = 0
        self.frames_skipped = 0

    def request_keyframe(self) -> None:
        """The receiving browser asked for a keyframe (RTCP PLI/FIR): pass it upstream."""
        self._tap.request_keyframe()

    async def recv(self) -> av.Packet:
        if self.readyState != "live":
            raise MediaStreamError
        while True:
            frame = await self._sub.recv()
            if self._sub.dropped != self._dropped_seen:
                # we fell behind and lost frames: deltas after the gap would not decode
                self._dropped_seen = self._sub.dropped
                if self.kind == "video":
                    self._need_keyframe = True
            new_source = self._tap.generation != self._generation
            if new_source and self.kind == "video":
                self._need_keyframe = True
            if self._need_keyframe and not frame.keyframe:
                # a decoder joining mid-stream can do nothing with delta frames
                self.frames_skipped += 1
                self._tap.request_keyframe()
                continue
            self._need_keyframe = False
            break

        if new_source:
            # new source (first frame, or the sender reconnected): continue our
            # timeline from where it stood, plus the wall-clock gap
            self._generation = self._tap.generation
            if self._last_out is None:
                self._offset = -frame.timestamp
            else:
                elapsed = frame.arrival - (self._last_wall or frame.arrival)
                gap = max(1, int(elapsed * self._clock_rate))
                self._offset = self._last_out + gap - frame.timestamp
        pts = frame.timestamp + self._offset
        if self._last_out is not None and pts < self._last_out:
            pts = self._last_out  # never go backwards
        self._last_out = pts
        self._last_wall = frame.arrival

        packet = av.Packet(frame.data)
        packet.pts = pts
        packet.time_base = self._time_base
        self.frames_sent += 1
        return packet

    def stop(self) -> None:
        super().stop()
        self._sub.close()



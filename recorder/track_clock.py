"""Maps one track's RTP timestamps onto the recording timeline.

A frame's pts is ``(arrival of the stream's first frame - recording origin) +
(timestamp - first timestamp) / clock_rate``: within a stream, RTP timestamps
keep their spacing (a lost packet leaves a gap of the right length, a burst
after a network stall lands at capture time, not arrival time); across
streams, the wall clock of each stream's first frame aligns the parties and
their audio with their video. A new stream (a participant reconnects, or the
caller says so with :meth:`TrackClock.restart`) re-anchors at its first frame.
"""

from __future__ import annotations

#: A timestamp behind the previous one starts a new stream: frames of one stream come
#: out of the jitter buffer in order, and a reconnected sender starts again near 0 (even
#: when its previous stream lasted less than a second). So does a timestamp that jumps
#: this much further ahead than the wall clock moved (a sender with a new random base).
RESTART_FORWARDS_S = 30.0


class TrackClock:
    def __init__(self, clock_rate: int, origin: float) -> None:
        if clock_rate <= 0:
            raise ValueError("clock_rate must be positive")
        self.clock_rate = clock_rate
        self._origin = origin
        self._first_ts: int | None = None
        self._anchor_us = 0
        self._last_ts = 0
        self._last_arrival = 0.0

    def restart(self) -> None:
        """The next frame starts a new stream."""
        self._first_ts = None

    def pts_us(self, timestamp: int, arrival: float) -> tuple[int, bool]:
        """(pts in microseconds on the recording timeline, whether this frame starts a stream)."""
        new_stream = self._first_ts is None or self._jumped(timestamp, arrival)
        if new_stream:
            self._first_ts = timestamp
            self._anchor_us = round((arrival - self._origin) * 1_000_000)
        self._last_ts, self._last_arrival = timestamp, arrival
        assert self._first_ts is not None
        return self._anchor_us + (
            timestamp - self._first_ts
        ) * 1_000_000 // self.clock_rate, new_stream

    def _jumped(self, timestamp: int, arrival: float) -> bool:
        ahead = (timestamp - self._last_ts) / self.clock_rate
        return ahead < 0 or ahead - (arrival - self._last_arrival) > RESTART_FORWARDS_S

"""Remuxes one party's encoded VP8 and Opus packets into a WebM, without decoding.

Packets keep their recording-timeline pts (milliseconds, Matroska's time
base), so every party's file shares the recording origin and they play side by
side in sync. Each packet's duration is the gap to the next one of its track.
Video frames that cannot be decoded (before a stream's first keyframe, or after
lost frames up to the next keyframe) are skipped and counted in ``skipped``: a
browser stops playback at the first undecodable frame. The WebM is written
into a :class:`Spool`.
"""

from __future__ import annotations

import contextlib
import fractions
from dataclasses import dataclass, field
from pathlib import Path

import av

from .exceptions import RecorderError
from .segment_format import FLAG_AFTER_GAP, FLAG_KEYFRAME, FLAG_NEW_STREAM, Record, TrackInfo
from .spool import Spool

MS = fractions.Fraction(1, 1000)
CODECS = ("VP8", "opus")


@dataclass
class _Track:
    info: TrackInfo
    stream: av.stream.Stream
    pending: av.Packet | None = None
    first_pts: int | None = None
    last_pts: int = -1
    last_duration: int = 0
    waiting_for_keyframe: bool = True
    packets: int = 0


@dataclass
class MuxResult:
    party: str
    size: int
    start_ms: int
    end_ms: int
    packets: dict[str, int] = field(default_factory=dict)
    skipped: int = 0

    @property
    def duration_ms(self) -> int:
        return max(0, self.end_ms - self.start_ms)


class WebmWriter:
    def __init__(
        self,
        party: str,
        tracks: list[TrackInfo],
        *,
        title: str = "",
        scratch_dir: str | Path | None = None,
    ) -> None:
        self.party = party
        self.spool = Spool(scratch_dir)
        self._out = av.open(self.spool, "w", format="webm")
        if title:
            self._out.metadata["title"] = title
        self._tracks: dict[int, _Track] = {}
        self._closed = False
        self.skipped = 0
        for info in tracks:
            if info.codec not in CODECS:
                raise RecorderError(f"cannot record codec {info.codec!r} into WebM")
            if info.kind == "video":
                if not info.width:
                    continue  # no keyframe ever arrived: nothing decodable
                stream = self._out.add_mux_stream("vp8", width=info.width, height=info.height)
            else:
                # the libopus context (opened, never fed) supplies the OpusHead browsers need
                stream = self._out.add_stream("libopus", rate=48000)
                stream.layout = "stereo"
            stream.time_base = MS
            self._tracks[info.id] = _Track(info, stream)

    def add(self, record: Record) -> None:
        track = self._tracks.get(record.track)
        if track is None:
            self.skipped += 1
            return
        if record.flags & (FLAG_NEW_STREAM | FLAG_AFTER_GAP):
            track.waiting_for_keyframe = track.info.kind == "video"
        if track.waiting_for_keyframe:
            if not record.flags & FLAG_KEYFRAME:
                self.skipped += 1
                return
            track.waiting_for_keyframe = False
        # Matroska needs increasing timestamps per track; clamp the rare overlap after a restart
        pts = max(record.pts_us // 1000, track.last_pts + 1, 0)
        packet = av.Packet(record.payload)
        packet.pts = packet.dts = pts
        packet.time_base = MS
        packet.stream = track.stream
        packet.is_keyframe = bool(record.flags & FLAG_KEYFRAME)
        self._emit(track, pts)
        track.pending, track.last_pts = packet, pts
        if track.first_pts is None:
            track.first_pts = pts

    def _emit(self, track: _Track, next_pts: int | None) -> None:
        """Mux the track's pending packet, now that the next one (or the end) tells its duration."""
        packet = track.pending
        if packet is None or packet.pts is None:
            return
        if next_pts is not None:
            track.last_duration = next_pts - packet.pts
        elif not track.last_duration:
            track.last_duration = 20 if track.info.kind == "audio" else 33
        packet.duration = track.last_duration
        self._out.mux(packet)
        track.packets += 1
        track.pending = None

    def close(self) -> MuxResult:
        """Finish the file (the spool then holds the whole WebM)."""
        for track in self._tracks.values():
            self._emit(track, None)
        self._closed = True
        self._out.close()
        used = [t for t in self._tracks.values() if t.first_pts is not None]
        return MuxResult(
            self.party,
            self.spool.size,
            start_ms=min((t.first_pts or 0 for t in used), default=0),
            end_ms=max((t.last_pts + t.last_duration for t in used), default=0),
            packets={t.info.kind: t.packets for t in used},
            skipped=self.skipped,
        )

    def discard(self) -> None:
        """Release the muxer and the spool (after :meth:`close`, or instead of it); idempotent."""
        if not self._closed:
            self._closed = True
            with contextlib.suppress(Exception):  # a half-written file is thrown away anyway
                self._out.close()
        self.spool.close()

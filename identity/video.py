"""Read a video file into RGB frames with their presentation times (PyAV).

For the operator CLI, tests and benchmarks; the server feeds decoded frames
from the call instead. Frames are scaled (by the decoder's scaler, not after
the fact) so the longer side is at most ``max_side`` -- the size live frames
are analysed at -- and timestamps come from the stream (pts x time base,
counted from the first frame), so a 25 fps and a 30 fps clip are judged on
the same clock. Decoding stops as soon as the caller stops iterating.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np

from .exceptions import VideoError

#: live frames are analysed at this size (longer side, pixels)
LIVE_MAX_SIDE = 640


@dataclass(frozen=True)
class VideoFrame:
    """One decoded frame."""

    #: 0-based number of the frame in the file
    index: int
    #: seconds since the first frame
    t: float
    rgb: np.ndarray


def read_frames(
    path: str | Path,
    *,
    max_side: int = LIVE_MAX_SIDE,
    indices: set[int] | None = None,
    stop_after_s: float | None = None,
) -> Iterator[VideoFrame]:
    """Frames of ``path``'s first video stream, downscaled to ``max_side``.

    ``indices`` keeps only those frame numbers (the others are decoded but not
    converted, and decoding stops after the last one); ``stop_after_s`` stops
    after that many seconds of video.
    """
    try:
        container = av.open(str(path))
    except (av.FFmpegError, OSError) as exc:
        raise VideoError(f"cannot open video {Path(path).name}: {exc}") from exc
    with container:
        if not container.streams.video:
            raise VideoError(f"{Path(path).name} has no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        last = max(indices) if indices else None
        first_time: float | None = None
        index = -1
        try:
            for frame in container.decode(stream):
                index += 1
                if last is not None and index > last:
                    return
                t_abs = (
                    frame.time
                    if frame.time is not None
                    else index / float(stream.average_rate or 30)
                )
                if first_time is None:
                    first_time = t_abs
                t = t_abs - first_time
                if stop_after_s is not None and t > stop_after_s:
                    return
                if indices is not None and index not in indices:
                    continue
                yield VideoFrame(index, round(t, 4), _to_rgb(frame, max_side))
        except av.FFmpegError as exc:
            raise VideoError(f"cannot decode {Path(path).name}: {exc}") from exc


def frame_count(path: str | Path) -> int:
    """Frames in the first video stream, as the container declares (0 if unknown)."""
    try:
        with av.open(str(path)) as container:
            return int(container.streams.video[0].frames or 0)
    except (av.FFmpegError, OSError, IndexError) as exc:
        raise VideoError(f"cannot open video {Path(path).name}: {exc}") from exc


def _to_rgb(frame: av.VideoFrame, max_side: int) -> np.ndarray:
    w, h = frame.width, frame.height
    scale = min(1.0, max_side / max(w, h))
    if scale < 1.0:
        # even sizes keep the scaler on its fast path
        w, h = max(2, round(w * scale / 2) * 2), max(2, round(h * scale / 2) * 2)
        frame = frame.reformat(width=w, height=h, format="rgb24", interpolation="AREA")
        return np.ascontiguousarray(frame.to_ndarray())
    return np.ascontiguousarray(frame.to_ndarray(format="rgb24"))

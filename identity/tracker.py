"""Follow one face through consecutive frames cheaply.

Two trackers, for two cadences:

* :func:`same_face` -- presence checks a frame or two a second with a fast
  detector (:mod:`identity.blazeface`); a face in the same place at about
  the same size as in the previous check, soon after it, is taken to be the
  same face, so it need not be embedded again. Anything else (a jump, a
  check after a gap, no face or several faces in between) breaks the track.
* :class:`FaceTracker` -- liveness judges every frame with dlib's HOG.

Judging a blink needs every frame (a blink lasts 100-300 ms), and a full HOG
search of a 640 px frame costs 35-45 ms. Between full searches (twice a
second: they also catch a second person stepping in), :class:`FaceTracker`
searches only a window around the last face, scaled so the face is about
110 px (HOG's smallest is 80 px): 4-8 ms a frame. When the window loses the
face, it falls back to a full search at once.
"""

from __future__ import annotations

import cv2
import numpy as np

from .face_detect import FaceBox, detect_faces

#: boxes of two checks overlapping less than this (intersection over union) are two faces
TRACK_MIN_IOU = 0.3
#: checks farther apart than this (seconds) do not continue a track
TRACK_MAX_GAP_S = 2.5


def same_face(
    last: FaceBox | None,
    box: FaceBox,
    gap_s: float,
    *,
    min_iou: float = TRACK_MIN_IOU,
    max_gap_s: float = TRACK_MAX_GAP_S,
) -> bool:
    """Whether ``box`` continues the track of ``last``, the only face of a check ``gap_s`` earlier."""
    return last is not None and 0 <= gap_s <= max_gap_s and box.iou(last) >= min_iou


class FaceTracker:
    """Face boxes for a sequence of frames of one camera (all of the same size)."""

    def __init__(
        self, full_scan_every_s: float = 0.5, window: float = 2.0, face_px: int = 110
    ) -> None:
        #: seconds between full-frame searches
        self.full_scan_every_s = full_scan_every_s
        #: search window side, in face widths
        self.window = window
        #: face width the window is scaled to
        self.face_px = face_px
        self._last: FaceBox | None = None
        self._last_full: float | None = None
        self.full_scans = 0
        self.window_scans = 0

    def locate(self, rgb: np.ndarray, t: float) -> list[FaceBox]:
        """Faces in ``rgb`` at time ``t``, largest (or tracked) first."""
        due = (
            self._last_full is None
            or t - self._last_full >= self.full_scan_every_s
            or t < self._last_full
        )
        if self._last is not None and not due:
            self.window_scans += 1
            found = search_window(rgb, self._last, self.window, self.face_px)
            if found:
                self._last = found[0]
                return found
        self._last_full = t
        self.full_scans += 1
        boxes = detect_faces(rgb, 0)
        self._last = boxes[0] if boxes else None
        return boxes


def search_window(
    rgb: np.ndarray, last: FaceBox, window: float = 2.0, face_px: int = 110
) -> list[FaceBox]:
    """Faces in a window of ``window`` face widths around ``last``, scaled so the face is ~``face_px``."""
    h, w = rgb.shape[:2]
    cx, cy = last.center
    half = max(last.width, last.height) * window / 2
    left, top = max(0, int(cx - half)), max(0, int(cy - half))
    right, bottom = min(w, int(cx + half)), min(h, int(cy + half))
    crop = rgb[top:bottom, left:right]
    if crop.size == 0:
        return []
    scale = min(1.0, face_px / max(1, last.width))
    if scale < 1.0:
        size = (max(1, round(crop.shape[1] * scale)), max(1, round(crop.shape[0] * scale)))
        crop = cv2.resize(crop, size, interpolation=cv2.INTER_AREA)
    boxes = detect_faces(crop, 0)
    return [b.scaled(1 / scale).shifted(left, top).clipped(h, w) for b in boxes]

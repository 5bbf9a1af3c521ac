"""Fast face detection for presence checks: MediaPipe's BlazeFace.

BlazeFace is a small single-shot detector; its short-range model
(``face_detection_short_range.tflite``, 230 kB, for faces within about 2 m of
the camera) ships inside the ``mediapipe`` 0.10.14 wheel, so nothing is
downloaded at run time. It looks at the frame scaled to 128x128, so a frame's
size hardly changes its cost: ~2 ms a 640x480 frame on one core here, against
~27 ms for dlib's HOG, and it finds faces turned further from the camera than
HOG does (``bench/identity_detectors.py``). The full-range model
(``face_detection_full_range_sparse.tflite``, faces up to ~5 m) is there too,
for a second person farther back.

Its boxes are not dlib's: dlib's landmark and embedding models expect the box
HOG gives, so presence embeds a face only after HOG has found it in a window
around the BlazeFace box (:func:`identity.tracker.search_window`).

One detector per process (the face workers are single-threaded); the graph is
built on first use.
"""

from __future__ import annotations

import threading
import warnings
from typing import Any

import numpy as np

from .face_detect import FaceBox

#: BlazeFace scores below this are not faces
DEFAULT_MIN_SCORE = 0.5

_lock = threading.Lock()
_detectors: dict[tuple[bool, float], Any] = {}


def _detector(full_range: bool, min_score: float) -> Any:
    key = (full_range, min_score)
    with _lock:
        found = _detectors.get(key)
        if found is None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # protobuf and matplotlib notices at import
                from mediapipe.python.solutions import face_detection

                found = face_detection.FaceDetection(
                    model_selection=1 if full_range else 0, min_detection_confidence=min_score
                )
            _detectors[key] = found
        return found


def detect_blazeface(
    rgb: np.ndarray, *, full_range: bool = False, min_score: float = DEFAULT_MIN_SCORE
) -> list[FaceBox]:
    """All faces in ``rgb`` (uint8 RGB), largest first, clipped to the image.

    ``FaceBox.score`` is BlazeFace's score (0-1).
    """
    h, w = rgb.shape[:2]
    detector = _detector(full_range, min_score)
    with _lock, warnings.catch_warnings():
        # protobuf 4's deprecation notice, raised by MediaPipe's own output conversion
        warnings.filterwarnings(
            "ignore", message="SymbolDatabase.GetPrototype", category=UserWarning
        )
        result = detector.process(np.ascontiguousarray(rgb, dtype=np.uint8))
    boxes = []
    for d in result.detections or ():
        rel = d.location_data.relative_bounding_box
        left, top = round(rel.xmin * w), round(rel.ymin * h)
        box = FaceBox(
            top, left + round(rel.width * w), top + round(rel.height * h), left, float(d.score[0])
        ).clipped(h, w)
        if box.width > 0 and box.height > 0:
            boxes.append(box)
    return sorted(boxes, key=lambda b: b.area, reverse=True)


def warm() -> None:
    """Build the short-range graph now (the face workers' initializer calls this)."""
    detect_blazeface(np.zeros((120, 160, 3), np.uint8))

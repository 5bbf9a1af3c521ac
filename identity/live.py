"""Work on frames of a live call, one at a time, in the worker pool.

The server feeds the customer's decoded video to a liveness judge frame by
frame (so the customer sees progress) rather than buffering the whole
challenge. Each frame is a separate worker task, so the face tracker's state
travels with the request: the caller passes the last face seen and whether a
full-frame search is due, and :func:`analyze_tracked` searches only a window
around that face otherwise (4-8 ms instead of 35-45 ms, see
:mod:`identity.tracker`).

:func:`reference_from_live_frame` is the agent's "capture the ID card" button:
the customer holds the card up to the camera, so the frame shows two faces,
the customer's and the smaller one printed on the card.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .analysis import FrameAnalysis, analyze_frame
from .exceptions import NoFace, PoorQuality
from .face_detect import FaceBox, detect_faces
from .face_match import MIN_REFERENCE_FACE_PX, REFERENCE_JITTERS, Reference, embed_face
from .images import downscale
from .tracker import search_window
from .video import LIVE_MAX_SIDE


def analyze_tracked(
    rgb: np.ndarray,
    t: float,
    index: int,
    *,
    last: FaceBox | None,
    full_scan: bool,
    **kwargs: Any,
) -> FrameAnalysis:
    """:func:`~identity.analysis.analyze_frame` with a cheap window search around ``last``.

    A full-frame search runs when ``full_scan`` is set, when there is no
    ``last`` face, or when the window lost it. ``kwargs`` are a liveness
    judge's ``request().kwargs()`` (or ``embed=...``).
    """
    frame, _ = downscale(np.ascontiguousarray(rgb, dtype=np.uint8), LIVE_MAX_SIDE)
    boxes = None
    if last is not None and not full_scan:
        boxes = search_window(frame, last) or None
    return analyze_frame(frame, t, index, boxes=boxes, **kwargs)


def reference_from_live_frame(
    rgb: np.ndarray, *, num_jitters: int = REFERENCE_JITTERS
) -> Reference:
    """The face on an ID card held up to the camera: the smallest usable face in the frame.

    With one face only, that face is taken (the card fills the picture). The
    frame is kept as evidence by the caller, so an inspector can see what was
    captured. Raises :class:`NoFace` or :class:`PoorQuality` ``face_too_small``.
    """
    frame = np.ascontiguousarray(rgb, dtype=np.uint8)
    boxes = detect_faces(frame, 1)
    if not boxes:
        raise NoFace("no face in the picture: hold the ID card up to the camera")
    usable = [b for b in boxes if b.width >= MIN_REFERENCE_FACE_PX]
    if not usable:
        raise PoorQuality(
            "face_too_small",
            f"the card's face is {min(b.width for b in boxes)} px wide; hold the card closer "
            f"(at least {MIN_REFERENCE_FACE_PX} px is needed)",
        )
    card = min(usable, key=lambda b: b.area)
    embedding = embed_face(frame, card, num_jitters)
    return Reference(
        embedding=embedding, box=card, strategy="live_capture", secondary_faces=len(boxes) - 1
    )

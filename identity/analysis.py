"""Everything measured on one live frame: faces, quality, landmarks, embedding.

:func:`analyze_frame` is the unit of work the face worker pool runs: it takes
a frame (RGB, scaled to 640 px on the longer side if larger) and returns a
:class:`FrameAnalysis`, a small picklable record that the verification,
liveness and presence logic read. Costs on one core of the development
machine: detection ~35-45 ms, 68 landmarks ~2.5 ms, the embedding ~105 ms
(dlib's ResNet without BLAS), so only ask for the embedding when needed.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from .face_detect import Detector, FaceBox, detect_live
from .face_match import embed_face
from .images import downscale
from .landmarks import eye_aspect_ratio, landmarks68, nose_drop, yaw_ratio
from .planarity import face_patch, planar_fit
from .quality import DEFAULT_THRESHOLDS, QualityReport, QualityThresholds, assess
from .video import LIVE_MAX_SIDE

#: |yaw ratio| at most this counts as looking at the camera
FRONTAL_MAX_YAW = 0.15

Embed = bool | Literal["frontal"]


@dataclass(frozen=True)
class PoseBaseline:
    """The frontal face a head turn is compared with (see :mod:`identity.planarity`)."""

    patch: np.ndarray = field(repr=False)
    yaw: float
    index: int


@dataclass(frozen=True)
class FrameAnalysis:
    """What one frame shows. Coordinates are in the analysed (downscaled) frame."""

    t: float
    index: int
    #: (width, height) of the analysed frame
    size: tuple[int, int]
    faces: tuple[FaceBox, ...]
    quality: QualityReport
    #: hash of the frame's pixels: equal digests mean a frozen picture
    digest: bytes = field(repr=False)
    landmarks: np.ndarray | None = field(default=None, repr=False)
    ear: float | None = None
    yaw: float | None = None
    nose_drop: float | None = None
    embedding: np.ndarray | None = field(default=None, repr=False)
    patch: np.ndarray | None = field(default=None, repr=False)
    #: fraction of the face's motion since the baseline that one homography explains
    planar_inliers: float | None = None

    @property
    def face_count(self) -> int:
        return len(self.faces)

    @property
    def frontal(self) -> bool:
        return self.yaw is not None and abs(self.yaw) <= FRONTAL_MAX_YAW

    def as_dict(self) -> dict[str, Any]:
        """For the agent panel and logs: no landmarks, no embedding."""
        return {
            "t": self.t,
            "index": self.index,
            "faces": [b.as_dict() for b in self.faces],
            "quality": self.quality.as_dict(),
            "ear": None if self.ear is None else round(self.ear, 3),
            "yaw": None if self.yaw is None else round(self.yaw, 3),
        }


def frame_digest(rgb: np.ndarray) -> bytes:
    return hashlib.blake2b(np.ascontiguousarray(rgb).data, digest_size=16).digest()


def analyze_frame(
    rgb: np.ndarray,
    t: float = 0.0,
    index: int = 0,
    *,
    embed: Embed = False,
    landmarks: bool = True,
    boxes: list[FaceBox] | None = None,
    baseline: PoseBaseline | None = None,
    planar_min_yaw_change: float = 0.15,
    keep_patch: bool = False,
    find_small: bool = False,
    detector: Detector = "hog",
    thresholds: QualityThresholds = DEFAULT_THRESHOLDS,
) -> FrameAnalysis:
    """Analyse one RGB frame.

    ``embed``: True embeds the largest face when it is the only one;
    ``"frontal"`` only if it also looks at the camera. ``boxes``: faces
    already found (by :class:`identity.tracker.FaceTracker`), skipping
    detection; they must be in the coordinates of the frame scaled to 640 px.
    ``baseline``: a frontal face to measure a head turn against (the planarity
    check runs when the yaw moved by ``planar_min_yaw_change`` or more).
    """
    frame, _ = downscale(np.ascontiguousarray(rgb, dtype=np.uint8), LIVE_MAX_SIDE)
    digest = frame_digest(frame)
    if boxes is None:
        boxes = detect_live(frame, find_small=find_small, detector=detector)
    faces = tuple(boxes)
    quality = assess(frame, faces, thresholds)
    h, w = frame.shape[:2]
    result: dict[str, Any] = {}
    if faces and landmarks:
        face = faces[0]
        points = landmarks68(frame, face)
        yaw = yaw_ratio(points)
        result.update(
            landmarks=points, ear=eye_aspect_ratio(points), yaw=yaw, nose_drop=nose_drop(points)
        )
        single = len(faces) == 1
        if keep_patch or (
            baseline is not None and single and abs(yaw - baseline.yaw) >= planar_min_yaw_change
        ):
            patch = face_patch(frame, face)
            if keep_patch:
                result["patch"] = patch
            if baseline is not None and single and abs(yaw - baseline.yaw) >= planar_min_yaw_change:
                result["planar_inliers"] = planar_fit(baseline.patch, patch)
        if embed and single and (embed is True or abs(yaw) <= FRONTAL_MAX_YAW):
            result["embedding"] = embed_face(frame, face)
    elif faces and embed is True and len(faces) == 1:
        result["embedding"] = embed_face(frame, faces[0])
    return FrameAnalysis(
        t=t, index=index, size=(w, h), faces=faces, quality=quality, digest=digest, **result
    )

"""The 68 facial landmarks and what liveness reads from them.

Points follow the iBUG 300-W numbering (0-based): 0-16 the jaw line from the
image's left to its right, 27-30 the nose bridge down to the tip (30), 36-41
the eye on the image's left, 42-47 the eye on the image's right.

Yaw sign: frames are the camera's, not mirrored. When customers turn their
head to *their own left*, the nose moves towards the image's right (their
left side faces the camera's right) -- and on the mirrored self-view the
browser shows them, their face turns towards the left of the screen, the way
they turned. :func:`yaw_ratio` is positive for that turn. So ``turn_left``
means "to the customer's left", exactly as the customer reads the instruction
looking at the mirrored preview.
"""

from __future__ import annotations

import math

import numpy as np

from . import models
from .face_detect import FaceBox

#: nose protrusion over the half-width of the face at the jaw points, for :func:`yaw_degrees`
NOSE_DEPTH = 0.65


def landmarks68(rgb: np.ndarray, box: FaceBox) -> np.ndarray:
    """The 68 points (x, y) of the face in ``box``, float32 array of shape (68, 2)."""
    shape = models.get().landmarks68(np.ascontiguousarray(rgb, dtype=np.uint8), box.rect())
    return np.array([(p.x, p.y) for p in shape.parts()], dtype=np.float32)


def eye_aspect_ratio(points: np.ndarray) -> float:
    """Mean eye aspect ratio of both eyes (Soukupova and Cech 2016): about 0.3 open, under 0.2 closed."""

    def one(eye: np.ndarray) -> float:
        vertical = np.linalg.norm(eye[1] - eye[5]) + np.linalg.norm(eye[2] - eye[4])
        horizontal = 2.0 * np.linalg.norm(eye[0] - eye[3])
        return float(vertical / horizontal) if horizontal > 0 else 0.0

    return (one(points[36:42]) + one(points[42:48])) / 2


def interocular(points: np.ndarray) -> float:
    """Distance between the eye centres, pixels."""
    return float(np.linalg.norm(points[42:48].mean(axis=0) - points[36:42].mean(axis=0)))


def yaw_ratio(points: np.ndarray) -> float:
    """Where the nose tip sits between the two sides of the face, -1..1, along the eye line.

    0 looking at the camera; positive when the customer turns to their own
    left (see the module's docstring). Unchanged by moving, scaling or rolling
    a picture in the image plane: only the face's own 3D turn (or a strongly
    tilted flat picture, which :mod:`identity.planarity` catches) changes it.
    """
    left_eye, right_eye = points[36:42].mean(axis=0), points[42:48].mean(axis=0)
    axis = right_eye - left_eye
    norm = float(np.linalg.norm(axis))
    if norm == 0:
        return 0.0
    axis = axis / norm
    nose = points[30]
    left_side, right_side = points[0:4].mean(axis=0), points[13:17].mean(axis=0)
    to_left = float(np.dot(nose - left_side, axis))
    to_right = float(np.dot(right_side - nose, axis))
    total = to_left + to_right
    if total <= 0:
        return 0.0
    return max(-1.0, min(1.0, (to_left - to_right) / total))


def yaw_degrees(ratio: float) -> float:
    """Approximate head yaw in degrees for a :func:`yaw_ratio` (a rigid-head model)."""
    return math.degrees(math.atan(ratio / NOSE_DEPTH))


def nose_drop(points: np.ndarray) -> float:
    """Distance from the eye line to the nose tip over the interocular distance.

    Blinking leaves it alone; a flat picture tilted away from the camera
    (top or bottom first) shrinks it together with the eyes' height.
    """
    # eye corners, not eye centres: closing lids pull the centres down
    left_eye, right_eye = (points[36] + points[39]) / 2, (points[42] + points[45]) / 2
    iod = float(np.linalg.norm(right_eye - left_eye))
    if iod == 0:
        return 0.0
    mid = (left_eye + right_eye) / 2
    return float(np.linalg.norm(points[30] - mid) / iod)

"""Quality gates for a live frame, each with a reason the customer understands.

Codes are stable (the browser and the agent panel key on them); the texts are
in :mod:`identity.messages` (Chinese and English). Gates, in the order they
are reported:

``no_face``, ``multiple_faces``
    from the detector (HOG sees frontal faces of about 80 px and more).
``face_too_small``
    face box narrower than ``min_face_px`` on the frame scaled to 640 px: the
    embedding of a small face is unreliable (and HOG misses faces below ~80 px
    altogether, so this gate mostly fires between 80 and ``min_face_px``).
``too_dark``, ``too_bright``
    mean luma (BT.601) of the face box below ``dark_luma`` / above
    ``bright_luma``, or more than ``max_clipped`` of its pixels saturated.
``blurred``
    variance of the Laplacian of the face box scaled to 128x128 gray, below
    ``min_sharpness``. Calibrated on the shared clips: the softest real clip
    (d12.mp4) measures 26 at worst, a sharp photo blurred with a Gaussian of
    sigma 3 px falls to 5-15 (and its embedding moves by 0.36).
``face_not_centered``
    optional: the face centre is further than ``max_center_offset`` of the
    frame's size from the centre.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from .face_detect import FaceBox
from .messages import text


@dataclass(frozen=True)
class QualityThresholds:
    """Limits of the gates (see the module's docstring)."""

    #: smallest face box width, pixels, on a frame whose longer side is 640
    min_face_px: int = 90
    #: mean face luma (0-255) below this: too dark
    dark_luma: float = 50.0
    #: mean face luma above this: too bright
    bright_luma: float = 215.0
    #: fraction of face pixels at 250 or more above this: too bright (burnt out)
    max_clipped: float = 0.35
    #: variance of the Laplacian on the 128x128 face below this: blurred
    min_sharpness: float = 15.0
    #: report ``face_not_centered`` at all
    check_centered: bool = False
    #: largest distance of the face centre from the frame centre, as a fraction of the frame
    max_center_offset: float = 0.25


DEFAULT_THRESHOLDS = QualityThresholds()


@dataclass(frozen=True)
class QualityIssue:
    """One failed gate: ``value`` measured against ``limit``."""

    code: str
    value: float
    limit: float

    @property
    def message(self) -> str:
        return text(self.code).en

    @property
    def message_zh(self) -> str:
        return text(self.code).zh

    def as_dict(self) -> dict[str, Any]:
        return {
            "code": self.code,
            "value": round(self.value, 2),
            "limit": self.limit,
            "message": self.message,
            "message_zh": self.message_zh,
        }


@dataclass(frozen=True)
class QualityReport:
    """All failed gates of one frame (empty when it is usable) and what was measured."""

    issues: tuple[QualityIssue, ...]
    faces: int
    face_px: int | None = None
    luma: float | None = None
    sharpness: float | None = None

    @property
    def ok(self) -> bool:
        return not self.issues

    @property
    def reason(self) -> str | None:
        """The first issue's code: what to tell the customer first."""
        return self.issues[0].code if self.issues else None

    @property
    def codes(self) -> tuple[str, ...]:
        return tuple(i.code for i in self.issues)

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "reason": self.reason,
            "issues": [i.as_dict() for i in self.issues],
            "faces": self.faces,
            "face_px": self.face_px,
            "luma": None if self.luma is None else round(self.luma, 1),
            "sharpness": None if self.sharpness is None else round(self.sharpness, 1),
        }


def assess(
    rgb: np.ndarray,
    faces: list[FaceBox] | tuple[FaceBox, ...],
    t: QualityThresholds = DEFAULT_THRESHOLDS,
) -> QualityReport:
    """Check ``rgb`` (longer side at most 640) with ``faces`` found in it, largest first."""
    h, w = rgb.shape[:2]
    gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    if not faces:
        luma = float(gray.mean())
        issues = [QualityIssue("no_face", 0, 1)]
        if luma < t.dark_luma:  # the likely reason nothing was found: what the customer can fix
            issues.insert(0, QualityIssue("too_dark", luma, t.dark_luma))
        return QualityReport(tuple(issues), 0, luma=luma)
    issues = []
    if len(faces) > 1:
        issues.append(QualityIssue("multiple_faces", len(faces), 1))
    face = faces[0]
    # sizes are judged on the 640 px scale whatever the frame's size
    scale = 640 / max(h, w)
    face_px = round(face.width * scale)
    if face_px < t.min_face_px:
        issues.append(QualityIssue("face_too_small", face_px, t.min_face_px))
    crop = gray[face.top : face.bottom, face.left : face.right]
    luma = float(crop.mean())
    clipped = float((crop >= 250).mean())
    if luma < t.dark_luma:
        issues.append(QualityIssue("too_dark", luma, t.dark_luma))
    elif luma > t.bright_luma:
        issues.append(QualityIssue("too_bright", luma, t.bright_luma))
    elif clipped > t.max_clipped:
        issues.append(QualityIssue("too_bright", clipped, t.max_clipped))
    sharpness = sharpness_of(crop)
    if sharpness < t.min_sharpness:
        issues.append(QualityIssue("blurred", sharpness, t.min_sharpness))
    if t.check_centered:
        cx, cy = face.center
        offset = max(abs(cx / w - 0.5), abs(cy / h - 0.5))
        if offset > t.max_center_offset:
            issues.append(QualityIssue("face_not_centered", offset, t.max_center_offset))
    return QualityReport(tuple(issues), len(faces), face_px, luma, sharpness)


def sharpness_of(gray_face: np.ndarray) -> float:
    """Variance of the Laplacian of a gray face crop scaled to 128x128 (scale-independent)."""
    if gray_face.size == 0:
        return 0.0
    patch = cv2.resize(gray_face, (128, 128), interpolation=cv2.INTER_AREA)
    return float(cv2.Laplacian(patch, cv2.CV_64F).var())

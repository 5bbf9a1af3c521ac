"""Find faces: dlib's HOG detector, with an adaptive strategy for document photos.

Live frames (at most 640 px wide) use HOG without upsampling (30-45 ms on one
core); it finds frontal faces (+-30 degrees) of about 80 px and larger, which
covers a customer in front of a webcam or phone.

Document photos (ID cards, passports, a phone photo of either) hold a small
face in a large, busy image, so :func:`find_document_face` escalates until it
finds one: HOG on the image scaled to at most 1280 px, then upsampled once
and twice (when the image is small enough for that to be affordable), then --
when the upload has more detail than that -- 2x2 overlapping tiles of the
upload at up to 2560 px, each upsampled once; then the image turned by 90,
270 and 180 degrees (a phone photo without EXIF orientation).

ICAO documents carry a second, smaller "ghost" portrait of the holder. The
largest face is the holder's photo; a face at least 60 % as wide is another
person (:class:`~identity.exceptions.MultipleFaces`); smaller faces are
returned as ``secondary`` and :func:`identity.face_match.reference_from_image`
accepts them only if they show the same person (a ghost image), so a second,
smaller person in a photo is still refused.

The CNN detector (``detector="cnn"``) finds faces in any pose, but costs about
3 s per 640x360 frame on one core here: it is for offline checks only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import dlib
import numpy as np

from . import models
from .exceptions import MultipleFaces, NoFace
from .images import downscale

Detector = Literal["hog", "cnn"]

#: documents are searched at this size first (pixels, longer side)
DOCUMENT_WORK_SIDE = 1280
#: and embedded at up to this size (so a small face keeps its detail)
DOCUMENT_EMBED_SIDE = 2560
#: a second face at least this fraction of the largest face's width is another person
SECONDARY_FACE_RATIO = 0.6


@dataclass(frozen=True)
class FaceBox:
    """A face's bounding box in pixels of the image it was found in (right/bottom exclusive)."""

    top: int
    right: int
    bottom: int
    left: int
    #: detector confidence (HOG: margin, higher is surer; CNN: its confidence)
    score: float = 0.0

    @property
    def width(self) -> int:
        return self.right - self.left

    @property
    def height(self) -> int:
        return self.bottom - self.top

    @property
    def area(self) -> int:
        return self.width * self.height

    @property
    def center(self) -> tuple[float, float]:
        return ((self.left + self.right) / 2, (self.top + self.bottom) / 2)

    def scaled(self, factor: float) -> FaceBox:
        return FaceBox(
            round(self.top * factor),
            round(self.right * factor),
            round(self.bottom * factor),
            round(self.left * factor),
            self.score,
        )

    def shifted(self, dx: int, dy: int) -> FaceBox:
        return FaceBox(self.top + dy, self.right + dx, self.bottom + dy, self.left + dx, self.score)

    def clipped(self, height: int, width: int) -> FaceBox:
        return FaceBox(
            max(0, self.top),
            min(width, self.right),
            min(height, self.bottom),
            max(0, self.left),
            self.score,
        )

    def iou(self, other: FaceBox) -> float:
        w = min(self.right, other.right) - max(self.left, other.left)
        h = min(self.bottom, other.bottom) - max(self.top, other.top)
        if w <= 0 or h <= 0:
            return 0.0
        inter = w * h
        return inter / (self.area + other.area - inter)

    def rect(self) -> dlib.rectangle:
        return dlib.rectangle(self.left, self.top, self.right, self.bottom)

    def as_dict(self) -> dict[str, int]:
        return {"top": self.top, "right": self.right, "bottom": self.bottom, "left": self.left}

    @classmethod
    def from_rect(cls, rect: dlib.rectangle, score: float = 0.0) -> FaceBox:
        return cls(rect.top(), rect.right(), rect.bottom(), rect.left(), float(score))


def detect_faces(rgb: np.ndarray, upsample: int = 0, detector: Detector = "hog") -> list[FaceBox]:
    """All faces in ``rgb`` (uint8 RGB), largest first, clipped to the image."""
    h, w = rgb.shape[:2]
    m = models.get()
    rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
    if detector == "cnn":
        found = [FaceBox.from_rect(d.rect, d.confidence) for d in m.cnn(rgb, upsample)]
    else:
        rects, scores, _ = m.hog.run(rgb, upsample, 0.0)
        found = [FaceBox.from_rect(r, s) for r, s in zip(rects, scores, strict=True)]
    boxes = [b.clipped(h, w) for b in found]
    boxes = [b for b in boxes if b.width > 0 and b.height > 0]
    return sorted(boxes, key=lambda b: b.area, reverse=True)


def detect_live(
    rgb: np.ndarray, *, find_small: bool = False, detector: Detector = "hog"
) -> list[FaceBox]:
    """Faces in a live frame (expected at most 640 px wide: see :mod:`identity.analysis`).

    With ``find_small`` a frame with no face is searched again upsampled once
    (four times the cost), to tell "too small" from "no face".
    """
    boxes = detect_faces(rgb, 0, detector)
    if not boxes and find_small and detector == "hog":
        boxes = detect_faces(rgb, 1)
    return boxes


@dataclass(frozen=True)
class DocumentFace:
    """The holder's face in a document (or any reference) image."""

    #: the upright image to embed from (the upload, at most ``DOCUMENT_EMBED_SIDE``)
    image: np.ndarray
    #: the holder's face in ``image``
    box: FaceBox
    #: smaller faces in ``image`` (an ICAO ghost portrait, or someone in the background)
    secondary: tuple[FaceBox, ...]
    #: how the face was found, e.g. "hog", "hog+upsample1", "tiles", "rotated90"
    strategy: str
    #: clockwise rotation applied to the upload to make the face upright (0, 90, 180, 270)
    rotation: int = 0


def find_document_face(rgb: np.ndarray, min_face_px: int = 40) -> DocumentFace:
    """The holder's face in ``rgb``; raises :class:`NoFace` or :class:`MultipleFaces`.

    Faces narrower than ``min_face_px`` (in the image embedded from) are
    ignored: too small to embed reliably, and the thorough searches' false
    detections are that small.
    """
    for rotation in (0, 90, 270, 180):
        upright = _rotate(rgb, rotation)
        work, scale = downscale(upright, DOCUMENT_WORK_SIDE)
        embed_image, embed_scale = downscale(upright, DOCUMENT_EMBED_SIDE)
        factor = embed_scale / scale
        boxes, strategy = _search(work, min_face_px / factor, thorough=rotation == 0)
        if not boxes and rotation == 0 and factor > 1.25:
            # the upload has more detail than the search image: look at it closely, in tiles
            hires = [b for b in _search_tiles(embed_image) if b.width >= min_face_px]
            boxes, strategy = [b.scaled(1 / factor) for b in hires], "tiles"
        if boxes:
            break
    else:
        raise NoFace("no face found in the image")
    boxes = [b.scaled(factor).clipped(*embed_image.shape[:2]) for b in boxes]
    primary, others = boxes[0], boxes[1:]
    rivals = [b for b in others if b.width >= SECONDARY_FACE_RATIO * primary.width]
    if rivals:
        raise MultipleFaces(
            f"the image shows {1 + len(rivals)} faces of similar size; one person only",
            count=len(boxes),
        )
    if rotation:
        strategy = f"rotated{rotation}+{strategy}"
    return DocumentFace(embed_image, primary, tuple(others), strategy, rotation)


def _search(work: np.ndarray, min_px: float, *, thorough: bool) -> tuple[list[FaceBox], str]:
    pixels = work.shape[0] * work.shape[1]

    def usable(boxes: list[FaceBox]) -> list[FaceBox]:
        return [b for b in boxes if b.width >= min_px]

    boxes = usable(detect_faces(work, 0))
    if boxes:
        return boxes, "hog"
    if pixels <= 1_500_000:
        boxes = usable(detect_faces(work, 1))
        if boxes:
            return boxes, "hog+upsample1"
    if not thorough:
        return [], ""
    if pixels <= 400_000:
        boxes = usable(detect_faces(work, 2))
        if boxes:
            return boxes, "hog+upsample2"
    return [], ""


def _search_tiles(image: np.ndarray) -> list[FaceBox]:
    """2x2 overlapping tiles of the full-detail image, each searched upsampled once."""
    h, w = image.shape[:2]
    th, tw = int(h * 0.6), int(w * 0.6)
    found: list[FaceBox] = []
    for y in (0, h - th):
        for x in (0, w - tw):
            tile = np.ascontiguousarray(image[y : y + th, x : x + tw])
            for b in detect_faces(tile, 1):
                found.append(b.shifted(x, y).clipped(h, w))
    merged: list[FaceBox] = []
    for b in sorted(found, key=lambda b: b.score, reverse=True):
        if all(b.iou(m) < 0.3 for m in merged):
            merged.append(b)
    return sorted(merged, key=lambda b: b.area, reverse=True)


def _rotate(rgb: np.ndarray, clockwise: int) -> np.ndarray:
    if clockwise == 0:
        return rgb
    return np.ascontiguousarray(np.rot90(rgb, k=-(clockwise // 90)))

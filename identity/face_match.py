"""Face embeddings and the match verdict.

dlib's ResNet model (the one behind ``face_recognition``; 99.38 % on LFW)
maps an aligned face to a 128-number embedding; two faces of the same person
are closer than :data:`DEFAULT_THRESHOLD` in Euclidean distance. The threshold
was chosen with ``bench/identity_eval.py`` over the labelled photos in the
shared test data (see ``docs/identity.md``): it is the largest threshold that
keeps false accepts at or below 0.1 % on those pairs, rounded down.

A :class:`Reference` is built once from the ID document or ID photo; live
frames are compared with it (:func:`compare`). Embeddings are biometric data:
this package never logs or stores them; the server encrypts them at rest
(:meth:`Reference.embedding_bytes`) and deletes them with the recording.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

from . import models
from .exceptions import MultipleFaces, NoFace, PoorQuality
from .face_detect import DocumentFace, FaceBox, detect_faces, find_document_face
from .images import downscale, load_image

#: the embedding model's name, stored beside embeddings so a later model is never mixed in
MODEL = "dlib_face_recognition_resnet_model_v1"
EMBEDDING_SIZE = 128
#: same person when the distance is at most this (measured: see docs/identity.md)
DEFAULT_THRESHOLD = 0.40
#: re-sampled embeddings averaged for a reference (each costs one embedding, ~100 ms)
REFERENCE_JITTERS = 1
#: a reference face narrower than this (pixels) carries too little detail
MIN_REFERENCE_FACE_PX = 40
#: a secondary face at least this wide is embedded to check it is the holder's ghost portrait
MIN_GHOST_CHECK_PX = 40
#: an upload without a usable face is searched for a smaller one at this size (upsampled once)
SMALL_FACE_SEARCH_SIDE = 1024
#: a reference face narrower than this is upscaled (bicubic) before landmarks and embedding
UPSCALE_BELOW_PX = 110
#: ... to this width
UPSCALE_TO_PX = 160


def embed_face(rgb: np.ndarray, box: FaceBox, num_jitters: int = 1) -> np.ndarray:
    """The 128-d embedding (float32) of the face in ``box`` of ``rgb``.

    The face is aligned with the 5-point landmarks (what the model was trained
    with). ``num_jitters`` > 1 averages that many randomly shifted crops:
    slightly steadier, proportionally slower.
    """
    m = models.get()
    rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
    shape = m.landmarks5(rgb, box.rect())
    vec = m.encoder.compute_face_descriptor(rgb, shape, max(1, int(num_jitters)))
    return np.asarray(vec, dtype=np.float32)


def embed_small_face(rgb: np.ndarray, box: FaceBox, num_jitters: int = 1) -> np.ndarray:
    """:func:`embed_face`, with a small face first upscaled to :data:`UPSCALE_TO_PX`.

    Document photos are small (an ID card scanned at 300 dpi has a face of
    about 100 px); the 5-point landmarks and the model's 150x150 chip are then
    taken from a bicubic enlargement of the face's neighbourhood. Measured by
    ``bench/identity_eval.py --upscale`` it changes nothing that matters
    (dlib resamples the chip itself), so references are embedded without it
    unless asked.
    """
    if box.width >= UPSCALE_BELOW_PX:
        return embed_face(rgb, box, num_jitters)
    h, w = rgb.shape[:2]
    margin = box.width
    x0, y0 = max(0, box.left - margin), max(0, box.top - margin)
    x1, y1 = min(w, box.right + margin), min(h, box.bottom + margin)
    factor = UPSCALE_TO_PX / max(1, box.width)
    crop = np.ascontiguousarray(rgb[y0:y1, x0:x1])
    size = (max(1, round((x1 - x0) * factor)), max(1, round((y1 - y0) * factor)))
    big = cv2.resize(crop, size, interpolation=cv2.INTER_CUBIC)
    scaled = box.shifted(-x0, -y0).scaled(factor).clipped(*big.shape[:2])
    return embed_face(big, scaled, num_jitters)


def distance(a: np.ndarray, b: np.ndarray) -> float:
    """Euclidean distance between two embeddings."""
    return float(np.linalg.norm(np.asarray(a, np.float32) - np.asarray(b, np.float32)))


def score(distance_: float, threshold: float) -> int:
    """0-100 similarity for people: 100 identical, 50 exactly at the threshold, 0 at twice it."""
    return int(round(100 * min(1.0, max(0.0, 1.0 - distance_ / (2 * threshold)))))


@dataclass(frozen=True)
class Match:
    """The verdict of one comparison."""

    match: bool
    distance: float
    threshold: float
    #: 0-100, see :func:`score`
    score: int

    def as_dict(self) -> dict[str, Any]:
        return {
            "match": self.match,
            "distance": round(self.distance, 4),
            "threshold": self.threshold,
            "score": self.score,
        }


def compare(
    reference: Reference | np.ndarray, live: np.ndarray, threshold: float = DEFAULT_THRESHOLD
) -> Match:
    """Is ``live`` (an embedding) the person of ``reference``?"""
    ref = reference.embedding if isinstance(reference, Reference) else reference
    d = distance(ref, live)
    return Match(match=d <= threshold, distance=d, threshold=threshold, score=score(d, threshold))


@dataclass(frozen=True)
class Reference:
    """The face a customer is verified against, from an ID document or ID photo."""

    embedding: np.ndarray = field(repr=False)
    #: the face in the (upright, possibly downscaled) uploaded image
    box: FaceBox
    #: how the face was found (see :func:`identity.face_detect.find_document_face`)
    strategy: str
    #: smaller faces ignored: ICAO ghost portraits of the same person (or too small to tell)
    secondary_faces: int = 0
    #: distance between the holder's photo and the largest ghost portrait, when one was checked
    ghost_distance: float | None = None
    model: str = MODEL

    def embedding_bytes(self) -> bytes:
        """The embedding as 512 bytes (float32 little-endian), for encrypted storage."""
        return embedding_to_bytes(self.embedding)

    def as_dict(self) -> dict[str, Any]:
        """What may be shown or logged: everything but the embedding."""
        return {
            "box": self.box.as_dict(),
            "face_px": self.box.width,
            "strategy": self.strategy,
            "secondary_faces": self.secondary_faces,
            "ghost_distance": None
            if self.ghost_distance is None
            else round(self.ghost_distance, 4),
            "model": self.model,
        }


def embedding_to_bytes(embedding: np.ndarray) -> bytes:
    return np.asarray(embedding, dtype="<f4").reshape(EMBEDDING_SIZE).tobytes()


def embedding_from_bytes(data: bytes) -> np.ndarray:
    if len(data) != EMBEDDING_SIZE * 4:
        raise ValueError(f"an embedding is {EMBEDDING_SIZE * 4} bytes, got {len(data)}")
    return np.frombuffer(data, dtype="<f4").astype(np.float32)


def reference_from_image(
    image: bytes | np.ndarray,
    *,
    num_jitters: int = REFERENCE_JITTERS,
    threshold: float = DEFAULT_THRESHOLD,
    upscale: bool = False,
) -> Reference:
    """Find the holder's face in an uploaded image (bytes) or RGB array and embed it.

    Raises :class:`~identity.exceptions.ImageError` (bad upload),
    :class:`~identity.exceptions.NoFace`, :class:`~identity.exceptions.MultipleFaces`
    (two people, or a smaller face that is not the holder's ghost portrait) or
    :class:`~identity.exceptions.PoorQuality` ``photo_too_small`` (a face is there, too small
    to compare).
    """
    rgb = load_image(image) if isinstance(image, bytes | bytearray | memoryview) else image
    try:
        doc = find_document_face(rgb, MIN_REFERENCE_FACE_PX)
        width = doc.box.width
    except NoFace:
        small = _smaller_face(rgb)
        if small is None:
            raise
        width = small
    if width < MIN_REFERENCE_FACE_PX:
        raise PoorQuality(
            "photo_too_small",
            f"the portrait is {width} px wide; at least {MIN_REFERENCE_FACE_PX} px "
            "is needed: photograph the ID from closer",
        )
    embed = embed_small_face if upscale else embed_face
    embedding = embed(doc.image, doc.box, num_jitters)
    ghost_distance = _check_secondary(doc, embedding, threshold)
    return Reference(
        embedding=embedding,
        box=doc.box,
        strategy=doc.strategy,
        secondary_faces=len(doc.secondary),
        ghost_distance=ghost_distance,
    )


def _smaller_face(rgb: np.ndarray) -> int | None:
    """The width of a face too small to use, if the image shows one (else None)."""
    work, scale = downscale(rgb, SMALL_FACE_SEARCH_SIDE)
    boxes = detect_faces(work, 1)
    return round(boxes[0].width / scale) if boxes else None


def _check_secondary(doc: DocumentFace, embedding: np.ndarray, threshold: float) -> float | None:
    """A smaller face must be the holder's ghost portrait; returns the largest one's distance."""
    first: float | None = None
    for box in doc.secondary:
        if box.width < MIN_GHOST_CHECK_PX:
            continue  # too small to embed reliably; too small to be a participant either
        d = distance(embedding, embed_face(doc.image, box))
        if first is None:
            first = d
        if d > threshold:
            raise MultipleFaces(
                "the image shows a second, smaller face of a different person",
                count=1 + len(doc.secondary),
            )
    return first

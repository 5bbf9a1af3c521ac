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

import numpy as np

from . import models
from .exceptions import MultipleFaces, PoorQuality
from .face_detect import DocumentFace, FaceBox, find_document_face
from .images import load_image

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
) -> Reference:
    """Find the holder's face in an uploaded image (bytes) or RGB array and embed it.

    Raises :class:`~identity.exceptions.ImageError` (bad upload),
    :class:`~identity.exceptions.NoFace`, :class:`~identity.exceptions.MultipleFaces`
    (two people, or a smaller face that is not the holder's ghost portrait) or
    :class:`~identity.exceptions.PoorQuality` ``face_too_small``.
    """
    rgb = load_image(image) if isinstance(image, bytes | bytearray | memoryview) else image
    doc = find_document_face(rgb, MIN_REFERENCE_FACE_PX)
    if doc.box.width < MIN_REFERENCE_FACE_PX:
        raise PoorQuality(
            "face_too_small",
            f"the face is {doc.box.width} px wide; at least {MIN_REFERENCE_FACE_PX} px is needed",
        )
    embedding = embed_face(doc.image, doc.box, num_jitters)
    ghost_distance = _check_secondary(doc, embedding, threshold)
    return Reference(
        embedding=embedding,
        box=doc.box,
        strategy=doc.strategy,
        secondary_faces=len(doc.secondary),
        ghost_distance=ghost_distance,
    )


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

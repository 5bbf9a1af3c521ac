"""One verdict from several live frames: match, no match, or inconclusive.

A single frame's distance to the reference is noisy (a blink, a half turn,
motion blur move it by 0.05-0.1), so a verification embeds several frames
taken at different moments and compares their **mean embedding** with the
reference (:func:`aggregate`). The distance is then read against two
thresholds (:class:`Thresholds`):

* at most ``accept`` -- **match**: the face is the document holder's;
* above ``reject`` -- **no match**: a different person, an anomaly the
  auditor sees;
* between them -- **inconclusive** (``uncertain``): the model cannot tell
  (a document photo many years old, or two people it places close together);
  the agent compares the face with the document themself. Not an anomaly.

Frames that fail a quality gate never reach the comparison: a verification
with too few usable frames is inconclusive too, with the gate's reason
(``face_too_small``, ``too_dark``, ...) so the customer knows what to fix.

The two thresholds were chosen by ``bench/identity_eval.py`` with
leave-one-set-out evaluation over every labelled set of the shared test data
(docs/identity.md says how, and what they give on each set).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

Verdict = Literal["match", "no_match", "inconclusive"]

#: a match at or below this mean-embedding distance (see docs/identity.md)
ACCEPT_THRESHOLD = 0.39
#: no match above this; between the two the verdict is inconclusive
REJECT_THRESHOLD = 0.55
#: frames embedded per verification (their mean is compared)
FRAMES_PER_DECISION = 5
#: fewest usable frames a verdict is drawn from
MIN_FRAMES = 3


@dataclass(frozen=True)
class Thresholds:
    accept: float = ACCEPT_THRESHOLD
    reject: float = REJECT_THRESHOLD

    def __post_init__(self) -> None:
        if not 0.0 < self.accept <= self.reject:
            raise ValueError(f"need 0 < accept <= reject, got {self.accept}, {self.reject}")

    def verdict(self, distance: float) -> Verdict:
        if distance <= self.accept:
            return "match"
        if distance > self.reject:
            return "no_match"
        return "inconclusive"


DEFAULT_THRESHOLDS = Thresholds()


def aggregate(embeddings: Sequence[np.ndarray]) -> np.ndarray:
    """The mean of several embeddings of one face (float32)."""
    if not embeddings:
        raise ValueError("no embeddings to aggregate")
    return np.mean(np.stack([np.asarray(e, np.float32) for e in embeddings]), axis=0).astype(
        np.float32
    )


@dataclass(frozen=True)
class Decision:
    """The verdict of one verification."""

    verdict: Verdict
    #: ``match``, ``mismatch``, ``uncertain`` or the quality gate that left too few frames
    reason: str
    #: distance of the mean embedding to the reference (None when too few frames were usable)
    distance: float | None
    #: each usable frame's own distance, in the order taken
    distances: tuple[float, ...]
    thresholds: Thresholds

    @property
    def verified(self) -> bool:
        return self.verdict == "match"

    def as_dict(self) -> dict[str, Any]:
        return {
            "verdict": self.verdict,
            "reason": self.reason,
            "distance": None if self.distance is None else round(self.distance, 4),
            "distances": [round(d, 4) for d in self.distances],
            "accept": self.thresholds.accept,
            "reject": self.thresholds.reject,
        }


def decide(
    reference: np.ndarray,
    embeddings: Sequence[np.ndarray],
    *,
    thresholds: Thresholds = DEFAULT_THRESHOLDS,
    min_frames: int = MIN_FRAMES,
    unusable_reason: str = "no_face",
) -> Decision:
    """The verdict on ``embeddings`` (usable live frames) against ``reference``.

    With fewer than ``min_frames`` embeddings the verdict is inconclusive with
    ``unusable_reason`` (the quality gate the other frames failed).
    """
    ref = np.asarray(reference, np.float32)
    distances = tuple(float(np.linalg.norm(ref - np.asarray(e, np.float32))) for e in embeddings)
    if len(embeddings) < max(1, min_frames):
        return Decision("inconclusive", unusable_reason, None, distances, thresholds)
    d = float(np.linalg.norm(ref - aggregate(embeddings)))
    verdict = thresholds.verdict(d)
    reason = {"match": "match", "no_match": "mismatch", "inconclusive": "uncertain"}[verdict]
    return Decision(verdict, reason, d, distances, thresholds)

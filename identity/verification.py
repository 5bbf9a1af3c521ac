"""Verify a live frame against the reference: quality gates first, then the match.

:func:`verify_frame` is what the agent's "verify" button and the automatic
check at the start of a call run (in the worker pool). A frame that fails a
quality gate is not compared at all: the customer is told what to fix
(``reason`` and the zh/en message) and the caller tries the next frame.
:func:`verify_frames` takes the best of several frames, which lowers false
rejects (a blink, motion blur) without raising false accepts much: the
threshold is the same and the frames are of the same person.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .analysis import FrameAnalysis, analyze_frame
from .face_match import DEFAULT_THRESHOLD, Match, Reference, compare
from .messages import text
from .quality import DEFAULT_THRESHOLDS, QualityReport, QualityThresholds


@dataclass(frozen=True)
class Verification:
    """Outcome of verifying one frame."""

    #: quality passed and the face matches
    verified: bool
    #: ``match``, ``mismatch`` or the first quality gate's code
    reason: str
    #: None when a quality gate failed
    match: Match | None
    quality: QualityReport
    analysis: FrameAnalysis

    @property
    def message(self) -> str:
        return text(self.reason).en

    @property
    def message_zh(self) -> str:
        return text(self.reason).zh

    def as_dict(self) -> dict[str, Any]:
        return {
            "verified": self.verified,
            "reason": self.reason,
            "message": self.message,
            "message_zh": self.message_zh,
            "match": None if self.match is None else self.match.as_dict(),
            "quality": self.quality.as_dict(),
            "face": None if not self.analysis.faces else self.analysis.faces[0].as_dict(),
            "t": self.analysis.t,
        }


def verify_frame(
    reference: Reference | np.ndarray,
    rgb: np.ndarray,
    t: float = 0.0,
    *,
    threshold: float = DEFAULT_THRESHOLD,
    quality: QualityThresholds = DEFAULT_THRESHOLDS,
) -> Verification:
    """Compare the one face in ``rgb`` with ``reference`` if the frame passes the quality gates."""
    analysis = analyze_frame(
        rgb, t, embed=False, landmarks=False, find_small=True, thresholds=quality
    )
    report = analysis.quality
    if not report.ok:
        return Verification(False, report.reason or "no_face", None, report, analysis)
    analysis = analyze_frame(
        rgb, t, embed=True, landmarks=False, boxes=list(analysis.faces), thresholds=quality
    )
    assert analysis.embedding is not None
    m = compare(reference, analysis.embedding, threshold)
    return Verification(m.match, "match" if m.match else "mismatch", m, report, analysis)


def verify_frames(
    reference: Reference | np.ndarray,
    frames: list[tuple[np.ndarray, float]],
    *,
    threshold: float = DEFAULT_THRESHOLD,
    quality: QualityThresholds = DEFAULT_THRESHOLDS,
) -> Verification:
    """The best :func:`verify_frame` of ``frames`` (smallest distance among usable frames)."""
    if not frames:
        raise ValueError("no frames to verify")
    results = [
        verify_frame(reference, rgb, t, threshold=threshold, quality=quality) for rgb, t in frames
    ]
    usable = [r for r in results if r.match is not None]
    if not usable:
        return results[-1]
    return min(usable, key=lambda r: r.match.distance if r.match else 1e9)

"""Face verification, liveness and presence monitoring.

A leaf package: it never imports ``server``, ``signaling`` or ``recorder``,
touches no database and speaks no HTTP. It takes bytes, RGB frames (numpy
``uint8`` arrays of shape (h, w, 3)) and file paths, and returns plain
dataclasses; CPU-heavy work runs in :class:`FaceWorker`'s process pool.

Entry points
------------
* :func:`reference_from_image` -- ID document / ID photo bytes -> :class:`Reference`
* :func:`verify_frame` -- reference + live frame -> :class:`Verification`
  (quality gates, then :class:`Match`)
* :class:`Challenge`, :class:`LivenessJudge`, :func:`judge_frames` -- liveness
* :class:`PresenceMonitor` -- :class:`PresenceEvent` s during the call
* :class:`FaceWorker` -- all of the above off the event loop
* :mod:`identity.cli` -- what ``vcounter identity ...`` runs

See ``docs/identity.md``.
"""

from .analysis import FrameAnalysis, analyze_frame
from .exceptions import (
    ChallengeError,
    IdentityError,
    ImageError,
    ImageTooLarge,
    ImageTooSmall,
    MultipleFaces,
    NoFace,
    PoorQuality,
    VideoError,
    WorkerBusy,
    WorkerClosed,
)
from .face_detect import DocumentFace, FaceBox, detect_faces, find_document_face
from .face_match import (
    DEFAULT_THRESHOLD,
    Match,
    Reference,
    compare,
    embed_face,
    embedding_from_bytes,
    embedding_to_bytes,
    reference_from_image,
)
from .images import ImageLimits, load_image
from .liveness import (
    Challenge,
    LivenessJudge,
    LivenessResult,
    LivenessThresholds,
    Progress,
    Step,
    judge_frames,
)
from .presence import PresenceEvent, PresenceMonitor
from .quality import QualityReport, QualityThresholds
from .verification import Verification, verify_frame, verify_frames
from .worker import FaceWorker

__all__ = [
    "DEFAULT_THRESHOLD",
    "Challenge",
    "ChallengeError",
    "DocumentFace",
    "FaceBox",
    "FaceWorker",
    "FrameAnalysis",
    "IdentityError",
    "ImageError",
    "ImageLimits",
    "ImageTooLarge",
    "ImageTooSmall",
    "LivenessJudge",
    "LivenessResult",
    "LivenessThresholds",
    "Match",
    "MultipleFaces",
    "NoFace",
    "PoorQuality",
    "PresenceEvent",
    "PresenceMonitor",
    "Progress",
    "QualityReport",
    "QualityThresholds",
    "Reference",
    "Step",
    "Verification",
    "VideoError",
    "WorkerBusy",
    "WorkerClosed",
    "analyze_frame",
    "compare",
    "detect_faces",
    "embed_face",
    "embedding_from_bytes",
    "embedding_to_bytes",
    "find_document_face",
    "judge_frames",
    "load_image",
    "reference_from_image",
    "verify_frame",
    "verify_frames",
]

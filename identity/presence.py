"""Presence during the call: still there, still alone, still the same person.

A :class:`PresenceMonitor` per video (the customer's, and the agent's) is fed
the analysis of a frame every few seconds or faster. It turns what it sees into
:class:`PresenceEvent` records the server puts on the call's timeline
(auditors see them as anomalies) and pushes to the agent panel:

``face_missing``
    no face for more than ``missing_after_s`` (default 3 s); ``t`` is when
    that became true, ``detail.last_seen_t`` when a face was last seen.
``face_returned``
    the first face after ``face_missing``; ``detail.missing_s``.
``multiple_faces`` / ``multiple_faces_ended``
    more than one face in a checked frame / one or none again.
``face_mismatch`` / ``face_match_restored``
    with a reference embedding only: ``mismatch_checks`` consecutive embedded
    checks farther than ``threshold`` (default 3) / the next check that
    matches. Use the embedding of the customer's verified *live* face as the
    reference when there is one: live-to-live distances are smaller than
    live-to-document ones, so there are fewer false alarms.

A check is cheap: :func:`check_presence` finds faces with BlazeFace
(:mod:`identity.blazeface`, ~2 ms a frame) and follows the face from check to
check (:func:`identity.tracker.same_face`). Only the embedding is dear (dlib's
ResNet, ~90 ms), so a face is embedded when its track breaks -- a face that
appears, comes back, or is not where the last one was: someone who left and
someone else who sat down -- and otherwise every ``embed_every_s`` (8 s),
and at every check while a mismatch is being confirmed or lasts.
:meth:`PresenceMonitor.request` says which, the worker decides on the frame.
The embedding itself is dlib's, on the box HOG finds in a window around the
BlazeFace box (the box dlib's models expect); a face HOG does not see there
(turned away) is embedded at a later check.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from .analysis import FrameAnalysis, frame_digest
from .blazeface import detect_blazeface
from .face_detect import FaceBox
from .face_match import DEFAULT_THRESHOLD, distance, embed_face
from .images import downscale
from .quality import assess
from .tracker import same_face, search_window
from .video import LIVE_MAX_SIDE

#: seconds between embeddings of a face whose track holds
EMBED_EVERY_S = 8.0

#: "no": never embed; "on_break": only a face whose track broke; "yes": the single face, if any
EmbedPolicy = Literal["no", "on_break", "yes"]


@dataclass(frozen=True)
class PresenceRequest:
    """What one presence check of a video should do (:meth:`PresenceMonitor.request`)."""

    embed: EmbedPolicy = "no"
    #: the only face of the previous check (its track), in the analysed frame's pixels
    last: FaceBox | None = None
    #: seconds since that check
    gap_s: float = 0.0


def check_presence(
    rgb: np.ndarray, t: float = 0.0, index: int = 0, request: PresenceRequest | None = None
) -> FrameAnalysis:
    """One presence check: faces (BlazeFace), and the face's embedding if ``request`` wants it.

    No landmarks; the quality report is the gates' on the BlazeFace boxes.
    """
    request = request or PresenceRequest()
    frame, _ = downscale(np.ascontiguousarray(rgb, dtype=np.uint8), LIVE_MAX_SIDE)
    faces = tuple(detect_blazeface(frame))
    embedding = None
    if len(faces) == 1 and (
        request.embed == "yes"
        or (request.embed == "on_break" and not same_face(request.last, faces[0], request.gap_s))
    ):
        found = search_window(frame, faces[0], window=1.6)
        if found:
            embedding = embed_face(frame, found[0])
    h, w = frame.shape[:2]
    return FrameAnalysis(
        t=t,
        index=index,
        size=(w, h),
        faces=faces,
        quality=assess(frame, faces),
        digest=frame_digest(frame),
        embedding=embedding,
    )


@dataclass(frozen=True)
class PresenceEvent:
    """One timeline event."""

    kind: str
    #: the frame's time (the server's clock for the call, seconds)
    t: float
    #: whose video: "customer", "agent", ...
    subject: str
    detail: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "t": self.t, "subject": self.subject, "detail": self.detail}


class PresenceMonitor:
    """Presence state of one video, updated one analysed frame at a time."""

    def __init__(
        self,
        reference: np.ndarray | None = None,
        *,
        subject: str = "customer",
        missing_after_s: float = 3.0,
        mismatch_checks: int = 3,
        threshold: float = DEFAULT_THRESHOLD,
        embed_every_s: float = EMBED_EVERY_S,
    ) -> None:
        self.reference = reference
        self.subject = subject
        self.missing_after_s = missing_after_s
        self.mismatch_checks = mismatch_checks
        self.threshold = threshold
        self.embed_every_s = embed_every_s
        self._started: float | None = None
        self._last_seen: float | None = None
        self._missing = False
        self._multiple = False
        self._mismatch_streak = 0
        self._mismatch = False
        self._last_embed: float | None = None
        self._just_returned = False
        self.last_distance: float | None = None
        self.faces = 0
        #: embedded checks so far
        self.embeddings = 0
        #: tracks begun so far (a face that appeared, came back, or is not the previous one)
        self.tracks = 0
        self._track: FaceBox | None = None
        self._track_t = 0.0
        self._track_size: tuple[int, int] | None = None
        self._owed = False

    def request(self, t: float) -> PresenceRequest:
        """What the check of the frame at ``t`` should do."""
        if self.reference is None:
            return PresenceRequest()
        if self.wants_embedding(t):
            return PresenceRequest("yes")
        return PresenceRequest("on_break", self._track, t - self._track_t)

    def wants_embedding(self, t: float) -> bool:
        """Should the next frame (at ``t``) be embedded?"""
        if self.reference is None:
            return False
        if (
            self._last_embed is None
            or self._just_returned
            or self._owed
            or self._mismatch_streak
            or self._mismatch
        ):
            return True
        return t - self._last_embed >= self.embed_every_s

    def update(self, a: FrameAnalysis) -> list[PresenceEvent]:
        """Events caused by this frame (usually none)."""
        t = a.t
        events: list[PresenceEvent] = []
        if self._started is None:
            self._started = t
        self.faces = a.face_count
        # the face's track: a new one wants an embedding (the worker gave it one if it could)
        if a.face_count == 1:
            box = a.faces[0]
            if not (a.size == self._track_size and same_face(self._track, box, t - self._track_t)):
                self.tracks += 1
                self._owed = self.reference is not None
            self._track, self._track_t, self._track_size = box, t, a.size
        else:
            self._track = None
        # missing / returned
        if a.face_count == 0:
            since = self._last_seen if self._last_seen is not None else self._started
            if not self._missing and t - since > self.missing_after_s:
                self._missing = True
                events.append(self._event("face_missing", t, last_seen_t=self._last_seen))
        else:
            if self._missing:
                self._missing = False
                self._just_returned = True
                since = self._last_seen if self._last_seen is not None else self._started
                events.append(self._event("face_returned", t, missing_s=round(t - since, 2)))
            self._last_seen = t
        # alone
        if a.face_count > 1 and not self._multiple:
            self._multiple = True
            events.append(self._event("multiple_faces", t, faces=a.face_count))
        elif a.face_count <= 1 and self._multiple:
            self._multiple = False
            events.append(self._event("multiple_faces_ended", t, faces=a.face_count))
        # same person
        if self.reference is not None and a.embedding is not None and a.face_count == 1:
            self._last_embed = t
            self._just_returned = False
            self._owed = False
            self.embeddings += 1
            d = distance(self.reference, a.embedding)
            self.last_distance = d
            if d > self.threshold:
                self._mismatch_streak += 1
                if not self._mismatch and self._mismatch_streak >= self.mismatch_checks:
                    self._mismatch = True
                    events.append(
                        self._event(
                            "face_mismatch",
                            t,
                            distance=round(d, 4),
                            threshold=self.threshold,
                            checks=self._mismatch_streak,
                        )
                    )
            else:
                self._mismatch_streak = 0
                if self._mismatch:
                    self._mismatch = False
                    events.append(self._event("face_match_restored", t, distance=round(d, 4)))
        return events

    def status(self) -> dict[str, Any]:
        """For the agent panel."""
        return {
            "subject": self.subject,
            "faces": self.faces,
            "missing": self._missing,
            "multiple": self._multiple,
            "mismatch": self._mismatch,
            "last_distance": None if self.last_distance is None else round(self.last_distance, 4),
            "threshold": self.threshold if self.reference is not None else None,
        }

    def _event(self, kind: str, t: float, **detail: Any) -> PresenceEvent:
        return PresenceEvent(kind, t, self.subject, detail)

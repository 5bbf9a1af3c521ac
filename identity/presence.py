"""Presence during the call: still there, still alone, still the same person.

A :class:`PresenceMonitor` per video (the customer's, and the agent's) is fed
the analysis of a frame about twice a second. It turns what it sees into
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

Embedding costs ~105 ms of a worker, detection ~40 ms: :meth:`wants_embedding`
asks for one only every ``embed_every_s`` (and at once when a face returns or a
mismatch needs confirming), so a call costs ~150 ms of CPU a second instead
of ~300 ms.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .analysis import FrameAnalysis
from .face_match import DEFAULT_THRESHOLD, distance


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
        embed_every_s: float = 2.0,
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

    def wants_embedding(self, t: float) -> bool:
        """Should the next frame (at ``t``) be embedded?"""
        if self.reference is None:
            return False
        if (
            self._last_embed is None
            or self._just_returned
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

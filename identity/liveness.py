"""Challenge-response liveness: blink, turn left, turn right, in a random order.

The server issues a :class:`Challenge` (a random nonce and the steps in a
random order, drawn with :mod:`secrets`), shows one step at a time to the
customer, and judges the live frames with a :class:`LivenessJudge`. Each step
must be done within ``step_time_limit_s`` of the previous one finishing (or
of the first frame). Judging is incremental -- :meth:`LivenessJudge.feed`
one :class:`~identity.analysis.FrameAnalysis` at a time, and the progress
says when to show the next step -- or in one go with :func:`judge_frames`.

What each step needs
--------------------
``blink``
    The eye aspect ratio (EAR, 68-point landmarks) drops below
    ``blink_candidate_ratio`` x the open-eye level (the median EAR over the
    last second) within ``blink_onset_s`` of an open-eye frame, reaches at most
    ``blink_close_ratio`` x that level *and* at most ``blink_max_closed_ear``
    (eyes closed, not merely narrowed by a glance aside or a smile), and
    recovers to ``blink_open_ratio`` x the level and ``blink_reopen_factor``
    x its minimum within ``blink_max_closed_s``, while the head looks at the
    camera. On the shared clips real blinks reach 0.35-0.52 of the level and
    EAR 0.09-0.16; glances aside and eye-narrowing reach 0.64 and more, EAR
    0.2 and more. A flat picture tilted top-away would squash the
    eyes too, but it squashes the eye-to-nose distance with them: the dip only
    counts if that distance (:func:`~identity.landmarks.nose_drop`) stays at
    ``blink_min_nose_ratio`` of its level or more.
``turn_left`` / ``turn_right``
    From a frontal frame (``|yaw| <= 0.15``), the yaw ratio
    (:func:`~identity.landmarks.yaw_ratio`; left and right are the
    customer's own, as seen in the mirrored preview) reaches
    ``turn_min_yaw`` in the asked direction and has moved by
    ``turn_min_change``: about 17 degrees. The yaw ratio does not change when a
    picture is moved, scaled or rotated in the image plane; a picture tilted
    about its vertical axis can change it, so the turned face must also fail
    to fit a homography of the frontal one (:mod:`identity.planarity`).

Throughout
----------
* more than one face in any frame fails (``multiple_faces``);
* the same picture for ``frozen_after_s`` fails (``frozen_video``);
* the face is embedded on a frontal frame about every ``embed_every_s``; the
  first must be within ``reference_threshold`` of the reference, when one is
  given (``not_reference``), and later ones within ``same_person_threshold``
  of the mean of those before (``face_changed``) -- twice in a row, so that
  one frame caught mid-turn or blurred (a single frame of one sitting strays
  up to ~0.43 from the first on the shared clips) does not fail a real
  customer, while a face that stays different does.

This is a challenge-response check against photos, printed pictures and
replayed or frozen video; it is not a certified presentation-attack detector
(ISO/IEC 30107-3): a real-time deepfake or a good 3D mask is out of its reach.
"""

from __future__ import annotations

import secrets
import statistics
import time
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any

import numpy as np

from .analysis import (
    FRONTAL_MAX_YAW,
    Embed,
    FrameAnalysis,
    PoseBaseline,
    analyze_frame,
    frame_digest,
)
from .exceptions import ChallengeError
from .face_match import DEFAULT_THRESHOLD, distance
from .images import downscale
from .landmarks import yaw_degrees
from .messages import text
from .tracker import FaceTracker
from .video import LIVE_MAX_SIDE, VideoFrame


class Step(StrEnum):
    BLINK = "blink"
    TURN_LEFT = "turn_left"
    TURN_RIGHT = "turn_right"


ALL_STEPS = (Step.BLINK, Step.TURN_LEFT, Step.TURN_RIGHT)
#: default seconds allowed for each step
STEP_TIME_LIMIT_S = 8.0


@dataclass(frozen=True)
class Challenge:
    """What the customer is asked to do, in order. Issue with :meth:`issue`."""

    steps: tuple[Step, ...]
    #: random, unguessable: ties the result to this issuance (the server stores it)
    nonce: str
    step_time_limit_s: float = STEP_TIME_LIMIT_S
    #: server wall-clock time of issue (epoch seconds)
    issued_at: float = 0.0

    def __post_init__(self) -> None:
        if not self.steps:
            raise ChallengeError("a challenge needs at least one step")
        if len(set(self.steps)) != len(self.steps):
            raise ChallengeError("a step appears twice")
        if not 1.0 <= self.step_time_limit_s <= 60.0:
            raise ChallengeError("step_time_limit_s must be between 1 and 60 seconds")

    @classmethod
    def issue(
        cls,
        steps: Iterable[Step | str] | None = None,
        *,
        count: int | None = None,
        step_time_limit_s: float = STEP_TIME_LIMIT_S,
        now: float | None = None,
    ) -> Challenge:
        """``count`` of ``steps`` (default: all three) in a random order, with a fresh nonce."""
        pool = [parse_step(s) for s in (steps if steps is not None else ALL_STEPS)]
        rng = secrets.SystemRandom()
        rng.shuffle(pool)
        if count is not None:
            if not 1 <= count <= len(pool):
                raise ChallengeError(f"count must be between 1 and {len(pool)}")
            pool = pool[:count]
        return cls(
            steps=tuple(pool),
            nonce=secrets.token_urlsafe(16),
            step_time_limit_s=step_time_limit_s,
            issued_at=time.time() if now is None else now,
        )

    @classmethod
    def fixed(
        cls, steps: Sequence[Step | str] | str, step_time_limit_s: float = STEP_TIME_LIMIT_S
    ) -> Challenge:
        """These steps in this order (operator CLI, tests): ``"blink"`` or ``"turn_left,blink"``."""
        if isinstance(steps, str):
            steps = [s for s in steps.split(",") if s.strip()]
        return cls(
            steps=tuple(parse_step(s) for s in steps),
            nonce=secrets.token_urlsafe(16),
            step_time_limit_s=step_time_limit_s,
            issued_at=time.time(),
        )

    def expires_at(self, grace_s: float = 10.0) -> float:
        """Wall-clock time after which the server should refuse a result for this challenge."""
        return self.issued_at + len(self.steps) * self.step_time_limit_s + grace_s

    def as_dict(self) -> dict[str, Any]:
        return {
            "nonce": self.nonce,
            "steps": [str(s) for s in self.steps],
            "step_time_limit_s": self.step_time_limit_s,
            "issued_at": self.issued_at,
            "instructions": [
                {"step": str(s), "en": text(str(s)).en, "zh": text(str(s)).zh} for s in self.steps
            ],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Challenge:
        try:
            return cls(
                steps=tuple(parse_step(s) for s in data["steps"]),
                nonce=str(data["nonce"]),
                step_time_limit_s=float(data.get("step_time_limit_s", STEP_TIME_LIMIT_S)),
                issued_at=float(data.get("issued_at", 0.0)),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ChallengeError(f"malformed challenge: {exc}") from exc


def parse_step(step: Step | str) -> Step:
    try:
        return Step(str(step).strip())
    except ValueError:
        raise ChallengeError(
            f"unknown step {step!r} (expected one of {', '.join(s.value for s in Step)})"
        ) from None


@dataclass(frozen=True)
class LivenessThresholds:
    """Decision limits (see the module's docstring); the defaults are calibrated on the shared clips."""

    blink_candidate_ratio: float = 0.7
    blink_close_ratio: float = 0.6
    blink_max_closed_ear: float = 0.2
    blink_open_ratio: float = 0.75
    blink_reopen_factor: float = 1.5
    blink_history_s: float = 1.0
    blink_min_history: int = 3
    blink_onset_s: float = 0.3
    blink_max_closed_s: float = 1.0
    blink_max_yaw: float = 0.25
    blink_min_nose_ratio: float = 0.8
    turn_min_yaw: float = 0.2
    turn_min_change: float = 0.2
    frontal_max_yaw: float = FRONTAL_MAX_YAW
    max_planar_inliers: float = 0.55
    same_person_threshold: float = 0.45
    reference_threshold: float = DEFAULT_THRESHOLD
    embed_every_s: float = 1.0
    frozen_after_s: float = 2.0


DEFAULT_LIVENESS = LivenessThresholds()


@dataclass(frozen=True)
class AnalysisRequest:
    """What the judge needs measured on the next frame (arguments of ``analyze_frame``)."""

    embed: Embed = False
    keep_patch: bool = False
    baseline: PoseBaseline | None = None
    planar_min_yaw_change: float = DEFAULT_LIVENESS.turn_min_change

    def kwargs(self) -> dict[str, Any]:
        return {
            "embed": self.embed,
            "keep_patch": self.keep_patch,
            "baseline": self.baseline,
            "planar_min_yaw_change": self.planar_min_yaw_change,
        }


@dataclass
class StepEvidence:
    """How one step went: frame numbers and timestamps of what was seen."""

    step: Step
    started_t: float
    deadline_t: float
    passed: bool = False
    completed_t: float | None = None
    reason: str | None = None
    #: frame numbers that show the action (blink: closing, deepest, reopened; turn: frontal, turned)
    frames: list[int] = field(default_factory=list)
    times: list[float] = field(default_factory=list)
    frames_seen: int = 0
    frames_with_face: int = 0
    ear_open: float | None = None
    ear_min: float | None = None
    yaw_baseline: float | None = None
    yaw_peak: float | None = None
    planar_inliers: float | None = None
    #: turns refused because the face moved like a flat picture
    planar_rejections: int = 0
    #: eye-closures refused because the face was squashed like a tilted picture
    tilt_rejections: int = 0

    def as_dict(self) -> dict[str, Any]:
        def r(v: float | None, n: int = 3) -> float | None:
            return None if v is None else round(v, n)

        return {
            "step": str(self.step),
            "passed": self.passed,
            "reason": self.reason,
            "started_t": r(self.started_t),
            "deadline_t": r(self.deadline_t),
            "completed_t": r(self.completed_t),
            "frames": self.frames,
            "times": [round(t, 3) for t in self.times],
            "frames_seen": self.frames_seen,
            "frames_with_face": self.frames_with_face,
            "ear_open": r(self.ear_open),
            "ear_min": r(self.ear_min),
            "yaw_baseline": r(self.yaw_baseline),
            "yaw_peak": r(self.yaw_peak),
            "yaw_peak_deg": None if self.yaw_peak is None else round(yaw_degrees(self.yaw_peak), 1),
            "planar_inliers": r(self.planar_inliers, 2),
            "planar_rejections": self.planar_rejections,
            "tilt_rejections": self.tilt_rejections,
        }


@dataclass(frozen=True)
class Progress:
    """The judge's state after a frame: show ``step`` to the customer until ``done``."""

    done: bool
    passed: bool | None
    step: Step | None
    completed: tuple[Step, ...]
    reason: str | None = None


@dataclass(frozen=True)
class LivenessResult:
    """The verdict, with per-step evidence."""

    passed: bool
    reason: str | None
    challenge: Challenge
    steps: tuple[StepEvidence, ...]
    frames: int
    duration_s: float
    #: largest embedding distance from the first frontal face during the challenge
    max_face_distance: float | None
    #: distance of the first frontal face from the reference (when one was given)
    reference_distance: float | None
    embeddings: int
    frozen_frames: int
    multiple_face_frames: list[int]

    @property
    def message(self) -> str:
        return text(self.reason or "passed").en

    @property
    def message_zh(self) -> str:
        return text(self.reason or "passed").zh

    def as_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "reason": self.reason,
            "message": self.message,
            "message_zh": self.message_zh,
            "challenge": self.challenge.as_dict(),
            "evidence": {
                "steps": [s.as_dict() for s in self.steps],
                "frames": self.frames,
                "duration_s": round(self.duration_s, 3),
                "max_face_distance": None
                if self.max_face_distance is None
                else round(self.max_face_distance, 4),
                "reference_distance": None
                if self.reference_distance is None
                else round(self.reference_distance, 4),
                "embeddings": self.embeddings,
                "frozen_frames": self.frozen_frames,
                "multiple_face_frames": self.multiple_face_frames[:20],
            },
        }


class _Blink:
    """Eye-closure state machine of one blink step."""

    def __init__(self, th: LivenessThresholds) -> None:
        self.th = th
        self.history: deque[tuple[float, float, float]] = deque()  # (t, ear, nose_drop), eyes open
        self.last_open_t: float | None = None
        self.closing: dict[str, Any] | None = None

    def feed(self, a: FrameAnalysis, ev: StepEvidence) -> bool:
        th = self.th
        assert a.ear is not None and a.yaw is not None and a.nose_drop is not None
        while self.history and a.t - self.history[0][0] > th.blink_history_s:
            self.history.popleft()
        level = nose_level = None
        if len(self.history) >= th.blink_min_history:
            level = statistics.median(e for _, e, _ in self.history)
            nose_level = statistics.median(n for _, _, n in self.history)
        if self.closing is None:
            onset_ok = self.last_open_t is not None and a.t - self.last_open_t <= th.blink_onset_s
            if (
                level is not None
                and a.ear < th.blink_candidate_ratio * level
                and abs(a.yaw) <= th.blink_max_yaw
                and onset_ok
            ):
                self.closing = {
                    "start": (a.index, a.t),
                    "min": (a.index, a.t, a.ear, a.nose_drop),
                    "level": level,
                    "nose_level": nose_level,
                }
                return False
            self.history.append((a.t, a.ear, a.nose_drop))
            if level is None or a.ear >= th.blink_open_ratio * level:
                self.last_open_t = a.t
            return False
        c = self.closing
        if a.ear < c["min"][2]:
            c["min"] = (a.index, a.t, a.ear, a.nose_drop)
        if ev.ear_min is None or c["min"][2] < ev.ear_min:
            ev.ear_min, ev.ear_open = c["min"][2], c["level"]
        if a.t - c["start"][1] > th.blink_max_closed_s:
            self.closing = None  # eyes kept closed (or looked down): not a blink
            self.history.clear()
            self.last_open_t = None
            return False
        if a.ear < th.blink_open_ratio * c["level"] or a.ear < th.blink_reopen_factor * c["min"][2]:
            return False
        self.closing = None
        self.history.append((a.t, a.ear, a.nose_drop))
        self.last_open_t = a.t
        deep = (
            c["min"][2] <= th.blink_close_ratio * c["level"]
            and c["min"][2] <= th.blink_max_closed_ear
        )
        if not deep:
            return False  # eyes narrowed (a glance aside, a smile), not closed
        if c["min"][3] < th.blink_min_nose_ratio * c["nose_level"]:
            ev.tilt_rejections += 1  # the whole face squashed: a picture tilted, not eyelids
            return False
        ev.frames = [c["start"][0], c["min"][0], a.index]
        ev.times = [c["start"][1], c["min"][1], a.t]
        ev.ear_open, ev.ear_min = c["level"], c["min"][2]
        return True


class _Turn:
    """Head-turn state of one turn step."""

    def __init__(self, direction: int, th: LivenessThresholds) -> None:
        self.direction = direction  # +1 the customer's left, -1 their right
        self.th = th
        self.baseline: PoseBaseline | None = None

    def feed(self, a: FrameAnalysis, ev: StepEvidence) -> bool:
        th = self.th
        assert a.yaw is not None
        if self.baseline is None:
            if abs(a.yaw) <= th.frontal_max_yaw and a.patch is not None:
                self.baseline = PoseBaseline(a.patch, a.yaw, a.index)
                ev.yaw_baseline = a.yaw
            return False
        signed = self.direction * a.yaw
        if ev.yaw_peak is None or signed > self.direction * ev.yaw_peak:
            ev.yaw_peak = a.yaw
        change = self.direction * (a.yaw - self.baseline.yaw)
        if signed < th.turn_min_yaw or change < th.turn_min_change:
            return False
        if a.planar_inliers is None:
            return (
                False  # too little texture to tell a head from a picture: wait for a better frame
            )
        if a.planar_inliers > th.max_planar_inliers:
            ev.planar_rejections += 1
            ev.planar_inliers = a.planar_inliers
            return False
        ev.planar_inliers = a.planar_inliers
        ev.yaw_peak = a.yaw
        ev.frames = [self.baseline.index, a.index]
        ev.times = [ev.started_t, a.t]
        return True


class LivenessJudge:
    """Judges a challenge on a stream of frame analyses.

    Per frame: ``req = judge.request()``; analyse the frame with
    ``req.kwargs()`` (in the worker pool); ``progress = judge.feed(analysis)``;
    stop when ``progress.done`` and read :meth:`result`. Call :meth:`result`
    also when the frames run out (the verdict is then ``incomplete`` or
    ``timeout``).
    """

    def __init__(
        self,
        challenge: Challenge,
        *,
        reference: np.ndarray | None = None,
        thresholds: LivenessThresholds = DEFAULT_LIVENESS,
    ) -> None:
        self.challenge = challenge
        self.th = thresholds
        self.reference = reference
        self._evidence: list[StepEvidence] = []
        self._state: _Blink | _Turn | None = None
        self._done = False
        self._passed: bool | None = None
        self._reason: str | None = None
        self._first_t: float | None = None
        self._last_t: float | None = None
        self._prev_digest: bytes | None = None
        self._frozen_since: float | None = None
        self._frozen_frames = 0
        self._frames = 0
        self._anchor: np.ndarray | None = None
        self._last_embed_t: float | None = None
        self._max_distance: float | None = None
        self._reference_distance: float | None = None
        self._embeddings = 0
        #: embeddings averaged into the anchor, and consecutive ones far from it
        self._kept = 1
        self._strays = 0
        self._multi: list[int] = []
        self._awaiting_face_since: float | None = (
            None  # all steps done, no frontal face embedded yet
        )

    # -- what to measure ------------------------------------------------------
    def request(self) -> AnalysisRequest:
        embed: Embed = False
        if (
            self._anchor is None
            or self._last_embed_t is None
            or (
                self._last_t is not None
                and self._last_t - self._last_embed_t >= self.th.embed_every_s
            )
        ):
            embed = "frontal"
        turn = self._state if isinstance(self._state, _Turn) else None
        return AnalysisRequest(
            embed=embed,
            keep_patch=turn is not None and turn.baseline is None,
            baseline=turn.baseline if turn is not None else None,
            planar_min_yaw_change=self.th.turn_min_change,
        )

    def _progress(self) -> Progress:
        completed = tuple(e.step for e in self._evidence if e.passed)
        current = None
        if not self._done and len(completed) < len(self.challenge.steps):
            current = self.challenge.steps[len(completed)]
        return Progress(self._done, self._passed, current, completed, self._reason)

    # -- judging --------------------------------------------------------------
    def feed(self, a: FrameAnalysis) -> Progress:
        if self._done:
            return self._progress()
        self._frames += 1
        if self._first_t is None:
            self._first_t = a.t
            self._start_step(0, a.t)
        self._last_t = a.t
        ev = self._evidence[-1]
        # time is up for the current step?
        if not ev.passed and a.t > ev.deadline_t:
            return self._fail(self._timeout_reason(ev))
        if (
            self._awaiting_face_since is not None
            and a.t - self._awaiting_face_since > self.challenge.step_time_limit_s
        ):
            return self._fail("face_not_frontal")
        # frozen picture?
        if self._prev_digest is not None and a.digest == self._prev_digest:
            self._frozen_frames += 1
            if self._frozen_since is None:
                self._frozen_since = a.t
            if a.t - self._frozen_since >= self.th.frozen_after_s:
                return self._fail("frozen_video")
        else:
            self._frozen_since = None
        self._prev_digest = a.digest
        if a.face_count > 1:
            self._multi.append(a.index)
            return self._fail("multiple_faces")
        if not ev.passed:
            ev.frames_seen += 1
        if a.face_count == 0 or a.yaw is None:
            return self._progress()
        if not ev.passed:
            ev.frames_with_face += 1
        if a.embedding is not None:
            failure = self._check_identity(a)
            if failure:
                return self._fail(failure)
        if not ev.passed and self._state is not None and self._state.feed(a, ev):
            ev.passed, ev.completed_t = True, a.t
            following = len(self._evidence)
            if following < len(self.challenge.steps):
                self._start_step(following, a.t)
            else:
                self._state = None
        if all(e.passed for e in self._evidence) and len(self._evidence) == len(
            self.challenge.steps
        ):
            if self._anchor is not None:
                self._done, self._passed = True, True
            elif self._awaiting_face_since is None:
                self._awaiting_face_since = a.t
        return self._progress()

    def _check_identity(self, a: FrameAnalysis) -> str | None:
        assert a.embedding is not None
        self._embeddings += 1
        self._last_embed_t = a.t
        if self._anchor is None:
            self._anchor = a.embedding
            if self.reference is not None:
                self._reference_distance = distance(self.reference, a.embedding)
                if self._reference_distance > self.th.reference_threshold:
                    return "not_reference"
            return None
        d = distance(self._anchor, a.embedding)
        self._max_distance = d if self._max_distance is None else max(self._max_distance, d)
        if d > self.th.same_person_threshold:
            self._strays += 1
            if self._strays >= 2:
                return "face_changed"
            return None  # a stray frame is not added to the mean
        self._strays = 0
        self._kept += 1
        self._anchor = self._anchor + (a.embedding - self._anchor) / self._kept
        return None

    def _start_step(self, i: int, t: float) -> None:
        step = self.challenge.steps[i]
        self._evidence.append(StepEvidence(step, t, t + self.challenge.step_time_limit_s))
        if step is Step.BLINK:
            self._state = _Blink(self.th)
        else:
            self._state = _Turn(+1 if step is Step.TURN_LEFT else -1, self.th)

    def _timeout_reason(self, ev: StepEvidence) -> str:
        if ev.frames_seen and self._frozen_frames >= 0.8 * self._frames:
            return "frozen_video"
        if ev.frames_with_face == 0:
            return "no_face"
        if ev.planar_rejections:
            return "flat_image"
        if isinstance(self._state, _Turn) and self._state.baseline is None:
            return "face_not_frontal"
        return "timeout"

    def _fail(self, reason: str) -> Progress:
        self._done, self._passed, self._reason = True, False, reason
        if self._evidence and not self._evidence[-1].passed:
            self._evidence[-1].reason = reason
        return self._progress()

    def result(self) -> LivenessResult:
        """The verdict so far: if the frames ran out first, ``timeout`` or ``incomplete``."""
        if not self._done:
            if not self._evidence:
                self._fail("no_face")
            else:
                ev = self._evidence[-1]
                late = self._last_t is not None and self._last_t >= ev.deadline_t - 1e-6
                self._fail(self._timeout_reason(ev) if late and not ev.passed else "incomplete")
        duration = (
            0.0 if self._first_t is None or self._last_t is None else self._last_t - self._first_t
        )
        return LivenessResult(
            passed=bool(self._passed),
            reason=self._reason,
            challenge=self.challenge,
            steps=tuple(self._evidence),
            frames=self._frames,
            duration_s=duration,
            max_face_distance=self._max_distance,
            reference_distance=self._reference_distance,
            embeddings=self._embeddings,
            frozen_frames=self._frozen_frames,
            multiple_face_frames=list(self._multi),
        )


def judge_frames(
    challenge: Challenge,
    frames: Iterable[VideoFrame | tuple[np.ndarray, float]],
    *,
    reference: np.ndarray | None = None,
    thresholds: LivenessThresholds = DEFAULT_LIVENESS,
) -> LivenessResult:
    """Judge a whole sequence in this process (the worker pool, the CLI, tests).

    ``frames`` are :class:`~identity.video.VideoFrame` objects or
    ``(rgb, seconds)`` pairs in order. Faces are tracked between full searches
    (:class:`~identity.tracker.FaceTracker`); a frame identical to the one
    before is not analysed again. Iteration stops as soon as the verdict is in.
    """
    judge = LivenessJudge(challenge, reference=reference, thresholds=thresholds)
    tracker = FaceTracker()
    previous: FrameAnalysis | None = None
    for n, item in enumerate(frames):
        if isinstance(item, VideoFrame):
            rgb, t, index = item.rgb, item.t, item.index
        else:
            rgb, t = item
            index = n
        rgb, _ = downscale(np.ascontiguousarray(rgb, dtype=np.uint8), LIVE_MAX_SIDE)
        if previous is not None and frame_digest(rgb) == previous.digest:
            a = replace(previous, t=t, index=index, embedding=None, planar_inliers=None, patch=None)
        else:
            boxes = tracker.locate(rgb, t)
            a = analyze_frame(rgb, t, index, boxes=boxes, **judge.request().kwargs())
        previous = a
        if judge.feed(a).done:
            break
    return judge.result()

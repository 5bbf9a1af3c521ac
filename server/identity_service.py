"""Identity during a call: face verification, liveness and presence on the live video.

Composes :mod:`identity` (face work, in a process pool), the media hub's
decoded-frame taps, the broker (who is in which session, timeline events) and
the encrypted evidence store:

* **reference** -- the customer uploads an ID photo (HTTP, with the session's
  rejoin token), or the agent captures the ID card the customer holds up to
  the camera. Kept encrypted, with its embedding.
* **verification** -- the agent presses "verify" (and it runs on its own when
  a call starts with a reference): frames of the customer's video are checked
  until one passes the quality gates, then compared with the reference.
* **liveness** -- a challenge of random actions, shown on the customer's
  screen, judged on the live frames as they arrive.
* **presence** -- the customer's video every 2 s, the agent's every 4 s, is
  checked: face missing, several faces, a face that no longer matches the
  verified one.
* **snapshots** -- the agent keeps the customer's current frame as evidence.

Every outcome is a session event (on the recording's signed timeline, with
the SHA-256 of any image kept) and updates the agent's panel. Face data needs
the customer's separate consent; without it only manual verification, face
detection (presence) and snapshots happen. Nothing about faces is logged.

Video is decoded only while a check needs it (:class:`FrameFeed`), and all
face work runs in :class:`identity.FaceWorker`'s processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import av
import cv2
import numpy as np
from aiortc.mediastreams import MediaStreamError

from identity import (
    Challenge,
    FaceBox,
    FaceWorker,
    IdentityError,
    LivenessJudge,
    PresenceMonitor,
    Reference,
    WorkerBusy,
    WorkerClosed,
    embedding_from_bytes,
    embedding_to_bytes,
)
from identity.decision import (
    FRAMES_PER_DECISION,
    MIN_FRAMES,
    Thresholds,
    Verdict,
    aggregate,
    decide,
)
from identity.face_match import score
from identity.images import ImageInfo, inspect_image
from identity.messages import text
from recorder.evidence import EvidenceItem, EvidenceStore
from signaling import messages as m
from signaling.broker import Broker, Session
from signaling.exceptions import InvalidState
from signaling.media_hub import MediaHub

from .config import Config

logger = logging.getLogger(__name__)

#: analysed frames are scaled to this longer side
ANALYSIS_SIDE = 640
#: seconds a verification keeps taking frames (those that fail a quality gate do not count)
VERIFY_TIMEOUT_S = 6.0
#: seconds between the live frames a verification compares
VERIFY_SPACING_S = 0.3
#: seconds to wait for the customer's first video frame when a call starts
MEDIA_START_TIMEOUT_S = 30.0
#: seconds between full-frame face searches during liveness (a tracked window otherwise)
FULL_SCAN_EVERY_S = 0.5
PARTIES = ("customer", "agent")
#: the agent's video is checked every this many presence rounds (the customer's at every one)
AGENT_PRESENCE_EVERY = 8
#: and the customer's every this many (1: every round, from the continuously decoded video;
#: more: a frame decoded from a keyframe asked for, as for the agent)
CUSTOMER_PRESENCE_EVERY = 4
#: a feed nobody but presence read for this long stops decoding continuously (seconds)
FEED_IDLE_S = 5.0
#: a snapshot or a check's first frame older than this (seconds) waits for the next one
FRESH_FRAME_S = 0.5
#: seconds a sampled frame may take to come (the sender's keyframe, asked for)
SAMPLE_TIMEOUT_S = 2.0


@dataclass
class Frame:
    rgb: np.ndarray
    #: the loop's clock when it arrived (seconds)
    t: float
    index: int


class FrameFeed:
    """The latest decoded frame of one party's video, decoded only for those who ask.

    The tap decodes every frame (VP8 frames need their predecessors) from the
    first :meth:`latest` or :meth:`next` on, until :meth:`aclose`. A feed only
    ever read with :meth:`sample` decodes nothing in between: each sample
    starts the tap's decoder, which asks the sender for a keyframe, takes that
    one frame and stops it again.
    """

    def __init__(self, tap: Any, label: str) -> None:
        self._tap = tap
        self.label = label
        self._latest: av.VideoFrame | None = None
        self._latest_t = 0.0
        self.count = 0
        self._cached: Frame | None = None
        self._arrived = asyncio.Event()
        self._sub: Any = None
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self._last_read = 0.0

    def _open(self) -> None:
        self._last_read = asyncio.get_running_loop().time()
        if self._task is None and not self._closed:
            self._sub = self._tap.subscribe_decoded(backlog=2)
            self._task = asyncio.get_running_loop().create_task(
                self._run(self._sub), name=f"feed-{self.label}"
            )

    async def _run(self, sub: Any) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                frame = await sub.recv()
                self._latest, self._latest_t = frame, loop.time()
                self.count += 1
                self._arrived.set()
        except MediaStreamError:
            pass

    async def sample(self, timeout: float = SAMPLE_TIMEOUT_S) -> Frame | None:
        """One frame decoded now from a keyframe (None if none came within ``timeout`` s).

        While someone else reads the feed continuously, its newest frame instead; once nobody
        has for :data:`FEED_IDLE_S`, continuous decoding stops.
        """
        if self._task is not None:
            if asyncio.get_running_loop().time() - self._last_read < FEED_IDLE_S:
                return self._convert()
            await self._stop_continuous()
        if self._closed:
            return None
        sub = self._tap.subscribe_decoded(backlog=1)
        try:
            frame = await asyncio.wait_for(sub.recv(), timeout)
        except (TimeoutError, MediaStreamError):
            return None
        finally:
            sub.close()
        self._latest, self._latest_t = frame, asyncio.get_running_loop().time()
        self.count += 1
        return self._convert()

    async def _stop_continuous(self) -> None:
        task, self._task = self._task, None
        if self._sub is not None:
            self._sub.close()
            self._sub = None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def latest(self, full: bool = False) -> Frame | None:
        """The newest frame as RGB (scaled to :data:`ANALYSIS_SIDE` unless ``full``)."""
        self._open()
        return self._convert(full)

    def _convert(self, full: bool = False) -> Frame | None:
        frame = self._latest
        if frame is None:
            return None
        if not full and self._cached is not None and self._cached.index == self.count:
            return self._cached
        w, h = frame.width, frame.height
        scale = 1.0 if full else min(1.0, ANALYSIS_SIDE / max(w, h))
        rgb = frame.to_ndarray(
            format="rgb24",
            width=max(2, round(w * scale) // 2 * 2),
            height=max(2, round(h * scale) // 2 * 2),
        )
        out = Frame(rgb, self._latest_t, self.count)
        if not full:
            self._cached = out
        return out

    async def next(self, after: int, timeout: float) -> Frame | None:
        """The first frame newer than frame number ``after`` (None after ``timeout`` seconds)."""
        self._open()
        deadline = asyncio.get_running_loop().time() + timeout
        while self.count <= after:
            self._arrived.clear()
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0 or self._task is None or self._task.done():
                return None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), remaining)
        return self.latest()

    async def aclose(self) -> None:
        self._closed = True
        await self._stop_continuous()


@dataclass
class SessionIdentity:
    """What the server knows about one customer's identity during their session."""

    session_id: str
    reference: np.ndarray | None = field(default=None, repr=False)
    reference_info: dict[str, Any] | None = None
    #: embedding of the customer's live face once verified: presence compares with it
    live_embedding: np.ndarray | None = field(default=None, repr=False)
    verification: dict[str, Any] | None = None
    liveness: dict[str, Any] | None = None
    manual: dict[str, Any] | None = None
    snapshots: list[dict[str, Any]] = field(default_factory=list)
    presence: dict[str, PresenceMonitor] = field(default_factory=dict)
    feeds: dict[str, FrameFeed] = field(default_factory=dict)
    busy: str | None = None
    error: dict[str, str] | None = None
    tasks: set[asyncio.Task[Any]] = field(default_factory=set)
    last_panel: dict[str, Any] | None = None


class IdentityService:
    def __init__(
        self,
        config: Config,
        broker: Broker,
        hub: MediaHub,
        evidence: EvidenceStore,
        worker: FaceWorker,
    ) -> None:
        self.config = config
        self.broker = broker
        self.hub = hub
        self.evidence = evidence
        self.worker = worker
        self.thresholds = Thresholds(config.identity_threshold, config.identity_reject_threshold)
        self._states: dict[str, SessionIdentity] = {}
        self._closed = False
        self._warmup: asyncio.Task[None] | None = None
        #: called with the session whenever its identity state changes (the business flow listens)
        self.listeners: list[Callable[[Session], None]] = []
        #: supplies a reference someone else holds for this customer (appointments), called when
        #: face consent is given and the session has no reference yet
        self.reference_provider: Callable[[Session], Awaitable[None]] | None = None

    def start(self) -> None:
        """Start the face workers in the background (models load in ~2 s; calls need not wait)."""
        self._warmup = asyncio.get_running_loop().create_task(
            self._start_workers(), name="face-warmup"
        )

    async def _start_workers(self) -> None:
        try:
            await self.worker.start()
            logger.info("face workers ready (%d)", self.worker.max_workers)
        except Exception:
            logger.exception("face workers did not start: identity checks will fail")

    # -- state ---------------------------------------------------------------------

    def state(self, session_id: str) -> SessionIdentity:
        st = self._states.get(session_id)
        if st is None:
            st = self._states[session_id] = SessionIdentity(session_id)
        return st

    def _spawn(self, st: SessionIdentity, coro: Awaitable[Any], name: str) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        task.set_name(f"{name}-{st.session_id}")
        st.tasks.add(task)
        task.add_done_callback(st.tasks.discard)
        task.add_done_callback(_log_failure)
        return task

    async def _event(self, session_id: str, kind: str, /, **data: object) -> None:
        await self.broker.log_event(session_id, kind, **data)

    async def _put(
        self, session_id: str, kind: str, data: bytes, content_type: str, meta: dict[str, Any]
    ) -> EvidenceItem:
        return await asyncio.to_thread(
            self.evidence.put, session_id, kind, data, content_type=content_type, meta=meta
        )

    # -- broker hooks ----------------------------------------------------------------

    async def call_started(self, session: Session) -> None:
        """Open the frame feeds, start presence checks; verify at once if a reference is ready."""
        if self._closed:
            return
        st = self.state(session.id)
        media = self.hub.call(session.id)
        for party in PARTIES:
            if party not in st.feeds:
                st.feeds[party] = FrameFeed(media.tap(party, "video"), f"{session.id}-{party}")
            st.presence[party] = PresenceMonitor(
                subject=party,
                missing_after_s=self.config.presence_missing_s,
                threshold=self.thresholds.accept,
            )
        self._update_presence_reference(st, session)
        if st.reference_info is not None:
            # uploaded while queued: put its hash on this recording's signed timeline too
            await self._event(
                session.id,
                "reference_in_use",
                item=st.reference_info["item"],
                sha256=st.reference_info["sha256"],
                source=st.reference_info["source"],
            )
        self._spawn(st, self._presence_loop(session, st), "presence")
        if st.reference is not None and session.face_consent:
            self._auto_verify(session, st)
        self._panel(session)

    async def call_ended(self, session: Session) -> None:
        st = self._states.get(session.id)
        if st is None:
            return
        await self._stop(st)
        st.presence.clear()

    async def session_closed(self, session: Session) -> None:
        st = self._states.pop(session.id, None)
        if st is not None:
            await self._stop(st)

    async def _stop(self, st: SessionIdentity) -> None:
        tasks = list(st.tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        feeds, st.feeds = st.feeds, {}
        for feed in feeds.values():
            await feed.aclose()

    async def aclose(self) -> None:
        self._closed = True
        if self._warmup is not None:
            self._warmup.cancel()
            await asyncio.gather(self._warmup, return_exceptions=True)
        for st in list(self._states.values()):
            await self._stop(st)
        self._states.clear()

    # -- consent ---------------------------------------------------------------------

    async def set_consent(self, session: Session, accepted: bool) -> None:
        await self.broker.set_face_consent(session, accepted)
        st = self.state(session.id)
        if not accepted:
            # withdrawn: stop using face data for this session (what is kept stays evidence)
            st.reference = None
            st.live_embedding = None
        elif (
            st.reference is None
            and not await self._restore_reference(session, st)
            and self.reference_provider is not None
        ):
            self._spawn(st, self.reference_provider(session), "reference-provider")
        self._update_presence_reference(st, session)
        self._panel(session)

    async def _restore_reference(self, session: Session, st: SessionIdentity) -> bool:
        """Consent given again after a withdrawal: the reference the session had is used again.

        Its image and embedding stayed in the session's evidence (an adopted
        appointment photo is no longer with the appointment), so nothing is
        uploaded or stored twice; ``reference_in_use`` puts it back on the timeline.
        """
        info = st.reference_info
        if info is None:
            return False
        items = await asyncio.to_thread(self.evidence.list, session.id, "reference_embedding")
        items = [i for i in items if i.meta.get("image") == info["item"]] or items
        if not items:
            return False
        _, raw = await asyncio.to_thread(self.evidence.get, session.id, items[-1].id)
        st.reference = self.embedding_of(raw)
        await self._event(
            session.id,
            "reference_in_use",
            item=info["item"],
            sha256=info["sha256"],
            source=info["source"],
            restored=True,
        )
        return True

    def _require_consent(self, session: Session) -> None:
        if not session.face_consent:
            raise InvalidState(
                "the customer has not consented to face verification: verify "
                "them manually and record why",
                code="face_consent_required",
            )

    # -- reference ---------------------------------------------------------------------

    @staticmethod
    async def screen(data: bytes) -> ImageInfo:
        """The header checks of an uploaded image (type, size, pixels), made here before a face
        worker sees it: raises :class:`identity.IdentityError` (``image_too_large``...)."""
        return await asyncio.to_thread(inspect_image, data)

    async def upload_reference(
        self, session: Session, data: bytes, content_type: str = ""
    ) -> dict[str, Any]:
        """The customer's ID photo (raises :class:`identity.IdentityError` for a bad image).

        It is kept as the type its header says (the uploader's ``content_type`` is not believed)."""
        self._require_consent(session)
        if session.state not in ("queued", "offered", "active"):
            raise InvalidState("this session has ended")
        info = await self.screen(data)
        reference = await self.worker.embed_document(data)
        return await self._set_reference(session, reference, data, info.content_type, "upload")

    async def adopt_reference(
        self, session: Session, data: bytes, content_type: str, source: str = "appointment"
    ) -> dict[str, Any]:
        """An ID photo someone else supplied for this customer (the bank's appointment)."""
        self._require_consent(session)
        reference = await self.worker.embed_document(data)
        return await self._set_reference(session, reference, data, content_type, source)

    async def check_reference(self, data: bytes) -> dict[str, Any]:
        """Whether ``data`` would make a usable reference (raises :class:`identity.IdentityError`);
        ``content_type`` is the type its header says."""
        info = await self.screen(data)
        reference = await self.worker.embed_document(data)
        return {
            "strategy": reference.strategy,
            "box": reference.box.as_dict(),
            "content_type": info.content_type,
        }

    async def capture_reference(self, session: Session, by: str) -> None:
        """Agent: the reference is the ID card the customer holds up to the camera now."""
        self._require_consent(session)
        st = self.state(session.id)
        frame = await self._frame(st, "customer", full=True)
        await self._busy(
            session, st, "capturing_reference", self._capture_reference(session, st, frame, by)
        )

    async def _capture_reference(
        self, session: Session, st: SessionIdentity, frame: Frame, by: str
    ) -> None:
        reference = await self.worker.reference_from_live(frame.rgb)
        jpeg = await asyncio.to_thread(_jpeg, frame.rgb)
        await self._set_reference(session, reference, jpeg, "image/jpeg", "agent_capture", by=by)

    async def _set_reference(
        self,
        session: Session,
        reference: Reference,
        image: bytes,
        content_type: str,
        source: str,
        by: str | None = None,
    ) -> dict[str, Any]:
        st = self.state(session.id)
        meta = {"source": source, "strategy": reference.strategy, "box": reference.box.as_dict()}
        image_item = await self._put(session.id, "reference_image", image, content_type, meta)
        await self._put(
            session.id,
            "reference_embedding",
            reference.embedding_bytes(),
            "application/octet-stream",
            {"model": reference.model, "image": image_item.id},
        )
        st.reference = reference.embedding
        st.live_embedding = None
        st.verification = None
        st.reference_info = {
            "source": source,
            "item": image_item.id,
            "at": image_item.created_at,
            "strategy": reference.strategy,
            "sha256": image_item.sha256,
        }
        await self._event(
            session.id,
            "reference_added",
            source=source,
            item=image_item.id,
            sha256=image_item.sha256,
            strategy=reference.strategy,
            by=by,
        )
        self._update_presence_reference(st, session)
        self._panel(session)
        if (
            session.state == "active"
            and "customer" in st.feeds
            and source in ("upload", "appointment")
        ):
            self._auto_verify(session, st)
        return {
            "source": source,
            "strategy": reference.strategy,
            "created_at": image_item.created_at,
        }

    # -- verification --------------------------------------------------------------------

    async def verify(self, session: Session) -> None:
        """Agent: compare the customer's live face with the reference."""
        self._require_consent(session)
        st = self.state(session.id)
        if st.reference is None:
            raise InvalidState(
                "no reference photo yet: ask the customer to upload their ID photo "
                "or capture the ID card from the video",
                code="no_reference",
            )
        await self._frame(st, "customer")
        await self._busy(session, st, "verifying", self._verify(session, st, automatic=False))

    async def _verify(self, session: Session, st: SessionIdentity, *, automatic: bool) -> None:
        """Take several usable frames at different moments, then one verdict on their mean."""
        feed = st.feeds.get("customer")
        reference = st.reference
        if feed is None or reference is None:
            return
        loop = asyncio.get_running_loop()
        if feed.count == 0:
            # the call has just started: media takes a moment to connect
            await feed.next(0, timeout=MEDIA_START_TIMEOUT_S)
        deadline = loop.time() + VERIFY_TIMEOUT_S
        usable: list[tuple[Any, Frame]] = []
        last_problem = None
        seen = feed.count - 1
        while loop.time() < deadline and len(usable) < FRAMES_PER_DECISION:
            if usable:
                # frames apart in time: one blink or half turn spoils one of them, not all
                await asyncio.sleep(max(0.0, usable[-1][1].t + VERIFY_SPACING_S - loop.time()))
            frame = await feed.next(seen, timeout=max(0.0, deadline - loop.time()))
            if frame is None:
                break
            seen = frame.index
            result = await self.worker.verify(
                reference, frame.rgb, frame.t, threshold=self.thresholds.accept
            )
            if result.match is None or result.analysis.embedding is None:
                if last_problem is None or last_problem.reason != result.reason:
                    self._tell_customer(session, False, result.reason)
                last_problem = result
                continue
            usable.append((result, frame))
        if st.reference is not reference:
            return  # a new reference arrived meanwhile: its own verification follows
        decision = decide(
            reference,
            [r.analysis.embedding for r, _ in usable],
            thresholds=self.thresholds,
            min_frames=min(MIN_FRAMES, FRAMES_PER_DECISION),
            unusable_reason=last_problem.reason if last_problem is not None else "no_video",
        )
        common: dict[str, Any] = {
            "verdict": decision.verdict,
            "verified": decision.verified,
            "reason": decision.reason,
            "message": text(decision.reason).en,
            "message_zh": text(decision.reason).zh,
            "at": time.time(),
            "automatic": automatic,
            "frames": len(usable),
            "distances": [round(d, 4) for d in decision.distances],
            "threshold": self.thresholds.accept,
            "reject_threshold": self.thresholds.reject,
        }
        if decision.distance is None:
            st.verification = common
            await self._event(
                session.id,
                "identity_inconclusive",
                reason=decision.reason,
                automatic=automatic,
                frames=len(usable),
            )
            self._panel(session)
            return
        # the closest frame is the verification's snapshot; a verdict other than a match keeps
        # every frame it was drawn from, so an auditor sees what the machine saw
        ordered = sorted(zip(decision.distances, usable, strict=True), key=lambda x: x[0])
        kept = ordered[:1] if decision.verified else ordered
        snaps = []
        for d, (_, frame) in kept:
            jpeg = await asyncio.to_thread(_jpeg, frame.rgb)
            snaps.append(
                await self._put(
                    session.id,
                    "snapshot",
                    jpeg,
                    "image/jpeg",
                    {"purpose": "verification", "distance": round(d, 4)},
                )
            )
        snap = snaps[0]
        if decision.verified:
            st.live_embedding = aggregate([r.analysis.embedding for r, _ in usable])
            await self._put(
                session.id,
                "live_embedding",
                embedding_to_bytes(st.live_embedding),
                "application/octet-stream",
                {"snapshot": snap.id},
            )
        distance = round(decision.distance, 4)
        st.verification = {
            **common,
            "distance": distance,
            "score": score(decision.distance, self.thresholds.accept),
            "snapshot": snap.id,
            "snapshots": [x.id for x in snaps],
        }
        for x in snaps:
            st.snapshots.append({"item": x.id, "at": x.created_at, "purpose": "verification"})
        kind = {
            "match": "identity_verified",
            "no_match": "identity_rejected",
            "inconclusive": "identity_inconclusive",
        }[decision.verdict]
        await self._event(
            session.id,
            kind,
            reason=decision.reason,
            distance=distance,
            distances=st.verification["distances"],
            threshold=self.thresholds.accept,
            reject_threshold=self.thresholds.reject,
            score=st.verification["score"],
            frames=len(usable),
            snapshot=snap.id,
            snapshot_sha256=snap.sha256,
            snapshots=[x.id for x in snaps],
            snapshots_sha256=[x.sha256 for x in snaps],
            reference=(st.reference_info or {}).get("item"),
            automatic=automatic,
        )
        self._tell_customer(session, decision.verified, decision.reason, decision.verdict)
        self._update_presence_reference(st, session)
        self._panel(session)

    def _tell_customer(
        self, session: Session, verified: bool, reason: str, verdict: Verdict = "inconclusive"
    ) -> None:
        """The customer hears the verdict or what to fix, never the scores."""
        self.broker.send(
            session,
            "customer",
            m.VerificationOutcome(
                verified=verified,
                verdict=verdict,
                reason=reason,
                message=text(reason).en,
                message_zh=text(reason).zh,
            ),
        )

    def _auto_verify(self, session: Session, st: SessionIdentity) -> None:
        """Verify on our own (call start, new upload): as one busy operation, skipped if one runs."""

        async def start() -> None:
            with contextlib.suppress(InvalidState):  # the agent started something meanwhile
                await self._busy(
                    session, st, "verifying", self._verify(session, st, automatic=True)
                )

        if st.busy is None:
            self._spawn(st, start(), "auto-verify")

    async def manual_verification(
        self, session: Session, verified: bool, reason: str, by: str
    ) -> None:
        st = self.state(session.id)
        st.manual = {"verified": verified, "reason": reason, "by": by, "at": time.time()}
        await self._event(
            session.id,
            "identity_manual",
            verified=verified,
            reason=reason,
            by=by,
            face_consent=session.face_consent,
        )
        self._panel(session)

    # -- liveness ----------------------------------------------------------------------

    async def start_liveness(self, session: Session) -> None:
        self._require_consent(session)
        st = self.state(session.id)
        await self._frame(st, "customer")
        steps = [s.strip() for s in self.config.liveness_steps.split(",") if s.strip()]
        challenge = Challenge.issue(steps, step_time_limit_s=self.config.liveness_step_seconds)
        await self._busy(session, st, "liveness", self._liveness(session, st, challenge))

    async def _liveness(self, session: Session, st: SessionIdentity, challenge: Challenge) -> None:
        feed = st.feeds["customer"]
        reference = st.live_embedding if st.live_embedding is not None else st.reference
        judge = LivenessJudge(challenge, reference=reference)
        info = challenge.as_dict()
        msg = m.LivenessChallenge(
            steps=info["steps"],
            instructions=info["instructions"],
            step_time_limit_s=challenge.step_time_limit_s,
        )
        self.broker.send(session, "customer", msg)
        st.liveness = {
            "state": "running",
            "steps": info["steps"],
            "current": info["steps"][0],
            "completed": [],
            "started_at": time.time(),
        }
        await self._event(session.id, "liveness_started", steps=info["steps"])
        self._panel(session)
        loop = asyncio.get_running_loop()
        limit = loop.time() + len(challenge.steps) * challenge.step_time_limit_s + 3.0
        last_box: FaceBox | None = None
        last_full: float | None = None
        seen = feed.count
        progress = None
        while loop.time() < limit:
            frame = await feed.next(seen, timeout=1.0)
            if frame is None:
                if feed.count == seen and loop.time() >= limit - 1.0:
                    break
                continue
            seen = frame.index
            full = last_full is None or frame.t - last_full >= FULL_SCAN_EVERY_S or last_box is None
            try:
                a = await self.worker.analyze_live(
                    frame.rgb,
                    frame.t,
                    frame.index,
                    last=last_box,
                    full_scan=full,
                    request=judge.request(),
                )
            except WorkerBusy:
                continue
            if full:
                last_full = frame.t
            last_box = a.faces[0] if a.faces else None
            new = judge.feed(a)
            if progress is None or (new.step, new.completed) != (progress.step, progress.completed):
                current = None if new.step is None else str(new.step)
                completed = [str(s) for s in new.completed]
                self.broker.send(
                    session, "customer", m.LivenessProgress(current=current, completed=completed)
                )
                st.liveness.update(current=current, completed=completed)
                self._panel(session)
            progress = new
            if new.done:
                break
        result = judge.result()
        evidence = result.as_dict()["evidence"]
        st.liveness = {
            "state": "passed" if result.passed else "failed",
            "steps": info["steps"],
            "reason": result.reason,
            "message": result.message,
            "message_zh": result.message_zh,
            "completed": [str(e.step) for e in result.steps if e.passed],
            "at": time.time(),
        }
        await self._event(
            session.id,
            "liveness_passed" if result.passed else "liveness_failed",
            steps=info["steps"],
            reason=result.reason,
            frames=result.frames,
            duration_s=round(result.duration_s, 2),
            evidence=_relative(evidence),
        )
        self.broker.send(
            session,
            "customer",
            m.LivenessOutcome(
                passed=result.passed,
                reason=result.reason,
                message=result.message,
                message_zh=result.message_zh,
            ),
        )
        self._panel(session)

    # -- snapshots --------------------------------------------------------------------------

    async def snapshot(self, session: Session, by: str) -> None:
        st = self.state(session.id)
        frame = await self._frame(st, "customer", full=True)
        jpeg = await asyncio.to_thread(_jpeg, frame.rgb)
        item = await self._put(
            session.id, "snapshot", jpeg, "image/jpeg", {"purpose": "agent", "by": by}
        )
        st.snapshots.append({"item": item.id, "at": item.created_at, "purpose": "agent"})
        await self._event(session.id, "snapshot_captured", item=item.id, sha256=item.sha256, by=by)
        self._panel(session)

    async def capture_jpeg(self, session: Session) -> bytes | None:
        """The customer's current frame as JPEG (for a sealed signature), or None without video."""
        st = self._states.get(session.id)
        frame = await _current(st.feeds.get("customer") if st is not None else None, True)
        if frame is None:
            return None
        return await asyncio.to_thread(_jpeg, frame.rgb)

    async def keep(
        self, session: Session, kind: str, data: bytes, content_type: str, meta: dict[str, Any]
    ) -> EvidenceItem:
        """Store other evidence of the session (a signature receipt) encrypted beside the face data."""
        return await self._put(session.id, kind, data, content_type, meta)

    # -- presence -----------------------------------------------------------------------------

    def _update_presence_reference(self, st: SessionIdentity, session: Session) -> None:
        monitor = st.presence.get("customer")
        if monitor is None:
            return
        # only a face verified live is "the customer": a rejected ID photo must not make the
        # customer's own face an alarm
        monitor.reference = st.live_embedding if session.face_consent else None

    async def _presence_loop(self, session: Session, st: SessionIdentity) -> None:
        interval = self.config.presence_interval_s
        seen = {party: -1 for party in PARTIES}
        loop = asyncio.get_running_loop()
        due = loop.time()
        rounds = 0
        while True:
            # a fixed cadence (start to start), so the checks take nothing off the rate; a round
            # that overran starts the next one at once rather than queueing up missed ones
            due = max(due + interval, loop.time())
            await asyncio.sleep(due - loop.time())
            # the agent is checked less often: only for missing and several faces
            parties = tuple(
                party
                for party, every in zip(
                    PARTIES, (CUSTOMER_PRESENCE_EVERY, AGENT_PRESENCE_EVERY), strict=True
                )
                if rounds % every == 0
            )
            rounds += 1
            results = await asyncio.gather(
                *(self._presence_check(session, st, party, seen) for party in parties)
            )
            if any(results):
                self._panel(session)

    async def _presence_check(
        self, session: Session, st: SessionIdentity, party: str, seen: dict[str, int]
    ) -> bool:
        feed, monitor = st.feeds.get(party), st.presence.get(party)
        if feed is None or monitor is None:
            return False
        if st.busy == "liveness":
            # the challenge needs every frame the worker can take (it watches for a second face
            # and a changed face itself): presence waits
            return False
        # the customer's video is decoded throughout (verification and liveness read it too);
        # the agent's only for the frame a check takes
        sampled = party == "agent" or CUSTOMER_PRESENCE_EVERY > 1
        frame = await feed.sample() if sampled else feed.latest()
        if frame is None or frame.index == seen[party]:
            return False  # no video yet, or frozen: the media watchdog's business, not ours
        seen[party] = frame.index
        try:
            a = await self.worker.check_presence(
                frame.rgb, frame.t, frame.index, request=monitor.request(frame.t)
            )
        except WorkerBusy:
            return False
        before = monitor.status()
        for event in monitor.update(a):
            await self._event(session.id, event.kind, **_presence_detail(event.as_dict()))
        return monitor.status() != before

    # -- helpers --------------------------------------------------------------------------

    async def _frame(self, st: SessionIdentity, party: str, full: bool = False) -> Frame:
        """The party's current picture: the feed decodes from now on, and a frame older than
        :data:`FRESH_FRAME_S` (the last presence sample) is replaced by the next one."""
        frame = await _current(st.feeds.get(party), full)
        if frame is None:
            raise InvalidState(f"no video from the {party} yet", code="no_video")
        return frame

    async def _busy(
        self, session: Session, st: SessionIdentity, what: str, coro: Awaitable[None]
    ) -> None:
        """Run one identity operation at a time per session, in the background."""
        if st.busy is not None:
            if hasattr(coro, "close"):
                coro.close()
            raise InvalidState(f"busy: {st.busy.replace('_', ' ')}", code="identity_busy")
        st.busy = what
        st.error = None
        self._panel(session)

        async def run() -> None:
            try:
                await coro
            except IdentityError as exc:
                st.error = {"code": exc.code, "message": exc.message, "message_zh": exc.message_zh}
                await self._event(session.id, "identity_error", operation=what, code=exc.code)
            except WorkerClosed:
                st.error = {
                    "code": "identity_unavailable",
                    "message": "face checks are not available",
                    "message_zh": "人脸核验暂不可用",
                }
            finally:
                st.busy = None
                self._panel(session)

        self._spawn(st, run(), what)

    def panel(self, session: Session) -> dict[str, Any]:
        st = self.state(session.id)
        return {
            "face_consent": session.face_consent,
            "reference": st.reference_info,
            "verification": st.verification,
            "liveness": st.liveness,
            "manual": st.manual,
            "presence": {party: mon.status() for party, mon in st.presence.items()},
            "snapshots": st.snapshots[-12:],
            "busy": st.busy,
            "error": st.error,
            "threshold": self.thresholds.accept,
            "reject_threshold": self.thresholds.reject,
        }

    async def party_back(self, session: Session, role: str) -> None:
        """The agent reconnected to the call: their page gets the identity panel again."""
        if role == "agent" and session.id in self._states:
            self._states[session.id].last_panel = None
            self._panel(session)

    def _panel(self, session: Session) -> None:
        """Send the agent's panel if it changed."""
        if session.agent is None:
            return
        st = self.state(session.id)
        data = self.panel(session)
        if data == st.last_panel:
            return
        st.last_panel = data
        self.broker.send(session, "agent", m.IdentityPanel(session_id=session.id, state=data))
        for listener in self.listeners:
            listener(session)

    def embedding_of(self, raw: bytes) -> np.ndarray:
        return embedding_from_bytes(raw)


async def _current(feed: FrameFeed | None, full: bool) -> Frame | None:
    if feed is None:
        return None
    frame = feed.latest(full=full)
    if frame is None or asyncio.get_running_loop().time() - frame.t > FRESH_FRAME_S:
        await feed.next(feed.count, timeout=SAMPLE_TIMEOUT_S)
        frame = feed.latest(full=full)
    return frame


def _jpeg(rgb: np.ndarray, quality: int = 90) -> bytes:
    ok, buf = cv2.imencode(
        ".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality]
    )
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    return buf.tobytes()


def _presence_detail(event: dict[str, Any]) -> dict[str, Any]:
    """A presence event for the timeline: the loop clock's absolute times become durations."""
    detail = dict(event["detail"])
    last_seen = detail.pop("last_seen_t", None)
    if event["kind"] == "face_missing" and last_seen is not None:
        detail["missing_s"] = round(event["t"] - last_seen, 2)
    return {"subject": event["subject"], **detail}


def _relative(evidence: dict[str, Any]) -> dict[str, Any]:
    """Liveness evidence with times in seconds since the challenge started (not the loop's clock)."""
    steps = evidence.get("steps") or []
    base = steps[0]["started_t"] if steps and steps[0].get("started_t") is not None else 0.0

    def rel(v: float | None) -> float | None:
        return None if v is None else round(v - base, 3)

    out = dict(evidence)
    out["steps"] = [
        {
            **step,
            "started_t": rel(step.get("started_t")),
            "deadline_t": rel(step.get("deadline_t")),
            "completed_t": rel(step.get("completed_t")),
            "times": [rel(t) for t in step.get("times", [])],
        }
        for step in steps
    ]
    return out


def _log_failure(task: asyncio.Task[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        logger.error("identity task %s failed", task.get_name(), exc_info=task.exception())

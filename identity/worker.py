"""All face work off the event loop: a process pool with the models loaded once per worker.

:class:`FaceWorker` wraps a :class:`concurrent.futures.ProcessPoolExecutor`
of ``max(1, cores - 1)`` processes (one core stays free for the event loop
and media forwarding). Each worker process loads the dlib models in its
initializer, limits OpenCV to one thread and lowers its own priority
(``nice``), so a burst of face work slows face work, not the calls.

The coroutines send numpy arrays (pickled by the executor's feeder thread,
not on the loop) and await the result::

    async with FaceWorker() as faces:
        reference = await faces.embed_document(upload_bytes)
        verdict = await faces.verify(reference.embedding, rgb)
        analysis = await faces.check_presence(rgb, t, request=monitor.request(t))

Frame analyses are droppable: when more than ``max_pending`` already wait,
:meth:`check_presence`, :meth:`analyze_frame` and :meth:`analyze_live` raise
:class:`WorkerBusy` at once (skip this check) instead of queueing without
bound. Verification, document embedding and liveness are always queued.

Workers start with the ``spawn`` method: forking a process that runs an
asyncio loop, aiortc threads and OpenSSL is unsafe.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import multiprocessing
import os
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import numpy as np

from .analysis import Embed, FrameAnalysis, analyze_frame
from .exceptions import WorkerBusy, WorkerClosed
from .face_detect import Detector, FaceBox
from .face_match import DEFAULT_THRESHOLD, REFERENCE_JITTERS, Reference, reference_from_image
from .live import analyze_tracked, reference_from_live_frame
from .liveness import (
    DEFAULT_LIVENESS,
    AnalysisRequest,
    Challenge,
    LivenessResult,
    LivenessThresholds,
    judge_frames,
)
from .presence import PresenceRequest, check_presence
from .verification import Verification, verify_frame

logger = logging.getLogger(__name__)
T = TypeVar("T")


def default_workers() -> int:
    """Cores available to this process, minus one for the event loop (at least one)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return max(1, cores - 1)


class FaceWorker:
    """Face detection, embedding, verification and liveness in worker processes."""

    def __init__(
        self,
        max_workers: int | None = None,
        *,
        max_pending: int | None = None,
        nice: int = 5,
        start_method: str = "spawn",
    ) -> None:
        self.max_workers = max_workers or default_workers()
        #: frame analyses allowed to wait before :meth:`analyze_frame` refuses
        self.max_pending = max_pending if max_pending is not None else 2 * self.max_workers
        self._pool: concurrent.futures.ProcessPoolExecutor | None = (
            concurrent.futures.ProcessPoolExecutor(
                max_workers=self.max_workers,
                mp_context=multiprocessing.get_context(start_method),
                initializer=_init_worker,
                # this process's id, taken here: a worker that starts after it died still knows
                initargs=(nice, os.getpid()),
            )
        )
        self._pending = 0
        self._closing: asyncio.Future[None] | None = None

    async def __aenter__(self) -> FaceWorker:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    @property
    def closed(self) -> bool:
        return self._pool is None

    @property
    def pending(self) -> int:
        """Frame analyses submitted and not finished."""
        return self._pending

    async def start(self) -> None:
        """Start every worker process and load its models now rather than on the first frame."""
        await asyncio.gather(*(self._run(_ping) for _ in range(self.max_workers)))

    async def analyze_frame(
        self,
        rgb: np.ndarray,
        t: float = 0.0,
        index: int = 0,
        *,
        embed: Embed = False,
        request: AnalysisRequest | None = None,
        detector: Detector = "hog",
    ) -> FrameAnalysis:
        """:func:`identity.analysis.analyze_frame` in a worker (raises :class:`WorkerBusy` when saturated).

        ``request`` is a liveness judge's :meth:`~identity.liveness.LivenessJudge.request`.
        """
        if self._pending >= self.max_pending:
            raise WorkerBusy(f"{self._pending} frames already wait for the face workers")
        kwargs: dict[str, Any] = request.kwargs() if request is not None else {"embed": embed}
        kwargs["detector"] = detector
        self._pending += 1
        try:
            return await self._run(analyze_frame, rgb, t, index, **kwargs)
        finally:
            self._pending -= 1

    async def analyze_live(
        self,
        rgb: np.ndarray,
        t: float,
        index: int,
        *,
        last: FaceBox | None,
        full_scan: bool,
        request: AnalysisRequest | None = None,
        embed: Embed = False,
    ) -> FrameAnalysis:
        """:func:`identity.live.analyze_tracked` in a worker (a live call's frames, one by one)."""
        if self._pending >= self.max_pending:
            raise WorkerBusy(f"{self._pending} frames already wait for the face workers")
        kwargs: dict[str, Any] = request.kwargs() if request is not None else {"embed": embed}
        self._pending += 1
        try:
            return await self._run(
                analyze_tracked, rgb, t, index, last=last, full_scan=full_scan, **kwargs
            )
        finally:
            self._pending -= 1

    async def check_presence(
        self,
        rgb: np.ndarray,
        t: float = 0.0,
        index: int = 0,
        *,
        request: PresenceRequest | None = None,
    ) -> FrameAnalysis:
        """:func:`identity.presence.check_presence` in a worker (raises :class:`WorkerBusy` when saturated)."""
        if self._pending >= self.max_pending:
            raise WorkerBusy(f"{self._pending} frames already wait for the face workers")
        self._pending += 1
        try:
            return await self._run(check_presence, rgb, t, index, request)
        finally:
            self._pending -= 1

    async def reference_from_live(self, rgb: np.ndarray) -> Reference:
        """:func:`identity.live.reference_from_live_frame` in a worker."""
        return await self._run(reference_from_live_frame, rgb)

    async def verify(
        self,
        reference: Reference | np.ndarray,
        rgb: np.ndarray,
        t: float = 0.0,
        *,
        threshold: float = DEFAULT_THRESHOLD,
    ) -> Verification:
        """:func:`identity.verification.verify_frame` in a worker."""
        ref = reference.embedding if isinstance(reference, Reference) else np.asarray(reference)
        return await self._run(verify_frame, ref, rgb, t, threshold=threshold)

    async def embed_document(
        self, image: bytes, *, num_jitters: int = REFERENCE_JITTERS
    ) -> Reference:
        """:func:`identity.face_match.reference_from_image` on uploaded bytes, in a worker."""
        return await self._run(reference_from_image, bytes(image), num_jitters=num_jitters)

    async def liveness(
        self,
        challenge: Challenge,
        frames: Sequence[tuple[np.ndarray, float]],
        *,
        reference: np.ndarray | None = None,
        thresholds: LivenessThresholds = DEFAULT_LIVENESS,
    ) -> LivenessResult:
        """Judge frames collected during a challenge in one worker (:func:`identity.liveness.judge_frames`).

        To give the customer live feedback instead, run a
        :class:`~identity.liveness.LivenessJudge` on the loop (it is cheap) and
        send each frame to :meth:`analyze_frame` with ``request=judge.request()``.
        """
        return await self._run(
            judge_frames, challenge, list(frames), reference=reference, thresholds=thresholds
        )

    async def _run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        pool = self._pool
        if pool is None:
            raise WorkerClosed("the face worker pool is closed")
        try:
            future = pool.submit(fn, *args, **kwargs)
        except RuntimeError as exc:  # shut down between the check and the submit
            raise WorkerClosed("the face worker pool is closed") from exc
        except concurrent.futures.BrokenExecutor as exc:
            raise WorkerClosed(f"the face worker pool broke: {exc}") from exc
        try:
            return await asyncio.wrap_future(future)
        except concurrent.futures.BrokenExecutor as exc:
            raise WorkerClosed(f"a face worker process died: {exc}") from exc

    async def aclose(self) -> None:
        """Stop the workers (queued work is cancelled, running work finishes). Safe to call twice."""
        if self._closing is not None:
            await asyncio.shield(self._closing)
            return
        pool, self._pool = self._pool, None
        if pool is None:
            return
        self._closing = asyncio.get_running_loop().create_future()
        try:
            await asyncio.to_thread(pool.shutdown, wait=True, cancel_futures=True)
        finally:
            self._closing.set_result(None)


#: seconds between two checks that a worker's server process is still there
ORPHAN_CHECK_S = 1.0


def _exit_when_orphaned(parent: int) -> None:
    """A worker whose server process died (kill -9 gives it no chance to close the pool) is
    re-parented; it exits then instead of living on with its models in memory."""
    while True:
        time.sleep(ORPHAN_CHECK_S)
        if os.getppid() != parent:
            os._exit(0)


def _init_worker(nice: int, parent: int) -> None:
    if os.getppid() != parent:
        os._exit(0)  # the server died while this worker was starting
    threading.Thread(
        target=_exit_when_orphaned, args=(parent,), name="orphan-watch", daemon=True
    ).start()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="pkg_resources is deprecated")
        import cv2

        from . import models

        cv2.setNumThreads(1)
        if nice:
            try:
                os.nice(nice)
            except OSError:
                pass
        models.get()
    # warm the detectors' and encoder's code paths
    from . import blazeface
    from .face_detect import detect_faces

    detect_faces(np.zeros((120, 160, 3), np.uint8))
    blazeface.warm()


def _ping() -> int:
    return os.getpid()

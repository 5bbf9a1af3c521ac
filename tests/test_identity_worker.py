"""FaceWorker: the same checks in worker processes, the event loop stays responsive, clean shutdown."""

from __future__ import annotations

import asyncio
import io
import time

import numpy as np
import pytest
from PIL import Image

from identity import (
    Challenge,
    FaceWorker,
    ImageError,
    NoFace,
    WorkerBusy,
    WorkerClosed,
    compare,
)
from identity.video import read_frames
from identity.worker import default_workers

from .helpers import shared_data


async def test_face_worker_verifies_embeds_and_judges_off_the_loop():
    frames = [
        (f.rgb, f.t) for f in read_frames(shared_data("videos/d13.mp4"), indices=set(range(60)))
    ]
    rgb = frames[20][0]
    passport = shared_data("id_specimens/passporteye/passport-td3.jpg").read_bytes()
    blank = io.BytesIO()
    Image.new("RGB", (200, 200), (200, 200, 200)).save(blank, "PNG")

    async with FaceWorker(max_workers=1, max_pending=2) as faces:
        analysis = await faces.analyze_frame(rgb, 0.7, 21, embed=True)
        assert analysis.face_count == 1 and analysis.embedding is not None and analysis.t == 0.7
        verdict = await faces.verify(analysis.embedding, frames[50][0], 1.7)
        assert verdict.verified and verdict.reason == "match"

        reference = await faces.embed_document(passport)
        assert reference.strategy == "hog" and not compare(reference, analysis.embedding).match
        with pytest.raises(NoFace):
            await faces.embed_document(blank.getvalue())
        with pytest.raises(ImageError, match="not an image"):
            await faces.embed_document(b"<html>not an image</html>")

        # a whole liveness judgement in the pool while a 5 ms ticker runs on the loop
        lags: list[float] = []
        done = asyncio.Event()

        async def ticker() -> None:
            while not done.is_set():
                start = time.perf_counter()
                await asyncio.sleep(0.005)
                lags.append(time.perf_counter() - start - 0.005)

        tick = asyncio.create_task(ticker())
        try:
            result = await faces.liveness(
                Challenge.fixed("blink"), frames, reference=analysis.embedding
            )
        finally:
            done.set()
            await tick
        assert result.passed and result.reference_distance < 0.3
        # the loop kept running while the pool judged (a count, not a timing: the machine is shared;
        # bench/identity_calls.py measures the lag)
        assert len(lags) > 20

        # presence checks are dropped, not queued without bound, when the pool is saturated
        outcomes = await asyncio.gather(
            *(faces.analyze_frame(rgb, embed=True) for _ in range(6)), return_exceptions=True
        )
        busy = [o for o in outcomes if isinstance(o, WorkerBusy)]
        assert len(busy) == 4 and faces.pending == 0
        assert all(o.face_count == 1 for o in outcomes if not isinstance(o, Exception))

    assert faces.closed
    await faces.aclose()  # idempotent
    with pytest.raises(WorkerClosed):
        await faces.analyze_frame(np.zeros((480, 640, 3), np.uint8))


async def test_pool_is_sized_to_the_machine_and_closes_concurrently():
    assert default_workers() >= 1
    faces = FaceWorker()
    assert faces.max_workers == default_workers()
    await asyncio.gather(faces.aclose(), faces.aclose())
    assert faces.closed


async def test_presence_checks_in_the_worker_embed_only_when_asked():
    from identity import PresenceMonitor
    from identity.presence import PresenceRequest

    rgb = next(iter(read_frames(shared_data("videos/d13.mp4"), indices={20}))).rgb
    async with FaceWorker(max_workers=1, max_pending=2) as faces:
        plain = await faces.check_presence(rgb, 0.5, 3)
        assert (plain.face_count, plain.embedding, plain.t) == (1, None, 0.5)
        asked = await faces.check_presence(rgb, 1.0, 4, request=PresenceRequest("yes"))
        assert asked.embedding is not None
        monitor = PresenceMonitor(asked.embedding)
        monitor.update(asked)
        # the same face in the same place half a second later continues the track: not embedded
        again = await faces.check_presence(rgb, 1.5, 5, request=monitor.request(1.5))
        assert again.face_count == 1 and again.embedding is None
        outcomes = await asyncio.gather(
            *(faces.check_presence(rgb) for _ in range(5)), return_exceptions=True
        )
        assert sum(isinstance(o, WorkerBusy) for o in outcomes) == 3

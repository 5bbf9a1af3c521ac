"""How fast face checks are, and whether they disturb the event loop.

    python bench/identity_speed.py                    # both parts
    python bench/identity_speed.py --calls 2 4 8 --seconds 20 --json

1. **Per frame, one core**: a real 640x480 frame (the Obama portrait from the
   shared data, cropped), this process pinned to one CPU with OpenCV on one
   thread: HOG detection, 68 landmarks, the 128-d embedding, the quality gates,
   and the whole :func:`identity.analysis.analyze_frame` with and without the
   embedding. Target: <= 150 ms per frame.
2. **Event-loop lag**: an asyncio loop runs a 5 ms ticker (lag = how late
   each tick fires) while N simulated calls each send a frame to
   :class:`identity.FaceWorker` twice a second (random phase), with the
   presence policy (embedding every 2 s) and with an embedding at every
   check. Prints the loop lag p50/p99/max, the check latency
   (submit -> result) and how many checks were skipped because the pool was
   saturated (:class:`identity.WorkerBusy`). Target: loop lag p99 < 20 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import cv2  # noqa: E402
import numpy as np  # noqa: E402
from shared_data import find_data  # noqa: E402  (bench/shared_data.py, beside this script)

from identity import FaceWorker, PresenceMonitor, WorkerBusy  # noqa: E402
from identity.analysis import analyze_frame  # noqa: E402
from identity.face_detect import detect_faces  # noqa: E402
from identity.face_match import embed_face  # noqa: E402
from identity.images import load_image_file  # noqa: E402
from identity.landmarks import landmarks68  # noqa: E402
from identity.quality import assess  # noqa: E402


def test_frame() -> np.ndarray:
    rgb = load_image_file(find_data() / "faces/face_recognition/examples/obama-480p.jpg")
    h, w = rgb.shape[:2]  # 853x480: crop the middle 640 columns
    x = (w - 640) // 2
    return np.ascontiguousarray(rgb[:, x : x + 640])


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def per_frame(reps: int) -> dict[str, float]:
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    cv2.setNumThreads(1)
    frame = test_frame()
    box = detect_faces(frame)[0]  # loads the models

    def timed(fn) -> float:
        fn()
        samples = []
        for _ in range(reps):
            start = time.perf_counter()
            fn()
            samples.append((time.perf_counter() - start) * 1000)
        return statistics.median(samples)

    return {
        "frame": f"{frame.shape[1]}x{frame.shape[0]}",
        "face_px": box.width,
        "detect_ms": timed(lambda: detect_faces(frame, 0)),
        "landmarks68_ms": timed(lambda: landmarks68(frame, box)),
        "embed_ms": timed(lambda: embed_face(frame, box)),
        "quality_ms": timed(lambda: assess(frame, [box])),
        "analyze_without_embedding_ms": timed(lambda: analyze_frame(frame)),
        "analyze_with_embedding_ms": timed(lambda: analyze_frame(frame, embed=True)),
    }


async def loop_lag(calls: int, seconds: float, embed_always: bool, workers: int | None) -> dict:
    frame = test_frame()
    lags: list[float] = []
    latencies: list[float] = []
    counts = {"checks": 0, "skipped": 0, "embedded": 0}
    async with FaceWorker(workers) as faces:
        reference = (await faces.analyze_frame(frame, embed=True)).embedding
        stop = time.perf_counter() + seconds

        async def ticker() -> None:
            interval = 0.005
            expected = time.perf_counter() + interval
            while time.perf_counter() < stop:
                await asyncio.sleep(max(0.0, expected - time.perf_counter()))
                now = time.perf_counter()
                lags.append((now - expected) * 1000)
                expected = max(expected + interval, now)  # no catch-up bursts

        async def call(n: int) -> None:
            monitor = PresenceMonitor(reference, subject=f"call{n}")
            await asyncio.sleep(random.random() * 0.5)
            while time.perf_counter() < stop:
                started = time.perf_counter()
                t = started
                embed = embed_always or monitor.wants_embedding(t)
                try:
                    analysis = await faces.analyze_frame(frame, t, embed=embed)
                except WorkerBusy:
                    counts["skipped"] += 1
                else:
                    latencies.append((time.perf_counter() - started) * 1000)
                    counts["checks"] += 1
                    counts["embedded"] += analysis.embedding is not None
                    monitor.update(analysis)
                await asyncio.sleep(max(0.0, 0.5 - (time.perf_counter() - started)))

        async with asyncio.TaskGroup() as group:
            group.create_task(ticker())
            for n in range(calls):
                group.create_task(call(n))
        pool = faces.max_workers
    wanted = calls * 2 * seconds
    return {
        "calls": calls,
        "workers": pool,
        "embedding": "every check" if embed_always else "every 2 s (presence policy)",
        "loop_lag_p50_ms": round(pct(lags, 50), 2),
        "loop_lag_p99_ms": round(pct(lags, 99), 2),
        "loop_lag_max_ms": round(max(lags), 2),
        "check_latency_p50_ms": round(pct(latencies, 50), 1),
        "check_latency_p99_ms": round(pct(latencies, 99), 1),
        "checks_done": counts["checks"],
        "checks_wanted": int(wanted),
        "checks_skipped_busy": counts["skipped"],
        "embeddings": counts["embedded"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--reps", type=int, default=20, help="repetitions per timing")
    parser.add_argument("--workers", type=int, default=None, help="pool size (default cores - 1)")
    parser.add_argument("--skip-frame", action="store_true", help="only the loop-lag part")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)

    out: dict = {"cores": os.cpu_count()}
    if not args.skip_frame:
        # time the frame in a child so pinning this process to one core does not limit the pool
        import multiprocessing

        with multiprocessing.get_context("spawn").Pool(1) as p:
            out["per_frame"] = p.apply(per_frame, (args.reps,))
        if not args.json:
            f = out["per_frame"]
            print(
                f"per {f['frame']} frame on one core (face {f['face_px']} px), median of {args.reps}:"
            )
            for key, value in f.items():
                if key.endswith("_ms"):
                    print(f"  {key[:-3]:<30} {value:7.1f} ms")
    out["loop"] = []
    for embed_always in (False, True):
        for calls in args.calls:
            row = asyncio.run(loop_lag(calls, args.seconds, embed_always, args.workers))
            out["loop"].append(row)
            if not args.json:
                print(
                    f"{row['calls']:2d} calls x 2 checks/s, {row['workers']} worker(s), embedding "
                    f"{row['embedding']}: loop lag p50 {row['loop_lag_p50_ms']:.2f} ms, "
                    f"p99 {row['loop_lag_p99_ms']:.2f} ms, max {row['loop_lag_max_ms']:.1f} ms; "
                    f"check latency p50 {row['check_latency_p50_ms']:.0f} ms, "
                    f"p99 {row['check_latency_p99_ms']:.0f} ms; {row['checks_done']}/"
                    f"{row['checks_wanted']} checks, {row['checks_skipped_busy']} skipped (busy)"
                )
    if args.json:
        print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Face detectors for presence checks: speed and recall on the shared clips.

    python bench/identity_detectors.py
    python bench/identity_detectors.py --step 2 --json

Every ``--step``-th frame of each clip in ``videos/`` of the shared data
(read at 640 px on the longer side, the size live frames are analysed at) goes
through each detector:

* ``hog640`` -- dlib's HOG, the live detector of verification and liveness
  (:func:`identity.face_detect.detect_faces`, no upsampling);
* ``hog320`` -- HOG on the frame scaled to 320 px (boxes scaled back);
* ``blaze640`` / ``blaze320`` -- MediaPipe's BlazeFace short-range model
  (:mod:`identity.blazeface`) given the 640 px or the 320 px frame;
* ``blazefull640`` -- BlazeFace's full-range model (faces up to ~5 m).

OpenCV's Haar and LBP cascades would be the other candidates whose model ships
in a package, but ``opencv-python-headless`` 5.x no longer ships them
(``cv2.data`` is empty): the table says so rather than measuring them.

Per detector and clip: **found** -- the fraction of frames with at least one
face (every frame of d13, d0, d12, d18 and the first 6 s of the Hamilton clip
show one person facing the camera more or less: a miss is a miss); **extra**
-- frames with two or more faces in the single-person clips (false
detections); for ``short_hamilton_clip`` also **multi** -- the fraction of its
last 3 s (where 2-4 people are in the frame) with two or more faces found.
**ms** is CPU time per frame (``time.process_time``, every thread of this
process, the resize to 320 px included), so a busy machine does not inflate
it; **IoU** is the median overlap of the detector's largest box with HOG's
where both found exactly one face.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.shared_data import find_data  # noqa: E402
from identity.blazeface import detect_blazeface  # noqa: E402
from identity.face_detect import FaceBox, detect_faces  # noqa: E402
from identity.video import read_frames  # noqa: E402

CLIPS = ("d13", "d0", "d12", "d18", "short_hamilton_clip")
#: the Hamilton clip shows several people from here on (seconds)
HAMILTON_MULTI_FROM_S = 6.2
#: and one person before this
HAMILTON_SINGLE_UNTIL_S = 6.0


def _half(rgb: np.ndarray) -> np.ndarray:
    h, w = rgb.shape[:2]
    return cv2.resize(rgb, (w // 2, h // 2), interpolation=cv2.INTER_AREA)


def _hog320(rgb: np.ndarray) -> list[FaceBox]:
    return [b.scaled(2) for b in detect_faces(_half(rgb), 0)]


def _blaze320(rgb: np.ndarray) -> list[FaceBox]:
    return [b.scaled(2) for b in detect_blazeface(_half(rgb))]


DETECTORS: dict[str, Callable[[np.ndarray], list[FaceBox]]] = {
    "hog640": lambda rgb: detect_faces(rgb, 0),
    "hog320": _hog320,
    "blaze640": detect_blazeface,
    "blaze320": _blaze320,
    "blazefull640": lambda rgb: detect_blazeface(rgb, full_range=True),
}


def measure(data: Path, step: int) -> dict[str, Any]:
    for fn in DETECTORS.values():  # load every model before timing
        fn(np.zeros((480, 640, 3), np.uint8))
    out: dict[str, Any] = {}
    for clip in CLIPS:
        frames = [
            (f.t, f.rgb)
            for f in read_frames(data / "videos" / f"{clip}.mp4")
            if f.index % step == 0
        ]
        found: dict[str, list[list[FaceBox]]] = {}
        cpu: dict[str, float] = {}
        for name, fn in DETECTORS.items():
            start = time.process_time()
            found[name] = [fn(rgb) for _, rgb in frames]
            cpu[name] = (time.process_time() - start) / len(frames) * 1000
        times = [t for t, _ in frames]
        hamilton = clip == "short_hamilton_clip"
        single = [i for i, t in enumerate(times) if not hamilton or t < HAMILTON_SINGLE_UNTIL_S]
        multi = [i for i, t in enumerate(times) if hamilton and t >= HAMILTON_MULTI_FROM_S]
        rows = {}
        for name in DETECTORS:
            boxes = found[name]
            ious = [
                boxes[i][0].iou(found["hog640"][i][0])
                for i in single
                if len(boxes[i]) == 1 and len(found["hog640"][i]) == 1
            ]
            rows[name] = {
                "ms": round(cpu[name], 2),
                "found": round(sum(1 for i in single if boxes[i]) / len(single), 3),
                "extra": round(sum(1 for i in single if len(boxes[i]) > 1) / len(single), 3),
                "multi": (
                    round(sum(1 for i in multi if len(boxes[i]) > 1) / len(multi), 3)
                    if multi
                    else None
                ),
                "iou_with_hog": round(statistics.median(ious), 2) if ious else None,
            }
        size = frames[0][1].shape
        out[clip] = {"frames": len(frames), "size": f"{size[1]}x{size[0]}", "detectors": rows}
    return out


def table(result: dict[str, Any]) -> str:
    lines = [
        "| clip (frames, size) | detector | CPU ms/frame | found | extra | multi (last 3 s) | IoU with HOG |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for clip, r in result.items():
        for name, d in r["detectors"].items():
            multi = "" if d["multi"] is None else f"{100 * d['multi']:.0f} %"
            iou = (
                "" if d["iou_with_hog"] is None or name == "hog640" else f"{d['iou_with_hog']:.2f}"
            )
            lines.append(
                f"| {clip} ({r['frames']}, {r['size']}) | {name} | {d['ms']:.1f} "
                f"| {100 * d['found']:.1f} % | {100 * d['extra']:.1f} % | {multi} | {iou} |"
            )
    lines.append(
        "| (any) | OpenCV Haar / LBP cascades | not shipped by opencv-python-headless 5.x | | | | |"
    )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--step", type=int, default=1, help="every N-th frame (default every one)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    cv2.setNumThreads(1)
    result = measure(find_data(), args.step)
    print(json.dumps(result, indent=2) if args.json else table(result))


if __name__ == "__main__":
    main()

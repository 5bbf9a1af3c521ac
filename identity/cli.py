"""What ``vcounter identity ...`` runs: pure functions returning JSON-ready dicts.

The server's command line (``server/cli.py``) parses arguments and prints;
these functions do the work with the same code the server runs, in the
calling process. None of them raises for a bad image or video: the problem
comes back as ``{"error": code, "message": text}``.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from .exceptions import IdentityError, ImageError
from .face_match import DEFAULT_THRESHOLD, compare, reference_from_image
from .images import load_image_file
from .liveness import STEP_TIME_LIMIT_S, Challenge, judge_frames
from .video import read_frames


def compare_images(
    path_a: str | Path, path_b: str | Path, *, threshold: float = DEFAULT_THRESHOLD
) -> dict[str, Any]:
    """``{"match", "distance", "threshold", "score"}`` or ``{"error", "message", "image"}``."""
    embeddings = []
    for which, path in (("a", path_a), ("b", path_b)):
        try:
            embeddings.append(_embed(Path(path)))
        except IdentityError as exc:
            return {"error": exc.code, "message": exc.message, "image": which}
    return compare(embeddings[0], embeddings[1], threshold).as_dict()


def compare_pairs(
    csv_path: str | Path, root: str | Path, *, threshold: float = DEFAULT_THRESHOLD
) -> Iterator[dict[str, Any]]:
    """One dict per row ``img_a,img_b`` of ``csv_path`` (paths relative to ``root``).

    ``{"img_a", "img_b", "match", "distance"}``, or ``{"img_a", "img_b",
    "error", "message"}`` when a face cannot be used or a path is bad (outside
    ``root``, missing). A first row ``img_a,img_b`` is a header and skipped.
    Each image is embedded once however many rows name it.
    """
    root = Path(root).resolve()
    cache: dict[Path, np.ndarray | IdentityError] = {}
    with open(csv_path, newline="", encoding="utf-8") as fh:
        for n, row in enumerate(csv.reader(fh)):
            cells = [c.strip() for c in row]
            if not any(cells) or (cells[0].startswith("#")):
                continue
            if n == 0 and [c.lower() for c in cells[:2]] == ["img_a", "img_b"]:
                continue
            if len(cells) != 2:
                yield {
                    "img_a": cells[0] if cells else "",
                    "img_b": cells[1] if len(cells) > 1 else "",
                    "error": "bad_row",
                    "message": f"row {n + 1}: expected 2 columns, got {len(cells)}",
                }
                continue
            a, b = cells
            out: dict[str, Any] = {"img_a": a, "img_b": b}
            vectors = []
            for rel in (a, b):
                result = _cached(cache, root, rel)
                if isinstance(result, IdentityError):
                    out.update(error=result.code, message=f"{rel}: {result.message}")
                    break
                vectors.append(result)
            if "error" not in out:
                m = compare(vectors[0], vectors[1], threshold)
                out.update(match=m.match, distance=round(m.distance, 4))
            yield out


def liveness_video(
    path: str | Path,
    challenge: str | Challenge = "blink",
    *,
    step_time_limit_s: float = STEP_TIME_LIMIT_S,
) -> dict[str, Any]:
    """Judge a video file against a challenge: ``"blink"``, ``"turn_left"``, ``"turn_right"``
    or several in order (``"turn_left,blink"``).

    Returns ``{"passed", "reason", "message", "challenge", "evidence"}``; the
    evidence lists, per step, the frame numbers (0-based, in the file) and
    timestamps that show the action. Timestamps come from the file, so the
    time limit is honoured whatever its frame rate.
    """
    try:
        if not isinstance(challenge, Challenge):
            challenge = Challenge.fixed(challenge, step_time_limit_s)
        result = judge_frames(challenge, read_frames(path))
    except IdentityError as exc:
        return {"error": exc.code, "message": exc.message}
    d = result.as_dict()
    return {
        "passed": result.passed,
        "reason": result.reason,
        "message": result.message,
        "challenge": [str(s) for s in challenge.steps],
        "evidence": d["evidence"],
    }


def _embed(path: Path) -> np.ndarray:
    return reference_from_image(load_image_file(path)).embedding


def _cached(
    cache: dict[Path, np.ndarray | IdentityError], root: Path, rel: str
) -> np.ndarray | IdentityError:
    path = (root / rel).resolve()
    if not path.is_relative_to(root):
        return ImageError(f"path outside the root folder: {rel}")
    if path not in cache:
        try:
            cache[path] = _embed(path)
        except IdentityError as exc:
            cache[path] = exc
    return cache[path]

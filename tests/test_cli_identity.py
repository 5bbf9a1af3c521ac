"""``vcounter identity``: the operator's face compare and liveness checks, run as the real
console script on real photos and videos from the shared data folder.

Each command loads dlib's models (about a second), so the cases of a test run as
parallel child processes.
"""

from __future__ import annotations

import json
import os
import re
import select
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

import av
import numpy as np
import pytest
from PIL import Image

from .helpers import REPO, shared_data
from .server_process import vcounter_command

#: under faces/face_recognition/examples (the --pairs root below)
EXAMPLES = "faces/face_recognition/examples"
OBAMA = "knn_examples/train/obama/obama.jpg"
OBAMA2 = "knn_examples/train/obama/obama2.jpg"
BIDEN = "biden.jpg"
TWO_PEOPLE = "two_people.jpg"
DOGS = "faces/dlib_multi/dogs.jpg"

COMPARE_KEYS = {"match", "distance", "threshold", "score"}
LIVENESS_KEYS = {"passed", "reason", "message", "challenge", "evidence"}


def example(name: str) -> Path:
    return shared_data(f"{EXAMPLES}/{name}")


def _start(*args: object) -> subprocess.Popen[str]:
    # as from an operator's shell: stdout to a pipe is block-buffered unless the command flushes
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    return subprocess.Popen(
        [*vcounter_command(), "identity", *map(str, args)],
        cwd=REPO,
        env=env,
        text=True,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def _run(*commands: tuple[object, ...]) -> list[subprocess.CompletedProcess[str]]:
    """Run several ``vcounter identity`` commands at once; their results in the same order."""
    procs = [_start(*command) for command in commands]
    try:
        results = []
        for proc in procs:
            out, err = proc.communicate(timeout=120)
            results.append(subprocess.CompletedProcess(proc.args, proc.returncode, out, err))
        return results
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def _json(result: subprocess.CompletedProcess[str]) -> dict:
    lines = result.stdout.splitlines()
    assert len(lines) == 1, result.stdout + result.stderr
    return json.loads(lines[0])


def test_compare_accepts_the_same_person_and_rejects_another():
    obama, obama2, biden = example(OBAMA), example(OBAMA2), example(BIDEN)
    same, strict, other = _run(
        ("compare", obama, obama2),
        ("compare", obama, obama2, "--json", "--threshold", "0.3"),
        ("compare", obama, biden),
    )
    assert same.returncode == 0, same.stderr
    verdict = re.fullmatch(r"match distance=(0\.\d{4}) threshold=0\.40\n", same.stdout)
    assert verdict, same.stdout
    distance = float(verdict[1])
    assert distance < 0.40

    # the same pair judged more strictly: no match, and the JSON carries only the verdict
    assert strict.returncode == 1, strict.stderr
    result = _json(strict)
    assert set(result) == COMPARE_KEYS
    assert result["match"] is False and result["threshold"] == 0.3
    assert result["distance"] == pytest.approx(distance, abs=1e-4)

    assert other.returncode == 1, other.stderr
    verdict = re.fullmatch(r"no match distance=(\d\.\d{4}) threshold=0\.40\n", other.stdout)
    assert verdict and float(verdict[1]) > 0.6, other.stdout  # Obama vs Biden: far apart


def test_compare_errors_exit_2_and_name_the_image(tmp_path: Path):
    obama, two_people, dogs = example(OBAMA), example(TWO_PEOPLE), shared_data(DOGS)
    not_image = tmp_path / "statement.jpg"
    not_image.write_text("account statement, not a photo\n")
    missing = tmp_path / "nobody.jpg"
    text, no_face, two_faces, gone = _run(
        ("compare", not_image, obama),
        ("compare", obama, dogs, "--json"),
        ("compare", two_people, obama),
        ("compare", obama, missing),
    )
    for result in (text, no_face, two_faces, gone):
        assert result.returncode == 2, result.stdout + result.stderr
    assert text.stdout == "" and f"image A ({not_image}): not an image" in text.stderr
    assert f"image B ({dogs}): no face found" in no_face.stderr
    assert _json(no_face) == {
        "error": "no_face",
        "message": "no face found in the image",
        "image": "b",
    }
    assert two_faces.stdout == "" and f"image A ({two_people})" in two_faces.stderr
    assert "2 faces" in two_faces.stderr
    assert f"image B ({missing}): cannot read nobody.jpg" in gone.stderr


def test_compare_usage_errors_and_an_unreadable_pairs_file(tmp_path: Path):
    obama = example(OBAMA)
    both, one, root_alone, no_csv, binary = _run(
        ("compare", obama, obama, "--pairs", tmp_path / "pairs.csv"),
        ("compare", obama),
        ("compare", obama, obama, "--root", tmp_path),
        ("compare", "--pairs", tmp_path / "pairs.csv", "--root", tmp_path),
        ("compare", "--pairs", obama, "--root", tmp_path),  # a JPEG is not a CSV
    )
    for result in (both, one, root_alone, no_csv, binary):
        assert result.returncode == 2 and result.stdout == "", result.stdout + result.stderr
    assert "usage:" in both.stderr and "not both" in both.stderr
    assert "usage:" in one.stderr and "expected two images" in one.stderr
    assert "usage:" in root_alone.stderr and "--root goes with --pairs" in root_alone.stderr
    assert f"cannot read pairs file {tmp_path / 'pairs.csv'}" in no_csv.stderr
    assert f"cannot read pairs file {obama}" in binary.stderr


@contextmanager
def _writer(fifo: Path, proc: subprocess.Popen[str]) -> Iterator[IO[str]]:
    """The writing end of ``fifo`` once ``proc`` opens it (without hanging if it never does)."""
    deadline = time.monotonic() + 60
    while True:
        try:
            fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
            break
        except OSError:  # ENXIO: no reader yet
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "vcounter never opened the pairs file"
            time.sleep(0.05)
    os.set_blocking(fd, True)
    with os.fdopen(fd, "w") as fh:
        yield fh


def _readline(proc: subprocess.Popen[str], timeout: float = 60) -> str:
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    assert ready, "no output line in time"
    return proc.stdout.readline()


def test_pairs_print_one_json_line_per_row_as_soon_as_it_is_judged(tmp_path: Path):
    root = example(OBAMA).parents[3]  # faces/face_recognition/examples
    for name in (OBAMA2, BIDEN, TWO_PEOPLE):
        example(name)
    pairs = tmp_path / "pairs.csv"
    os.mkfifo(pairs)  # the test writes the CSV while vcounter reads it
    proc = _start("compare", "--pairs", pairs, "--root", root)
    try:
        with _writer(pairs, proc) as csv_file:
            csv_file.write(f"img_a,img_b\n{OBAMA},{OBAMA2}\n")
            csv_file.flush()
            first = json.loads(_readline(proc))
            assert proc.poll() is None  # judged and printed before the file is even complete
            csv_file.write(
                f"{OBAMA},{BIDEN}\n"
                f"{OBAMA},nobody.jpg\n"
                f"../x.jpg,{BIDEN}\n"
                f"../../dlib_multi/dogs.jpg,{BIDEN}\n"  # exists, but outside the root
                f"{TWO_PEOPLE},{OBAMA}\n"
                f"{BIDEN},{OBAMA},{OBAMA2}\n"
            )
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    same = first.pop("distance")
    assert first == {"img_a": OBAMA, "img_b": OBAMA2, "match": True} and same < 0.40
    rows = [json.loads(line) for line in out.splitlines()]
    assert len(rows) == 6, out
    other, missing, escape, outside, two_faces, bad_row = rows
    assert other.pop("distance") > 0.6
    assert other == {"img_a": OBAMA, "img_b": BIDEN, "match": False}
    assert missing["img_b"] == "nobody.jpg" and missing["error"] == "bad_image"
    assert "nobody.jpg" in missing["message"]
    assert escape["img_a"] == "../x.jpg" and escape["error"] == "bad_image"
    assert "outside the root" in escape["message"]
    assert outside["error"] == "bad_image" and "outside the root" in outside["message"]
    assert two_faces["img_a"] == TWO_PEOPLE and two_faces["error"] == "multiple_faces"
    assert bad_row["error"] == "bad_row"
    for row in (missing, escape, outside, two_faces, bad_row):
        assert set(row) == {"img_a", "img_b", "error", "message"}, row


def _still_video(path: Path, photo: Path, seconds: float = 4.0, fps: int = 25) -> Path:
    """The simplest spoof: one photo, encoded as a video of the same frame again and again."""
    rgb = np.asarray(Image.open(photo).convert("RGB"))
    rgb = np.ascontiguousarray(rgb[: rgb.shape[0] // 2 * 2, : rgb.shape[1] // 2 * 2])  # yuv420p
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.width, stream.height = rgb.shape[1], rgb.shape[0]
        stream.pix_fmt = "yuv420p"
        for _ in range(round(seconds * fps)):
            for packet in stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def test_liveness_on_real_videos_and_a_still_photo(tmp_path: Path):
    d0, d12, d18 = (shared_data(f"videos/{name}.mp4") for name in ("d0", "d12", "d18"))
    still = _still_video(tmp_path / "still.mp4", example(OBAMA))
    blink, no_blink, left, right, steps, photo = _run(
        ("liveness", d0, "--challenge", "blink"),
        # d18's first 3 s: a yawn, no blink (it does blink at 3.1 s: judged in full it passes)
        ("liveness", d18, "--challenge", "blink", "--step-time-limit", "3"),
        ("liveness", d12, "--challenge", "turn_left"),
        ("liveness", d12, "--challenge", "turn_right"),
        ("liveness", d12, "--challenge", "turn_left,blink"),
        ("liveness", still, "--challenge", "blink"),
    )
    for result in (blink, left, right, steps):
        assert result.returncode == 0, result.stdout + result.stderr
    for result in (no_blink, photo):
        assert result.returncode == 1, result.stdout + result.stderr
    results = [_json(r) for r in (blink, no_blink, left, right, steps, photo)]
    for result in results:
        assert set(result) == LIVENESS_KEYS
    blink_out, no_blink_out, left_out, right_out, steps_out, photo_out = results

    assert blink_out["passed"] is True and blink_out["challenge"] == ["blink"]
    closing, deepest, reopened = blink_out["evidence"]["steps"][0]["frames"]
    assert 62 <= closing <= deepest <= 68 and reopened <= 72  # README: one clean blink near 64-67

    assert no_blink_out["passed"] is False and no_blink_out["reason"] == "timeout"
    assert no_blink_out["evidence"]["steps"][0]["frames"] == []

    # d12 turns both ways: to the customer's left near frame 36, to the right near 80
    assert (
        left_out["passed"] is True and abs(left_out["evidence"]["steps"][0]["frames"][-1] - 36) <= 8
    )
    assert (
        right_out["passed"] is True
        and abs(right_out["evidence"]["steps"][0]["frames"][-1] - 80) <= 8
    )
    assert steps_out["passed"] is True and steps_out["challenge"] == ["turn_left", "blink"]
    assert [s["step"] for s in steps_out["evidence"]["steps"]] == ["turn_left", "blink"]
    assert all(s["passed"] and s["frames"] for s in steps_out["evidence"]["steps"])

    assert photo_out["passed"] is False and photo_out["reason"] in ("incomplete", "frozen_video")
    assert photo_out["evidence"]["steps"][0]["frames"] == []


def test_liveness_errors_exit_2(tmp_path: Path):
    d0 = shared_data("videos/d0.mp4")
    not_video = tmp_path / "call.mp4"
    not_video.write_text("not a video\n")
    text, missing, unknown = _run(
        ("liveness", not_video, "--challenge", "blink"),
        ("liveness", tmp_path / "gone.mp4", "--challenge", "blink"),
        ("liveness", d0, "--challenge", "turn_left,wink"),
    )
    for result in (text, missing, unknown):
        assert result.returncode == 2, result.stdout + result.stderr
    assert (
        _json(text)["error"] == "bad_video"
        and f"error: {not_video}: cannot open video" in text.stderr
    )
    assert _json(missing)["error"] == "bad_video" and "gone.mp4" in missing.stderr
    assert _json(unknown)["error"] == "bad_challenge" and "unknown step 'wink'" in unknown.stderr

"""Face verification on real calls: a real Chromium customer whose camera plays a shared clip.

    python bench/identity_live.py                 # 20 attempts per clip and reference
    python bench/identity_live.py --attempts 50 --clips d13 d12 --json

A real ``vcounter serve`` (face checks on), a real Chromium customer per clip
whose fake camera plays the first seconds of the clip (``--use-file-for-fake-
video-capture``), and a headless agent (aiortc, synthetic bars). The customer
uploads an ID photo while queued -- a frame of the same clip from a moment the
camera does not play -- and the call starts with the automatic verification.
The agent then presses "verify" ``--attempts`` times; each attempt is timed
from the press to the verdict on the agent's panel. Then the customer uploads
**another man's** photo (a frame of a different clip: the three East Asian men
against each other, the hardest pairs this model has) and the agent presses
"verify" as often again.

Prints, per clip and reference, how many attempts ended in match / no match /
inconclusive (with their reasons), and the time to the verdict (p50, p95,
max). The issue's target: the right person verified in >= 99 % of attempts
within 5 s, a different person never verified.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import calls  # noqa: E402  (bench/calls.py: the server subprocess and the agents' accounts)
from PIL import Image  # noqa: E402
from shared_data import find_data  # noqa: E402

from identity.video import read_frames  # noqa: E402
from signaling.contrib.encoded_source import encode_video  # noqa: E402
from signaling.contrib.fake_media import (  # noqa: E402
    CHROMIUM,
    CHROMIUM_ARGS,
    make_tone_wav,
    make_y4m,
)
from signaling.contrib.headless import HeadlessParticipant  # noqa: E402

#: clip -> (seconds the camera plays from its start, frame of the ID photo: after those seconds,
#: the clip whose man is the "different person")
CLIPS: dict[str, tuple[float, int, str]] = {
    "d13": (8.0, 330, "d12"),
    "d0": (2.0, 70, "d13"),
    "d12": (5.0, 165, "d0"),
    "d18": (5.0, 185, "d13"),
}
ATTEMPT_TIMEOUT_S = 20.0


def frame_jpeg(video: Path, index: int) -> bytes:
    """Frame ``index`` of ``video`` as a JPEG, as a customer would photograph it."""
    for frame in read_frames(video, max_side=4096, indices={index}):
        out = io.BytesIO()
        Image.fromarray(frame.rgb).save(out, "JPEG", quality=92)
        return out.getvalue()
    raise SystemExit(f"{video} has no frame {index}")


async def call_state(page: Any, value: str, timeout: float) -> None:
    await page.wait_for_function(
        "(v) => document.querySelector('[data-testid=\"call-state\"]').textContent.trim() === v",
        arg=value,
        timeout=timeout,
    )


async def join_queue(page: Any, url: str, id_photo: Path) -> None:
    """The customer page's own steps: business, name, both consents, join, the ID photo."""
    await page.goto(f"{url}/")
    await page.get_by_test_id("business-account_opening").click()
    await page.get_by_test_id("display-name").fill("李四")
    await page.get_by_test_id("recording-consent").check()
    await page.get_by_test_id("face-consent").check()
    await page.wait_for_selector('[data-testid="join-button"]:enabled', timeout=15_000)
    await page.get_by_test_id("join-button").click()
    await call_state(page, "waiting", 20_000)
    await page.get_by_test_id("id-photo-input").set_input_files(str(id_photo))
    await page.wait_for_selector('[data-testid="id-photo-status"][data-state="ok"]', timeout=30_000)


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    return s[min(len(s) - 1, int(round(q * (len(s) - 1))))]


async def verification(agent: HeadlessParticipant, after: float, since: int = 0) -> dict[str, Any]:
    """The next verdict on the agent's panel newer than ``after`` (its ``at``)."""
    msg = await agent.wait_for(
        "identity",
        timeout=ATTEMPT_TIMEOUT_S,
        since=since,
        where=lambda d: (
            (d["state"].get("verification") or {}).get("at", 0) > after
            and d["state"].get("busy") is None
        ),
    )
    return msg["state"]["verification"]


async def attempts(agent: HeadlessParticipant, n: int, last_at: float) -> list[dict[str, Any]]:
    out = []
    for _ in range(n):
        started = time.time()
        since = len(agent.messages)
        await agent.send({"type": "identity_verify"})
        try:
            v = await verification(agent, last_at, since)
        except TimeoutError:
            out.append({"verdict": "timeout", "reason": "timeout", "seconds": ATTEMPT_TIMEOUT_S})
            continue
        last_at = v["at"]
        out.append(
            {
                "verdict": v.get("verdict"),
                "reason": v.get("reason"),
                "distance": v.get("distance"),
                "seconds": round(time.time() - started, 2),
                "at": v["at"],
            }
        )
    return out


def summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    seconds = [r["seconds"] for r in rows if r["verdict"] != "timeout"]
    counts: dict[str, int] = {}
    for r in rows:
        key = r["verdict"] if r["verdict"] != "inconclusive" else f"inconclusive:{r['reason']}"
        counts[key] = counts.get(key, 0) + 1
    distances = [r["distance"] for r in rows if r.get("distance") is not None]
    return {
        "attempts": len(rows),
        "verdicts": counts,
        "matched_within_5s": sum(1 for r in rows if r["verdict"] == "match" and r["seconds"] <= 5),
        "seconds_p50": percentile(seconds, 0.5),
        "seconds_p95": percentile(seconds, 0.95),
        "seconds_max": max(seconds) if seconds else None,
        "distance_min": min(distances) if distances else None,
        "distance_max": max(distances) if distances else None,
    }


async def run_clip(server: calls._Server, pw: Any, root: Path, clip: str, n: int, tmp: Path):
    seconds, photo_frame, other = CLIPS[clip]
    cam = make_y4m(root / f"videos/{clip}.mp4", seconds=seconds)
    same = tmp / f"{clip}-id.jpg"
    same.write_bytes(frame_jpeg(root / f"videos/{clip}.mp4", photo_frame))
    _, other_frame, _ = CLIPS[other]
    stranger = tmp / f"{other}-id.jpg"
    stranger.write_bytes(frame_jpeg(root / f"videos/{other}.mp4", other_frame))

    browser = await pw.chromium.launch(
        executable_path=CHROMIUM,
        headless=True,
        args=[
            *CHROMIUM_ARGS,
            f"--use-file-for-fake-video-capture={cam}",
            f"--use-file-for-fake-audio-capture={make_tone_wav(440.0)}",
        ],
    )
    agent = HeadlessParticipant(server.url, video=encode_video(seconds=2.0), name="agent")
    try:
        await agent.login("alice", calls.PASSWORD)
        await agent.set_ready()
        customer = await browser.new_page()
        await join_queue(customer, server.url, same)
        started = time.time()
        await agent.accept_next()
        await call_state(customer, "active", 30_000)
        first = await verification(agent, 0.0)
        auto = {
            "verdict": first.get("verdict"),
            "reason": first.get("reason"),
            "distance": first.get("distance"),
            "seconds": round(time.time() - started, 2),
        }
        same_rows = await attempts(agent, n, first["at"])
        # another man's ID photo: its own automatic verification, then the agent's presses
        since = len(agent.messages)
        await customer.get_by_test_id("id-photo-input").set_input_files(str(stranger))
        done = [r["at"] for r in same_rows if "at" in r]
        v = await verification(agent, max([first["at"], *done]), since)
        last = v["at"]
        other_rows = [
            {
                "verdict": v.get("verdict"),
                "reason": v.get("reason"),
                "distance": v.get("distance"),
                "seconds": 0.0,
            },
            *await attempts(agent, n, last),
        ]
        await agent.send({"type": "hangup"})
        await call_state(customer, "ended", 20_000)
        return {
            "clip": clip,
            "different_person": other,
            "automatic_at_call_start": auto,
            "same_person": summary(same_rows),
            "different_person_result": summary(other_rows),
        }
    finally:
        await agent.aclose()
        await browser.close()


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    from playwright.async_api import async_playwright

    root = find_data()
    with tempfile.TemporaryDirectory(prefix="vcounter-identity-live-") as tmp_:
        tmp = Path(tmp_)
        data = tmp / "data"
        calls._create_users(data, ["alice"])
        server = calls._Server(
            "passthrough", data, keys=tmp / "keys", env={"VCOUNTER_IDENTITY": "1"}
        )
        server.start()
        try:
            async with async_playwright() as pw:
                results = []
                for clip in args.clips:
                    print(f"clip {clip} ...", file=sys.stderr)
                    results.append(await run_clip(server, pw, root, clip, args.attempts, tmp))
        finally:
            calls._stop_all([server])
    return {"attempts": args.attempts, "results": results}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--attempts", type=int, default=20, help="agent presses per reference")
    parser.add_argument("--clips", nargs="+", default=list(CLIPS), choices=list(CLIPS))
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    report = asyncio.run(main_async(args))
    if args.json:
        print(json.dumps(report))
        return 0
    for r in report["results"]:
        a = r["automatic_at_call_start"]
        print(
            f"{r['clip']}: at call start {a['verdict']} ({a['reason']}, distance {a['distance']}) "
            f"{a['seconds']} s after the agent accepted"
        )
        for label, key in (
            ("same person", "same_person"),
            (f"different person ({r['different_person']})", "different_person_result"),
        ):
            s = r[key]
            print(
                f"  {label}: {s['attempts']} attempts {s['verdicts']}; matched within 5 s "
                f"{s['matched_within_5s']}; time p50 {s['seconds_p50']} s, p95 {s['seconds_p95']} s, "
                f"max {s['seconds_max']} s; distance {s['distance_min']}..{s['distance_max']}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())

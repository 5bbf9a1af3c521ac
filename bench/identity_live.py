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
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from shared_data import find_data  # noqa: E402

from signaling.contrib.encoded_source import encode_video  # noqa: E402
from signaling.contrib.fake_media import make_tone_wav, make_y4m  # noqa: E402
from signaling.contrib.headless import HeadlessParticipant  # noqa: E402
from tests.browser import call_state, join_queue, launch  # noqa: E402
from tests.helpers import PASSWORD, frame_jpeg  # noqa: E402
from tests.server_process import ServerProcess  # noqa: E402

#: clip -> (seconds the camera plays from its start, frame of the ID photo: after those seconds,
#: the clip whose man is the "different person")
CLIPS: dict[str, tuple[float, int, str]] = {
    "d13": (8.0, 330, "d12"),
    "d0": (2.0, 70, "d13"),
    "d12": (5.0, 165, "d0"),
    "d18": (5.0, 185, "d13"),
}
ATTEMPT_TIMEOUT_S = 20.0


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


async def run_clip(server: ServerProcess, pw: Any, root: Path, clip: str, n: int, tmp: Path):
    seconds, photo_frame, other = CLIPS[clip]
    cam = make_y4m(root / f"videos/{clip}.mp4", seconds=seconds)
    same = tmp / f"{clip}-id.jpg"
    same.write_bytes(frame_jpeg(root / f"videos/{clip}.mp4", photo_frame))
    _, other_frame, _ = CLIPS[other]
    stranger = tmp / f"{other}-id.jpg"
    stranger.write_bytes(frame_jpeg(root / f"videos/{other}.mp4", other_frame))

    class Where:
        url = server.url

    browser = await launch(pw, cam, make_tone_wav(440.0))
    agent = HeadlessParticipant(server.url, video=encode_video(seconds=2.0), name="agent")
    try:
        await agent.login("alice", PASSWORD)
        await agent.set_ready()
        customer = await browser.new_page()
        await join_queue(customer, Where, face_consent=True, id_photo=same)
        started = time.time()
        await agent.accept_next()
        await call_state(customer, "active", timeout=30_000)
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
        await call_state(customer, "ended", timeout=20_000)
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
        keys = tmp / "keys"
        server = ServerProcess(
            tmp / "data",
            env={
                "VCOUNTER_IDENTITY": "1",
                "VCOUNTER_MASTER_KEY_FILE": str(keys / "master.key"),
                "VCOUNTER_SIGNING_KEY_FILE": str(keys / "signing.pem"),
                "VCOUNTER_DRAIN_TIMEOUT_S": "0",
            },
        )
        done = server.cli(
            "user",
            "add",
            "--role",
            "agent",
            "--username",
            "alice",
            "--password",
            PASSWORD,
            "--skills",
            "account_opening",
        )
        if done.returncode != 0:
            raise SystemExit(done.stderr)
        await server.start()
        try:
            async with async_playwright() as pw:
                results = []
                for clip in args.clips:
                    print(f"clip {clip} ...", file=sys.stderr)
                    results.append(await run_clip(server, pw, root, clip, args.attempts, tmp))
        finally:
            server.stop()
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

"""How long a restarted server takes to recover recordings a crash interrupted.

    python bench/recovery.py                      # a 10-minute call and a 60-minute call
    python bench/recovery.py --minutes 5 30 --json

For each length it records a two-party call with the real recorder (random
payloads at realistic frame rates and bitrates: video 30 fps at ~600 kbit/s,
audio 50 packets/s), sealing a segment every 2 s of call as the server does,
then abandons the recorder without closing it (what ``kill -9`` leaves: sealed
segments and chain.log, no manifest) and times ``find_interrupted`` +
``recover`` (decrypt and check every segment, remux to two WebMs, encrypt
them, sign the manifest), then ``verify`` of the result.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from recorder import MasterKey, SessionRecorder, SigningKey, find_interrupted, recover, verify  # noqa: E402

T0 = 1_700_000_000.0
VIDEO_BYTES = 2_500  # ~600 kbit/s at 30 fps
KEYFRAME = b"\x50\x82\x00\x9d\x01\x2a" + (640).to_bytes(2, "little") + (480).to_bytes(2, "little")


async def record_and_crash(directory: Path, master: MasterKey, minutes: float) -> None:
    rng = os.urandom(VIDEO_BYTES * 64)
    now = [T0]
    rec = SessionRecorder(
        "bench-call-1", directory, master, clock=lambda: now[0], segment_seconds=3600
    )
    await rec.start()
    ticks = int(minutes * 60 * 150)
    for tick in range(ticks):
        t = tick / 150
        now[0] = T0 + t
        for party in ("customer", "agent"):
            if tick % 5 == 0:
                n = tick // 5
                start = (n * 997) % (len(rng) - VIDEO_BYTES)
                key = n % 60 == 0
                rec.write(
                    party,
                    "video",
                    (KEYFRAME if key else b"\x51") + rng[start : start + VIDEO_BYTES],
                    timestamp=n * 3000,
                    clock_rate=90000,
                    keyframe=key,
                    arrival=T0 + t,
                )
            if tick % 3 == 0:
                n = tick // 3
                rec.write(
                    party,
                    "audio",
                    rng[n % 1000 : n % 1000 + 80],
                    timestamp=n * 960,
                    clock_rate=48000,
                    keyframe=True,
                    arrival=T0 + t,
                )
        if tick % 300 == 299:
            await rec.seal()
    # no aclose(): the process "dies" here, with its last sealed segment on disk


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, nargs="+", default=[10.0, 60.0])
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    master, signer = MasterKey.generate(), SigningKey.generate()
    rows = []
    for minutes in args.minutes:
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp)
            directory = root / "bench-call-1"
            asyncio.run(record_and_crash(directory, master, minutes))
            size = sum(p.stat().st_size for p in directory.rglob("*") if p.is_file())
            start = time.perf_counter()
            found = find_interrupted(root)
            manifest = recover(found[0], master, signer, {"bench": True})
            recovered_s = time.perf_counter() - start
            start = time.perf_counter()
            result = verify(directory, master, signer.public_pem())
            verify_s = time.perf_counter() - start
            assert result.ok, result.reason
            rows.append(
                {
                    "call_minutes": minutes,
                    "segments": len(manifest.data["segments"]),
                    "stored_mb": round(size / 1e6, 1),
                    "recover_s": round(recovered_s, 2),
                    "recover_s_per_call_hour": round(recovered_s * 60 / minutes, 1),
                    "verify_s": round(verify_s, 2),
                }
            )
    if args.json:
        print(json.dumps({"cores": os.cpu_count(), "runs": rows}))
    else:
        print(
            f"{'call min':>8} {'segments':>8} {'MB':>7} {'recover s':>10} {'s per call-hour':>16} {'verify s':>9}"
        )
        for r in rows:
            print(
                f"{r['call_minutes']:8.0f} {r['segments']:8d} {r['stored_mb']:7.1f} {r['recover_s']:10.2f} "
                f"{r['recover_s_per_call_hour']:16.1f} {r['verify_s']:9.2f}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())

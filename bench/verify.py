"""How fast ``recorder.verify`` checks a recording, in MB/s of stored bytes.

    python bench/verify.py                   # ~200 MB recording, 3 runs each
    python bench/verify.py --size-mb 500 --json

Builds a synthetic two-party recording with the real recorder (random
payloads at realistic frame rates; video frames are 10 KB, keyframes carry a
VP8 header so finalisation keeps them) until segments plus outputs reach
``--size-mb``, finalises it, then times ``verify``:

* ``hash``: chain over segment files, manifest signature, output hashes
  (what a third party without the master key can check);
* ``decrypt``: the same plus AES-GCM authentication of every segment and
  output chunk (with the master key).

Files are read through the page cache (warm after the first run); the raw
single-thread SHA-256 speed of this machine is printed for reference.
Target: verify >= 500 MB/s.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # `python bench/verify.py` from a checkout without `pip install -e`
    sys.path.insert(0, str(REPO))

from recorder import MasterKey, SessionRecorder, SigningKey, finalize, verify  # noqa: E402

T0 = 1_700_000_000.0
VIDEO_BYTES = 10_000
KEYFRAME_HEADER = (
    b"\x50\x82\x00\x9d\x01\x2a" + (640).to_bytes(2, "little") + (480).to_bytes(2, "little")
)


async def build(directory: Path, master: MasterKey, size_mb: float) -> float:
    """Record until the segments hold about half of ``size_mb``; returns seconds of call."""
    target = size_mb * 1e6 / 2  # outputs are about as large as the segments
    rng = os.urandom(VIDEO_BYTES * 64)
    async with SessionRecorder(
        "bench", directory, master, clock=lambda: T0, segment_seconds=3600
    ) as rec:
        written, tick = 0, 0
        while written < target:
            t = tick / 150  # 150 ticks a second: video every 5th (30 fps), audio every 3rd (50 fps)
            for party in ("customer", "agent"):
                if tick % 5 == 0:
                    n = tick // 5
                    start = (n * 997) % (len(rng) - VIDEO_BYTES)
                    key = n % 30 == 0
                    data = (KEYFRAME_HEADER if key else b"\x51") + rng[start : start + VIDEO_BYTES]
                    rec.write(
                        party,
                        "video",
                        data,
                        timestamp=n * 3000,
                        clock_rate=90000,
                        keyframe=key,
                        arrival=T0 + t,
                    )
                    written += len(data)
                if tick % 3 == 0:
                    n = tick // 3
                    rec.write(
                        party,
                        "audio",
                        rng[n % 1000 : n % 1000 + 100],
                        timestamp=n * 960,
                        clock_rate=48000,
                        keyframe=True,
                        arrival=T0 + t,
                    )
                    written += 100
            tick += 1
            if tick % 300 == 0:  # a segment every 2 s of call
                await rec.seal()
    return tick / 150


def stored_bytes(directory: Path) -> int:
    return sum(p.stat().st_size for p in directory.rglob("*") if p.is_file())


def sha256_speed() -> float:
    block = os.urandom(1 << 20)
    digest = hashlib.sha256()
    start = time.perf_counter()
    for _ in range(256):
        digest.update(block)
    return 256 * (1 << 20) / 1e6 / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mb", type=float, default=200.0, help="approximate recording size")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument(
        "--workers", type=int, default=None, help="verify threads (default: up to 4)"
    )
    parser.add_argument(
        "--dir", type=Path, default=None, help="where to build it (default: a temp dir)"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        directory = Path(tmp) / "bench"
        master, signer = MasterKey.generate(), SigningKey.generate()
        start = time.perf_counter()
        seconds = asyncio.run(build(directory, master, args.size_mb))
        recorded = time.perf_counter() - start
        start = time.perf_counter()
        finalize(directory, master, signer, {"bench": True})
        finalized = time.perf_counter() - start
        size = stored_bytes(directory)

        speeds: dict[str, list[float]] = {"hash": [], "decrypt": []}
        for _ in range(args.runs):
            for mode, key in (("hash", None), ("decrypt", master)):
                start = time.perf_counter()
                result = verify(directory, key, signer.public_pem(), workers=args.workers)
                elapsed = time.perf_counter() - start
                if not result.ok:
                    raise SystemExit(f"verify failed: {result.reason}")
                speeds[mode].append(result.bytes_checked / 1e6 / elapsed)

    report = {
        "recording_mb": round(size / 1e6, 1),
        "call_seconds": round(seconds, 1),
        "record_s": round(recorded, 2),
        "finalize_s": round(finalized, 2),
        "verify_hash_mb_s": round(statistics.median(speeds["hash"]), 1),
        "verify_decrypt_mb_s": round(statistics.median(speeds["decrypt"]), 1),
        "sha256_single_thread_mb_s": round(sha256_speed(), 1),
        "cpus": os.cpu_count(),
    }
    if args.json:
        print(json.dumps(report))
    else:
        for name, value in report.items():
            print(f"{name:28} {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

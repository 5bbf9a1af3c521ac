"""Accuracy of face verification over the labelled photos of the shared test data.

    python bench/identity_eval.py                 # table + ROC, threshold = identity's default
    python bench/identity_eval.py --json          # one JSON object
    python bench/identity_eval.py --jitters 5 --threshold 0.55
    python bench/identity_eval.py --no-stress     # skip the 300-frame East Asian stress set (~15 s)

Every labelled single-face photo under ``$VCOUNTER_TEST_DATA`` (default
``../shared/data``) is embedded with the production code path
(:func:`identity.face_match.reference_from_image`: adaptive detection, largest
face, 5-point alignment, dlib ResNet). Every pair of photos is then a
same-person pair (both of one identity) or a different-person pair:

* Barack Obama (independent photos plus one portrait at several resolutions
  and two partial faces), Joe Biden, Kit Harington, Rose Leslie, Alex
  Lacamoire, John Lennon, Eric Clapton, Amy Adams, Steve Carell (openface
  originals and their aligned 96x96 crops), the ICAO specimen holder (the
  passport and the ID card), Lin-Manuel Miranda and Tom Cruise;
* the five Johns of dlib's example (11 aligned 150x150 chips each): the hard
  different-person pairs (same first name, similar age and style);
* frames of the four single-person clips (8 frames spread over each clip):
  ``d13``, ``d0`` and ``d12`` show three different East Asian men, ``d18`` a
  white man. Frames of one clip are same-person pairs (one sitting, as in a
  call); the clips against each other are the second hard group: dlib's model
  was trained mostly on Western faces and puts different East Asian men much
  closer together than different Western men.

The **East Asian stress set** then takes every 4th frame of the three East
Asian clips (~150 frames) and counts, per threshold, how many of the ~6700
cross-clip frame pairs (different men) would be accepted: a bank serving
Chinese customers must hold its false-accept target there first.

Byte-identical copies are counted once; ``32bit.png`` (an RGBA re-encoding of
``obama2.jpg``) is left out. Prints the number of pairs, accuracy, false-accept
rate (FAR: different people accepted) and false-reject rate (FRR: same person
rejected) at the threshold, a ROC table, the equal error rate, and the largest
threshold that meets the target: the 95 % upper confidence bound of the FAR
(Clopper-Pearson) at most ``--max-far`` (0.1 %), no false accept between the
five Johns, and an observed FAR at most ``--max-far`` on the East Asian stress
set. That is how the default threshold was chosen (docs/identity.md).
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import math
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # `python bench/identity_eval.py` from a checkout
    sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
from shared_data import find_data  # noqa: E402  (bench/shared_data.py, beside this script)

from identity.exceptions import IdentityError  # noqa: E402
from identity.face_detect import detect_faces  # noqa: E402
from identity.face_match import DEFAULT_THRESHOLD, embed_face, reference_from_image  # noqa: E402
from identity.images import load_image_file  # noqa: E402
from identity.video import frame_count, read_frames  # noqa: E402

FR = "faces/face_recognition"
OF = "faces/openface"
#: identity -> photos (relative to the data folder); globs end with "/*"
IDENTITIES: dict[str, list[str]] = {
    "obama": [
        f"{FR}/examples/obama.jpg",
        f"{FR}/examples/obama2.jpg",
        f"{FR}/examples/obama_small.jpg",
        f"{FR}/examples/obama-240p.jpg",
        f"{FR}/examples/obama-480p.jpg",
        f"{FR}/examples/obama-720p.jpg",
        f"{FR}/examples/obama-1080p.jpg",
        f"{FR}/examples/knn_examples/test/obama1.jpg",
        f"{FR}/examples/knn_examples/train/obama/obama.jpg",
        f"{FR}/examples/knn_examples/train/obama/obama2.jpg",
        f"{FR}/tests/test_images/obama.jpg",
        f"{FR}/tests/test_images/obama2.jpg",
        f"{FR}/tests/test_images/obama3.jpg",
        f"{FR}/tests/test_images/obama_partial_face.jpg",
        f"{FR}/tests/test_images/obama_partial_face2.jpg",
    ],
    "biden": [
        f"{FR}/examples/biden.jpg",
        f"{FR}/tests/test_images/biden.jpg",
        f"{FR}/examples/knn_examples/train/biden/*",
    ],
    "kit_harington": [
        f"{FR}/examples/knn_examples/train/kit_harington/*",
        f"{FR}/examples/knn_examples/test/johnsnow_test1.jpg",
    ],
    "rose_leslie": [f"{FR}/examples/knn_examples/train/rose_leslie/*"],
    "alex_lacamoire": [
        f"{FR}/examples/knn_examples/train/alex_lacamoire/*",
        f"{FR}/examples/knn_examples/test/alex_lacamoire1.jpg",
        f"{FR}/examples/alex-lacamoire.png",
    ],
    "lin_manuel_miranda": [f"{FR}/examples/lin-manuel-miranda.png"],
    "lennon": [
        f"{OF}/examples/lennon-1.jpg",
        f"{OF}/examples/lennon-2.jpg",
        f"{OF}/examples-aligned/lennon-1.png",
        f"{OF}/examples-aligned/lennon-2.png",
    ],
    "clapton": [
        f"{OF}/examples/clapton-1.jpg",
        f"{OF}/examples/clapton-2.jpg",
        f"{OF}/examples-aligned/clapton-1.png",
        f"{OF}/examples-aligned/clapton-2.png",
    ],
    "adams": [f"{OF}/examples/adams.jpg", f"{OF}/examples-aligned/adams.png"],
    "carell": [f"{OF}/examples/carell.jpg", f"{OF}/examples-aligned/carell.png"],
    "icao_specimen": ["id_specimens/passporteye/*"],
    "tom_cruise": ["faces/dlib_multi/Tom_Cruise_avp_2014_4.jpg"],
    **{
        f"john_{name.lower()}": [f"faces/dlib_johns/John_{name}/*"]
        for name in ("Salley", "Savage", "Schneider", "Shimkus", "Simm")
    },
}
#: clip -> identity; frames of a clip are one person
VIDEO_IDENTITIES = {
    "videos/d13.mp4": "clip_d13",
    "videos/d0.mp4": "clip_d0",
    "videos/d12.mp4": "clip_d12",
    "videos/d18.mp4": "clip_d18",
}
FRAMES_PER_CLIP = 8
#: the stress set: every STRESS_STEP-th frame of these clips, cross-clip pairs
STRESS_CLIPS = ("clip_d13", "clip_d0", "clip_d12")
STRESS_STEP = 4
#: groups of identities whose mutual pairs must never be accepted
HARD_GROUPS = {
    "five_johns": lambda who: who.startswith("john_"),
    "east_asian_clips": lambda who: who in ("clip_d13", "clip_d0", "clip_d12"),
}
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def labelled_images(root: Path) -> list[tuple[str, Path]]:
    """(identity, path) for every photo, byte-identical copies once."""
    seen: set[str] = set()
    out: list[tuple[str, Path]] = []
    for who, patterns in IDENTITIES.items():
        for pattern in patterns:
            if pattern.endswith("/*"):
                paths = sorted(
                    p for p in (root / pattern[:-2]).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES
                )
            else:
                paths = [root / pattern]
            for p in paths:
                digest = hashlib.sha256(p.read_bytes()).hexdigest()
                if digest not in seen:
                    seen.add(digest)
                    out.append((who, p))
    return out


def clip_embeddings(
    root: Path, jitters: int, stress: bool
) -> tuple[list[tuple[str, str, np.ndarray]], list[tuple[str, np.ndarray]]]:
    """(identity, "clip#frame", embedding) for 8 frames spread over each clip, and
    (identity, embedding) for every STRESS_STEP-th frame of the stress clips."""
    spread: list[tuple[str, str, np.ndarray]] = []
    dense: list[tuple[str, np.ndarray]] = []
    for rel, who in VIDEO_IDENTITIES.items():
        path = root / rel
        n = frame_count(path)
        wanted = {int(i) for i in np.linspace(0, n - 1, FRAMES_PER_CLIP)}
        if stress and who in STRESS_CLIPS:
            wanted |= set(range(0, n, STRESS_STEP))
        for frame in read_frames(path, indices=wanted):
            boxes = detect_faces(frame.rgb, 0)
            if not boxes:
                continue
            vec = embed_face(frame.rgb, boxes[0], jitters)
            if frame.index % STRESS_STEP == 0 and who in STRESS_CLIPS and stress:
                dense.append((who, vec))
            if frame.index in {int(i) for i in np.linspace(0, n - 1, FRAMES_PER_CLIP)}:
                spread.append((who, f"{rel}#{frame.index}", vec))
    return spread, dense


def far_upper_bound(false_accepts: int, n: int, confidence: float = 0.95) -> float:
    """One-sided Clopper-Pearson upper bound of a rate seen as false_accepts / n."""
    if false_accepts >= n:
        return 1.0
    lo, hi = false_accepts / n, 1.0
    for _ in range(60):  # bisection on P(X <= k | p) = 1 - confidence
        mid = (lo + hi) / 2
        if binom_cdf(false_accepts, n, mid) > 1 - confidence:
            lo = mid
        else:
            hi = mid
    return hi


def binom_cdf(k: int, n: int, p: float) -> float:
    if p <= 0:
        return 1.0
    if p >= 1:
        return 0.0 if k < n else 1.0
    total = 0.0
    for i in range(k + 1):
        log_term = (
            math.lgamma(n + 1)
            - math.lgamma(i + 1)
            - math.lgamma(n - i + 1)
            + i * math.log(p)
            + (n - i) * math.log1p(-p)
        )
        total += math.exp(log_term)
    return total


def rates(same: np.ndarray, diff: np.ndarray, t: float) -> dict[str, float]:
    fa = int((diff <= t).sum())
    fr = int((same > t).sum())
    n = len(same) + len(diff)
    return {
        "threshold": round(t, 3),
        "accuracy": (n - fa - fr) / n,
        "far": fa / len(diff),
        "frr": fr / len(same),
        "false_accepts": fa,
        "false_rejects": fr,
    }


def equal_error_rate(same: np.ndarray, diff: np.ndarray) -> tuple[float, float]:
    grid = np.arange(0.2, 0.9, 0.0005)
    far = np.array([(diff <= t).mean() for t in grid])
    frr = np.array([(same > t).mean() for t in grid])
    i = int(np.argmin(np.abs(far - frr)))
    return float((far[i] + frr[i]) / 2), float(grid[i])


def best_threshold(
    diff: np.ndarray, johns: np.ndarray, stress: np.ndarray, max_far: float
) -> float:
    """The largest threshold (0.01 steps) meeting the target (see the module's docstring)."""
    best = 0.0
    for t in np.round(np.arange(0.20, 0.90, 0.01), 2):
        ok = far_upper_bound(int((diff <= t).sum()), len(diff)) <= max_far
        ok = ok and int((johns <= t).sum()) == 0
        ok = ok and (len(stress) == 0 or float((stress <= t).mean()) <= max_far)
        if not ok:
            break
        best = float(t)
    return best


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--jitters", type=int, default=1, help="num_jitters per embedding")
    parser.add_argument(
        "--threshold",
        type=float,
        default=DEFAULT_THRESHOLD,
        help=f"threshold to report (default: identity's {DEFAULT_THRESHOLD})",
    )
    parser.add_argument("--max-far", type=float, default=0.001, help="FAR target (0.001 = 0.1 %%)")
    parser.add_argument("--no-stress", action="store_true", help="skip the East Asian stress set")
    args = parser.parse_args(argv)

    root = find_data()
    started = time.perf_counter()
    names: list[str] = []
    labels: list[str] = []
    vectors: list[np.ndarray] = []
    skipped: list[dict[str, str]] = []
    for who, path in labelled_images(root):
        rel = str(path.relative_to(root))
        try:
            ref = reference_from_image(load_image_file(path), num_jitters=args.jitters)
        except IdentityError as exc:
            skipped.append({"image": rel, "error": exc.code})
            continue
        names.append(rel)
        labels.append(who)
        vectors.append(ref.embedding)
    spread, dense = clip_embeddings(root, args.jitters, not args.no_stress)
    for who, rel, vec in spread:
        names.append(rel)
        labels.append(who)
        vectors.append(vec)
    stress = np.array(
        [
            float(np.linalg.norm(x - y))
            for (wa, x), (wb, y) in itertools.combinations(dense, 2)
            if wa != wb
        ]
    )
    embed_s = time.perf_counter() - started

    emb = np.stack(vectors)
    same_d: list[float] = []
    diff_d: list[float] = []
    hard_diff: dict[str, list[float]] = {g: [] for g in HARD_GROUPS}
    worst_diff: list[tuple[float, str, str]] = []
    worst_same: list[tuple[float, str, str]] = []
    for i, j in itertools.combinations(range(len(names)), 2):
        d = float(np.linalg.norm(emb[i] - emb[j]))
        if labels[i] == labels[j]:
            same_d.append(d)
            worst_same.append((d, names[i], names[j]))
        else:
            diff_d.append(d)
            worst_diff.append((d, names[i], names[j]))
            for group, member in HARD_GROUPS.items():
                if member(labels[i]) and member(labels[j]):
                    hard_diff[group].append(d)
    same, diff = np.array(same_d), np.array(diff_d)
    hard = {g: np.array(v) for g, v in hard_diff.items()}
    at = rates(same, diff, args.threshold)
    at["far_upper_95"] = far_upper_bound(at["false_accepts"], len(diff))
    at_hard = {
        g: {
            "pairs": len(d),
            "false_accepts": int((d <= args.threshold).sum()),
            "min_distance": round(float(d.min()), 4),
        }
        for g, d in hard.items()
    }
    roc = [rates(same, diff, float(t)) for t in np.round(np.arange(0.30, 0.71, 0.02), 2)]
    for row in roc:
        row["stress_far"] = float((stress <= row["threshold"]).mean()) if len(stress) else None
    eer, eer_t = equal_error_rate(same, diff)
    chosen = best_threshold(diff, hard["five_johns"], stress, args.max_far)
    naive = max(
        [
            float(t)
            for t in np.round(np.arange(0.20, 0.90, 0.01), 2)
            if (diff <= t).mean() <= args.max_far
        ],
        default=0.0,
    )
    result = {
        "images": len(names),
        "identities": len(set(labels)),
        "skipped": skipped,
        "pairs": len(same) + len(diff),
        "same_pairs": len(same),
        "different_pairs": len(diff),
        "jitters": args.jitters,
        "at_threshold": at,
        "hard_groups": at_hard,
        "stress": None
        if not len(stress)
        else {
            "frames": len(dense),
            "pairs": len(stress),
            "false_accepts": int((stress <= args.threshold).sum()),
            "far": float((stress <= args.threshold).mean()),
            "far_upper_95": far_upper_bound(int((stress <= args.threshold).sum()), len(stress)),
            "min_distance": float(stress.min()),
            "median_distance": float(np.median(stress)),
        },
        "eer": eer,
        "eer_threshold": round(eer_t, 3),
        "max_far": args.max_far,
        "recommended_threshold": chosen,
        "at_recommended_threshold": rates(same, diff, chosen),
        "largest_threshold_with_observed_far_within_max": naive,
        "same_distance": {
            "min": float(same.min()),
            "median": float(np.median(same)),
            "max": float(same.max()),
        },
        "different_distance": {
            "min": float(diff.min()),
            "median": float(np.median(diff)),
            **{f"{g}_min": float(d.min()) for g, d in hard.items()},
        },
        "hardest_different": [
            {"distance": round(d, 4), "a": a, "b": b} for d, a, b in sorted(worst_diff)[:5]
        ],
        "hardest_same": [
            {"distance": round(d, 4), "a": a, "b": b}
            for d, a, b in sorted(worst_same, reverse=True)[:5]
        ],
        "roc": roc,
        "embed_seconds": round(embed_s, 1),
    }
    if args.json:
        print(json.dumps(result))
        return 0
    print(
        f"{result['images']} photos of {result['identities']} people "
        f"({len(skipped)} unusable: {skipped}), jitters={args.jitters}, "
        f"embedded in {embed_s:.1f} s"
    )
    groups = ", ".join(f"{v['pairs']} {g}" for g, v in at_hard.items())
    print(
        f"{result['pairs']} pairs: {len(same)} same-person, {len(diff)} different-person "
        f"(hard groups: {groups})"
    )
    print(
        f"at threshold {args.threshold}: accuracy {at['accuracy']:.2%}, FAR {at['far']:.3%} "
        f"({at['false_accepts']} false accepts; 95 % upper bound {at['far_upper_95']:.3%}), "
        f"FRR {at['frr']:.2%} ({at['false_rejects']} false rejects)"
    )
    for g, v in at_hard.items():
        print(
            f"  {g}: {v['false_accepts']} false accepts of {v['pairs']}, "
            f"closest different pair {v['min_distance']:.3f}"
        )
    if result["stress"]:
        st = result["stress"]
        print(
            f"  East Asian stress set: {st['false_accepts']} false accepts of {st['pairs']} "
            f"frame pairs of 3 different men ({st['far']:.3%}, 95 % upper bound "
            f"{st['far_upper_95']:.3%}); distances min {st['min_distance']:.3f}, "
            f"median {st['median_distance']:.3f}"
        )
    rec = result["at_recommended_threshold"]
    print(f"EER {eer:.2%} at {eer_t:.3f}")
    print(
        f"recommended threshold (FAR upper bound <= {args.max_far:.1%}, no Johns false accept, "
        f"stress FAR <= {args.max_far:.1%}): {chosen} -> accuracy {rec['accuracy']:.2%}, FAR {rec['far']:.3%}, "
        f"FRR {rec['frr']:.2%}; on observed FAR alone it would be {naive}"
    )
    print(
        f"distances: same {same.min():.3f}..{np.median(same):.3f}..{same.max():.3f}, "
        f"different min {diff.min():.3f}, median {np.median(diff):.3f}"
    )
    print("hardest different-person pairs:")
    for row in result["hardest_different"]:
        print(f"  {row['distance']:.3f}  {row['a']}  {row['b']}")
    print("hardest same-person pairs:")
    for row in result["hardest_same"]:
        print(f"  {row['distance']:.3f}  {row['a']}  {row['b']}")
    print(f"{'threshold':>9} {'FAR':>8} {'FRR':>8} {'accuracy':>9} {'stress FAR':>11}")
    for row in roc:
        sf = "-" if row["stress_far"] is None else f"{row['stress_far']:.3%}"
        print(
            f"{row['threshold']:9.2f} {row['far']:8.3%} {row['frr']:8.2%} {row['accuracy']:9.2%} "
            f"{sf:>11}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Face verification over every labelled set of the shared test data, leave one set out.

    python bench/identity_eval.py               # per-set tables, folds, chosen thresholds
    python bench/identity_eval.py --json        # one JSON object
    python bench/identity_eval.py --frames 1    # live side: one frame instead of a mean of 5
    python bench/identity_eval.py --upscale     # small reference faces upscaled before embedding

**Sets** (``$VCOUNTER_TEST_DATA``, default ``../shared/data``), one per source:

* ``face_recognition``: Obama (independent photos, one portrait at several
  resolutions, partial faces), Biden, Kit Harington, Rose Leslie, Alex
  Lacamoire, Lin-Manuel Miranda -- press photos, years apart;
* ``openface``: Lennon, Clapton, Adams, Carell (originals and their aligned
  96x96 crops);
* ``dlib_johns``: five different men named John, 11 aligned chips each (hard
  different-person pairs: same first name, age and style);
* ``documents``: the ICAO specimen holder (passport and ID card) and Tom Cruise;
* ``clips``: the four single-person clips (``d13``, ``d0``, ``d12``: three
  different East Asian men; ``d18``: a white man), used the way a call uses
  them: a **document photo** made from one frame (the face cropped, scaled to
  about 100 px wide and saved as a JPEG at quality 70, then read through the
  production reference path) against the **mean embedding of 5 live frames**
  taken 0.33-0.4 s apart at another moment of the clip (at least 1 s away),
  each through the production live path (640 px, quality gates, HOG, 5-point
  alignment, dlib ResNet). Different clips are different people.

Photos are compared photo against photo (every pair, within and across sets:
the photo as the reference, the other as the live face); a photo is compared
with the clips' live means as a different person. Byte-identical copies count
once; ``32bit.png`` (an RGBA re-encoding of ``obama2.jpg``) is left out.

**Leave one set out.** For each set, the thresholds are chosen on the pairs
that involve no image of that set and evaluated on the pairs that involve one:

* ``accept``: the largest distance (0.005 steps) at which the 95 % upper
  confidence bound (Clopper-Pearson) of the false-accept rate over the
  training pairs is at most ``--max-far`` (0.1 %) and no hard group in the
  training pairs (the Johns, the East Asian clips) has an observed FAR above it;
* ``reject``: the smallest distance at or above ``accept`` that at most
  ``--max-false-reject`` (1 %) of the same-person pairs of each training set
  exceed (per set, as sets differ: photos years apart, frames of one sitting).

Between the two the verdict is "inconclusive" (the agent compares the face
with the document). The final thresholds are the same rule over all pairs.
Prints, per held-out set: same-person pairs matched / inconclusive / wrongly
"no match"; different-person pairs wrongly matched (FAR) / inconclusive; and
the plain two-way FAR/FRR/accuracy at ``accept``; then a ROC per set.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import itertools
import json
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # `python bench/identity_eval.py` from a checkout
    sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402
from shared_data import find_data  # noqa: E402  (bench/shared_data.py, beside this script)

from identity.analysis import analyze_frame  # noqa: E402
from identity.decision import ACCEPT_THRESHOLD, REJECT_THRESHOLD, aggregate  # noqa: E402
from identity.exceptions import IdentityError  # noqa: E402
from identity.face_match import reference_from_image  # noqa: E402
from identity.video import read_frames  # noqa: E402

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
#: identity -> set (the source it comes from)
SET_OF: dict[str, str] = {
    **{
        who: "face_recognition"
        for who in (
            "obama",
            "biden",
            "kit_harington",
            "rose_leslie",
            "alex_lacamoire",
            "lin_manuel_miranda",
        )
    },
    **{who: "openface" for who in ("lennon", "clapton", "adams", "carell")},
    **{who: "dlib_johns" for who in IDENTITIES if who.startswith("john_")},
    "icao_specimen": "documents",
    "tom_cruise": "documents",
}
#: clip -> identity; frames of a clip are one person
CLIPS = {
    "videos/d13.mp4": "clip_d13",
    "videos/d0.mp4": "clip_d0",
    "videos/d12.mp4": "clip_d12",
    "videos/d18.mp4": "clip_d18",
}
#: live frames are sampled this far apart (seconds), as the server takes them
LIVE_SPACING_S = 0.33
#: a document photo is made from a frame this often (seconds)
DOCUMENT_EVERY_S = 1.0
#: a live window starts this often (seconds)
WINDOW_EVERY_S = 0.5
#: a same-person pair's document frame is at least this far from its live window (seconds)
MIN_GAP_S = 1.0
#: a document photo's face is scaled to about this width (pixels), as on an ID card scan
DOCUMENT_FACE_PX = 100
DOCUMENT_JPEG_QUALITY = 70
#: groups of identities whose mutual pairs are the hard different-person pairs
HARD_GROUPS: dict[str, Callable[[str], bool]] = {
    "five_johns": lambda who: who.startswith("john_"),
    "east_asian_clips": lambda who: who in ("clip_d13", "clip_d0", "clip_d12"),
}
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
SETS = ("face_recognition", "openface", "dlib_johns", "documents", "clips")


@dataclass(frozen=True)
class Item:
    """One embedded face: a photo, a document made from a clip frame, or a clip's live mean."""

    set: str
    who: str
    #: "photo", "document" or "live"
    kind: str
    name: str
    vector: np.ndarray
    #: seconds into the clip (documents), or the live window's span
    t0: float = 0.0
    t1: float = 0.0


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


def document_photo(rgb: np.ndarray, box: tuple[int, int, int, int]) -> bytes:
    """A frame's face as an ID-photo JPEG: cropped with margin, face ~100 px wide."""
    left, top, right, bottom = box
    w = right - left
    cx, cy = (left + right) / 2, (top + bottom) / 2
    half = 1.1 * w
    h, wd = rgb.shape[:2]
    x0, x1 = int(max(0, cx - half)), int(min(wd, cx + half))
    y0, y1 = int(max(0, cy - 1.3 * half)), int(min(h, cy + 1.1 * half))
    crop = Image.fromarray(rgb[y0:y1, x0:x1])
    scale = DOCUMENT_FACE_PX / max(1, w)
    crop = crop.resize(
        (max(1, round(crop.width * scale)), max(1, round(crop.height * scale))),
        Image.Resampling.LANCZOS,
    )
    out = io.BytesIO()
    crop.save(out, "JPEG", quality=DOCUMENT_JPEG_QUALITY)
    return out.getvalue()


def clip_items(root: Path, frames_per_window: int, upscale: bool) -> tuple[list[Item], dict]:
    """Documents and live windows of every clip, and how many frames the quality gates kept."""
    items: list[Item] = []
    gates: dict[str, dict[str, int]] = {}
    for rel, who in CLIPS.items():
        live: list[tuple[float, np.ndarray]] = []
        rejected: dict[str, int] = {}
        next_live, next_doc = 0.0, 0.3
        for frame in read_frames(root / rel):
            if frame.t + 1e-6 >= next_doc:
                a = analyze_frame(frame.rgb, frame.t, embed=False, landmarks=False)
                if a.face_count == 1:
                    b = a.faces[0]
                    photo = document_photo(frame.rgb, (b.left, b.top, b.right, b.bottom))
                    try:
                        ref = reference_from_image(photo, upscale=upscale)
                    except IdentityError as exc:
                        rejected[f"document:{exc.code}"] = (
                            rejected.get(f"document:{exc.code}", 0) + 1
                        )
                    else:
                        items.append(
                            Item(
                                "clips",
                                who,
                                "document",
                                f"{rel}@{frame.t:.1f}s",
                                ref.embedding,
                                frame.t,
                                frame.t,
                            )
                        )
                next_doc += DOCUMENT_EVERY_S
            if frame.t + 1e-6 >= next_live:
                next_live += LIVE_SPACING_S
                a = analyze_frame(frame.rgb, frame.t, embed=True, landmarks=False)
                if a.quality.ok and a.embedding is not None:
                    live.append((frame.t, a.embedding))
                else:
                    code = a.quality.reason or "no_embedding"
                    rejected[code] = rejected.get(code, 0) + 1
        gates[who] = {"live_frames_kept": len(live), **rejected}
        start = 0.0
        while True:
            window = [(t, v) for t, v in live if t >= start][:frames_per_window]
            if len(window) < frames_per_window:
                break
            items.append(
                Item(
                    "clips",
                    who,
                    "live",
                    f"{rel}[{window[0][0]:.1f}-{window[-1][0]:.1f}s]",
                    aggregate([v for _, v in window]),
                    window[0][0],
                    window[-1][0],
                )
            )
            start += WINDOW_EVERY_S
    return items, gates


@dataclass
class Pairs:
    d: np.ndarray
    same: np.ndarray
    #: the two items' sets
    set_a: np.ndarray
    set_b: np.ndarray
    #: hard group name or ""
    group: np.ndarray

    def where(self, mask: np.ndarray) -> Pairs:
        return Pairs(
            self.d[mask], self.same[mask], self.set_a[mask], self.set_b[mask], self.group[mask]
        )

    def involving(self, name: str) -> np.ndarray:
        return (self.set_a == name) | (self.set_b == name)


def make_pairs(items: list[Item]) -> Pairs:
    """Every comparison a verification could make: reference side x live side."""
    rows: list[tuple[float, bool, str, str, str]] = []
    for a, b in itertools.combinations(items, 2):
        kinds = {a.kind, b.kind}
        if kinds == {"photo"}:
            pass  # photo against photo
        elif kinds == {"document", "live"}:
            doc, live = (a, b) if a.kind == "document" else (b, a)
            if doc.who == live.who and live.t0 - MIN_GAP_S < doc.t0 < live.t1 + MIN_GAP_S:
                continue  # the document frame is (next to) one of the live frames
        elif kinds == {"photo", "live"}:
            pass  # a photo as the reference against a clip's live face
        else:
            continue  # document x document, live x live, document x photo: not a verification
        same = a.who == b.who
        group = ""
        if not same:
            for g, member in HARD_GROUPS.items():
                if member(a.who) and member(b.who):
                    group = g
        rows.append((float(np.linalg.norm(a.vector - b.vector)), same, a.set, b.set, group))
    d, same, sa, sb, g = zip(*rows, strict=True)
    return Pairs(np.array(d), np.array(same), np.array(sa), np.array(sb), np.array(g))


def far_upper_bound(false_accepts: int, n: int, confidence: float = 0.95) -> float:
    """One-sided Clopper-Pearson upper bound of a rate seen as false_accepts / n."""
    if n == 0:
        return 1.0
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


GRID = np.round(np.arange(0.20, 0.90, 0.005), 3)


def choose(train: Pairs, max_far: float, max_false_reject: float) -> tuple[float, float]:
    """(accept, reject) chosen on ``train`` (see the module's docstring)."""
    diff = train.d[~train.same]
    accept = float(GRID[0])
    for t in GRID:
        ok = far_upper_bound(int((diff <= t).sum()), len(diff)) <= max_far
        for g in HARD_GROUPS:
            hard = train.d[train.group == g]
            if len(hard):
                ok = ok and float((hard <= t).mean()) <= max_far
        if not ok:
            break
        accept = float(t)
    # per set, not pooled: the sets' same-person distances differ (photos years apart, one
    # sitting), and the pool is dominated by the largest set
    reject = accept
    for name in SETS:
        own = train.same & (train.set_a == name) & (train.set_b == name)
        if not own.any():
            continue
        same_set = train.d[own]
        for t in GRID:
            if t >= reject and float((same_set > t).mean()) <= max_false_reject:
                reject = float(t)
                break
    return accept, reject


def outcome(p: Pairs, accept: float, reject: float) -> dict[str, object]:
    same, diff = p.d[p.same], p.d[~p.same]
    n_same, n_diff = len(same), len(diff)
    fa = int((diff <= accept).sum())
    fr = int((same > accept).sum())

    def share(x: int, n: int) -> float | None:
        return None if n == 0 else x / n

    return {
        "same_pairs": n_same,
        "different_pairs": n_diff,
        "accept": accept,
        "reject": reject,
        "same_matched": share(int((same <= accept).sum()), n_same),
        "same_inconclusive": share(int(((same > accept) & (same <= reject)).sum()), n_same),
        "same_no_match": share(int((same > reject).sum()), n_same),
        "different_matched": share(fa, n_diff),
        "different_inconclusive": share(int(((diff > accept) & (diff <= reject)).sum()), n_diff),
        "far_upper_95": far_upper_bound(fa, n_diff),
        "two_way_frr": share(fr, n_same),
        "two_way_accuracy": share(n_same + n_diff - fa - fr, n_same + n_diff),
        "false_accepts": fa,
        "same_max": None if not n_same else round(float(same.max()), 4),
        "different_min": None if not n_diff else round(float(diff.min()), 4),
        **{
            f"{g}_different_min": round(float(p.d[p.group == g].min()), 4)
            for g in HARD_GROUPS
            if (p.group == g).any()
        },
    }


def roc(p: Pairs) -> list[dict[str, float | None]]:
    same, diff = p.d[p.same], p.d[~p.same]
    out = []
    for t in np.round(np.arange(0.30, 0.66, 0.05), 2):
        out.append(
            {
                "threshold": float(t),
                "far": None if not len(diff) else float((diff <= t).mean()),
                "frr": None if not len(same) else float((same > t).mean()),
            }
        )
    return out


def pct(x: object) -> str:
    return "-" if x is None else f"{float(x):.2%}"  # type: ignore[arg-type]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument(
        "--frames", type=int, default=5, help="live frames averaged per verification (default 5)"
    )
    parser.add_argument(
        "--upscale",
        action="store_true",
        help="upscale reference faces under 110 px before embedding (measured: no gain)",
    )
    parser.add_argument("--max-far", type=float, default=0.001, help="FAR target (0.001 = 0.1 %%)")
    parser.add_argument(
        "--max-false-reject",
        type=float,
        default=0.01,
        help="same-person pairs allowed above the reject threshold (0.01 = 1 %%)",
    )
    args = parser.parse_args(argv)

    root = find_data()
    started = time.perf_counter()
    items: list[Item] = []
    skipped: list[dict[str, str]] = []
    for who, path in labelled_images(root):
        rel = str(path.relative_to(root))
        try:
            ref = reference_from_image(path.read_bytes(), upscale=args.upscale)
        except IdentityError as exc:
            skipped.append({"image": rel, "error": exc.code})
            continue
        items.append(Item(SET_OF[who], who, "photo", rel, ref.embedding))
    clip, gates = clip_items(root, args.frames, args.upscale)
    items += clip
    embed_s = time.perf_counter() - started
    pairs = make_pairs(items)

    folds = {}
    for held in SETS:
        test = pairs.involving(held)
        accept, reject = choose(pairs.where(~test), args.max_far, args.max_false_reject)
        folds[held] = outcome(pairs.where(test), accept, reject)
    accept, reject = choose(pairs, args.max_far, args.max_false_reject)
    # pairs across two sets are held out in two folds; count each pair once, in the fold of
    # the later set of SETS, to pool without double counting
    pooled_rows: list[tuple[float, bool, float, float]] = []
    for i, held in enumerate(SETS):
        test = pairs.involving(held)
        earlier = np.zeros_like(test)
        for other in SETS[i + 1 :]:
            earlier |= pairs.involving(other)
        own = test & ~earlier
        f = folds[held]
        for d, s in zip(pairs.d[own], pairs.same[own], strict=True):
            pooled_rows.append((float(d), bool(s), float(f["accept"]), float(f["reject"])))  # type: ignore[arg-type]
    d = np.array([r[0] for r in pooled_rows])
    s = np.array([r[1] for r in pooled_rows])
    acc = np.array([r[2] for r in pooled_rows])
    rej = np.array([r[3] for r in pooled_rows])
    n_same, n_diff = int(s.sum()), int((~s).sum())
    fa = int(((d <= acc) & ~s).sum())
    fr = int(((d > acc) & s).sum())
    pooled = {
        "same_pairs": n_same,
        "different_pairs": n_diff,
        "same_matched": float(((d <= acc) & s).sum() / n_same),
        "same_inconclusive": float(((d > acc) & (d <= rej) & s).sum() / n_same),
        "same_no_match": float(((d > rej) & s).sum() / n_same),
        "different_matched": fa / n_diff,
        "different_inconclusive": float(((d > acc) & (d <= rej) & ~s).sum() / n_diff),
        "far_upper_95": far_upper_bound(fa, n_diff),
        "two_way_frr": fr / n_same,
        "two_way_accuracy": (n_same + n_diff - fa - fr) / (n_same + n_diff),
        "false_accepts": fa,
    }
    result = {
        "items": {
            "photos": sum(1 for i in items if i.kind == "photo"),
            "documents_from_clips": sum(1 for i in items if i.kind == "document"),
            "live_windows": sum(1 for i in items if i.kind == "live"),
        },
        "skipped": skipped,
        "clip_quality": gates,
        "frames_per_window": args.frames,
        "upscale": args.upscale,
        "pairs": len(pairs.d),
        "same_pairs": int(pairs.same.sum()),
        "different_pairs": int((~pairs.same).sum()),
        "max_far": args.max_far,
        "max_false_reject": args.max_false_reject,
        "folds": folds,
        "leave_one_set_out": pooled,
        "chosen": {"accept": accept, "reject": reject},
        "shipped": {"accept": ACCEPT_THRESHOLD, "reject": REJECT_THRESHOLD},
        "at_shipped": {
            **{
                held: outcome(
                    pairs.where(pairs.involving(held)), ACCEPT_THRESHOLD, REJECT_THRESHOLD
                )
                for held in SETS
            },
            "all": outcome(pairs, ACCEPT_THRESHOLD, REJECT_THRESHOLD),
        },
        "roc": {held: roc(pairs.where(pairs.involving(held))) for held in SETS},
        "embed_seconds": round(embed_s, 1),
    }
    if args.json:
        print(json.dumps(result))
        return 0
    it = result["items"]
    print(
        f"{it['photos']} photos, {it['documents_from_clips']} document photos made from clip "
        f"frames, {it['live_windows']} live windows of {args.frames} frames "
        f"(upscale={args.upscale}); {len(skipped)} photos unusable {skipped}; "
        f"embedded in {embed_s:.0f} s"
    )
    print(f"clip frames through the quality gates: {gates}")
    print(
        f"{result['pairs']} pairs: {result['same_pairs']} same-person, "
        f"{result['different_pairs']} different-person"
    )
    head = (
        f"{'held out':<17}{'same':>6}{'diff':>7}{'accept':>8}{'reject':>8}"
        f"{'matched':>9}{'inconcl.':>9}{'no match':>9}{'FAR':>8}{'FAR95':>8}"
        f"{'2way FRR':>9}{'2way acc':>9}"
    )

    def row(name: str, f: dict) -> str:
        return (
            f"{name:<17}{f['same_pairs']:>6}{f['different_pairs']:>7}"
            f"{f.get('accept', '-'):>8}{f.get('reject', '-'):>8}"
            f"{pct(f['same_matched']):>9}{pct(f['same_inconclusive']):>9}"
            f"{pct(f['same_no_match']):>9}{pct(f['different_matched']):>8}"
            f"{pct(f['far_upper_95']):>8}{pct(f['two_way_frr']):>9}"
            f"{pct(f['two_way_accuracy']):>9}"
        )

    print("leave one set out (thresholds chosen without the held-out set):")
    print(head)
    for held in SETS:
        print(row(held, folds[held]))
    print(row("pooled", pooled))
    print(f"chosen on all pairs: accept {accept}, reject {reject}")
    print(f"at the shipped thresholds (accept {ACCEPT_THRESHOLD}, reject {REJECT_THRESHOLD}):")
    print(head)
    for name, f in result["at_shipped"].items():
        print(row(name, {**f, "accept": ACCEPT_THRESHOLD, "reject": REJECT_THRESHOLD}))
    print("ROC per set (two-way FAR / FRR):")
    print(f"{'threshold':<17}" + "".join(f"{s:>22}" for s in SETS))
    for k, t in enumerate(np.round(np.arange(0.30, 0.66, 0.05), 2)):
        cells = []
        for held in SETS:
            r = result["roc"][held][k]
            cells.append(f"{pct(r['far']) + ' / ' + pct(r['frr']):>22}")
        print(f"{t:<17.2f}" + "".join(cells))
    return 0


if __name__ == "__main__":
    sys.exit(main())

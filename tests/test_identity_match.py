"""Face verification on real photos: same people accepted, different people (the five Johns too) rejected."""

from __future__ import annotations

import functools
import itertools
import json

import numpy as np
import pytest
from PIL import Image, ImageEnhance

from identity import (
    DEFAULT_THRESHOLD,
    MultipleFaces,
    Reference,
    compare,
    embedding_from_bytes,
    embedding_to_bytes,
    find_document_face,
    reference_from_image,
    verify_frame,
)
from identity.cli import compare_images, compare_pairs
from identity.images import load_image_file
from identity.video import read_frames

from .helpers import shared_data

FR = "faces/face_recognition"
JOHNS = ["Salley", "Savage", "Schneider", "Shimkus", "Simm"]
PASSPORT = "id_specimens/passporteye/passport-td3.jpg"
ID_CARD = "id_specimens/passporteye/passport-td2.jpg"


@functools.cache
def ref(relative: str) -> Reference:
    return reference_from_image(load_image_file(shared_data(relative)))


def john(name: str, i: int) -> str:
    folder = shared_data(f"faces/dlib_johns/John_{name}")
    return str(sorted(folder.iterdir())[i].relative_to(folder.parent.parent.parent))


SAME = [
    (f"{FR}/examples/obama.jpg", f"{FR}/tests/test_images/obama3.jpg"),
    (f"{FR}/examples/obama.jpg", f"{FR}/examples/obama2.jpg"),
    (f"{FR}/examples/obama2.jpg", f"{FR}/examples/knn_examples/test/obama1.jpg"),
    (f"{FR}/examples/obama.jpg", f"{FR}/examples/obama-240p.jpg"),
    (f"{FR}/examples/obama.jpg", f"{FR}/tests/test_images/obama_partial_face.jpg"),
    ("faces/openface/examples/lennon-1.jpg", "faces/openface/examples-aligned/lennon-1.png"),
    ("faces/openface/examples/clapton-1.jpg", "faces/openface/examples-aligned/clapton-1.png"),
    (
        f"{FR}/examples/knn_examples/train/kit_harington/john1.jpeg",
        f"{FR}/examples/knn_examples/test/johnsnow_test1.jpg",
    ),
    (
        f"{FR}/examples/knn_examples/train/alex_lacamoire/img1.jpg",
        f"{FR}/examples/knn_examples/test/alex_lacamoire1.jpg",
    ),
    (PASSPORT, ID_CARD),
]
#: same person, photos taken years apart: at or past the strict default threshold
EDGE = [
    ("faces/openface/examples/lennon-1.jpg", "faces/openface/examples/lennon-2.jpg"),
    ("faces/openface/examples/clapton-1.jpg", "faces/openface/examples/clapton-2.jpg"),
    (f"{FR}/examples/biden.jpg", f"{FR}/examples/knn_examples/train/biden/biden2.jpg"),
    (
        f"{FR}/examples/knn_examples/train/rose_leslie/img1.jpg",
        f"{FR}/examples/knn_examples/train/rose_leslie/img2.jpg",
    ),
]
DIFFERENT = [
    (f"{FR}/examples/obama.jpg", f"{FR}/examples/biden.jpg"),
    ("faces/openface/examples/lennon-1.jpg", "faces/openface/examples/clapton-1.jpg"),
    (
        f"{FR}/examples/knn_examples/train/rose_leslie/img1.jpg",
        f"{FR}/examples/knn_examples/train/kit_harington/john1.jpeg",
    ),
    (PASSPORT, f"{FR}/examples/knn_examples/train/rose_leslie/img2.jpg"),
]


@pytest.mark.parametrize(("a", "b"), SAME, ids=lambda p: p.rsplit("/", 1)[-1])
def test_same_person_is_accepted(a: str, b: str):
    m = compare(ref(a), ref(b).embedding)
    assert m.match, f"{a} vs {b}: {m}"
    assert m.threshold == DEFAULT_THRESHOLD and m.score >= 50


@pytest.mark.parametrize(("a", "b"), DIFFERENT, ids=lambda p: p.rsplit("/", 1)[-1])
def test_different_people_are_rejected(a: str, b: str):
    m = compare(ref(a), ref(b).embedding)
    assert not m.match, f"{a} vs {b}: {m}"
    assert m.score < 50


@pytest.mark.parametrize(("a", "b"), EDGE, ids=lambda p: p.rsplit("/", 1)[-1])
def test_photos_years_apart_are_the_price_of_the_strict_threshold(a: str, b: str):
    """Documented false rejects. The default (0.40) is strict because dlib's model puts
    frames of different East Asian men as close as 0.39 (bench/identity_eval.py). These
    photos of one person, taken years apart, are 0.40-0.48 apart: at or past the default,
    though dlib's customary 0.6 accepts them -- and 99.9 % of the frame pairs of
    different East Asian men with them."""
    m = compare(ref(a), ref(b).embedding)
    assert DEFAULT_THRESHOLD - 0.01 < m.distance < 0.5
    assert compare(ref(a), ref(b).embedding, threshold=0.6).match


def test_different_east_asian_men_are_rejected():
    """The pairs that set the default threshold: three men in the shared clips."""
    men = {
        clip: reference_from_image(_frame(f"videos/{clip}.mp4", 30)).embedding
        for clip in ("d13", "d0", "d12")
    }
    for (c1, e1), (c2, e2) in itertools.combinations(men.items(), 2):
        m = compare(e1, e2)
        assert not m.match, f"{c1} accepted as {c2} ({m.distance:.3f})"
        assert compare(e1, e2, threshold=0.6).match  # what dlib's customary threshold would do


def test_the_five_johns_are_never_taken_for_one_another():
    chips = {name: [ref(john(name, i)).embedding for i in (0, 4, 8)] for name in JOHNS}
    for (n1, v1), (n2, v2) in itertools.combinations(chips.items(), 2):
        for x in v1:
            for y in v2:
                m = compare(x, y)
                assert not m.match, f"John {n1} accepted as John {n2} ({m.distance:.3f})"
    # every chip's nearest other chip is the same John; most same-John pairs pass the threshold
    flat = [(name, v) for name, vs in chips.items() for v in vs]
    for i, (name, v) in enumerate(flat):
        nearest = min((np.linalg.norm(v - w), other) for j, (other, w) in enumerate(flat) if j != i)
        assert nearest[1] == name
    same = [compare(x, y).match for vs in chips.values() for x, y in itertools.combinations(vs, 2)]
    assert sum(same) / len(same) >= 0.7, f"{sum(same)} of {len(same)} same-John pairs accepted"


@pytest.mark.parametrize("document", [PASSPORT, ID_CARD])
def test_icao_specimen_yields_exactly_the_holders_face(document: str):
    doc = find_document_face(load_image_file(shared_data(document)))
    assert doc.secondary == () and doc.strategy == "hog"
    # the portrait sits in the left third, upper half, of both specimens
    h, w = doc.image.shape[:2]
    cx, cy = doc.box.center
    assert cx < w / 3 and cy < h * 0.7 and doc.box.width > 100


def _paste_face(
    document: np.ndarray, face_from: np.ndarray, box, scale: float, at: tuple[int, int], faded: bool
) -> np.ndarray:
    """``document`` with the (enlarged) face of ``face_from`` pasted smaller at ``at``: a ghost portrait."""
    pad = box.width // 2
    crop = Image.fromarray(face_from).crop(
        (box.left - pad, box.top - pad, box.right + pad, box.bottom + pad)
    )
    crop = crop.resize((int(crop.width * scale), int(crop.height * scale)))
    if faded:  # ghost images are printed light and low-contrast
        crop = ImageEnhance.Contrast(crop.convert("L").convert("RGB")).enhance(0.7)
    out = Image.fromarray(document)
    out.paste(crop, at)
    return np.asarray(out)


def test_ghost_portrait_of_the_holder_is_ignored_but_a_second_person_is_not():
    doc = find_document_face(load_image_file(shared_data(PASSPORT)))
    image = doc.image
    # a ghost: the holder again, 45 % of the size, faded, right of the data block
    ghost = _paste_face(image, image, doc.box, 0.45, (1040, 420), faded=True)
    r = reference_from_image(ghost)
    assert r.box == doc.box and r.secondary_faces == 1
    assert r.ghost_distance is not None and r.ghost_distance < DEFAULT_THRESHOLD
    assert compare(ref(PASSPORT), r.embedding).match
    # the same small size, but someone else: refused
    other = find_document_face(load_image_file(shared_data(f"{FR}/examples/biden.jpg")))
    scale = 0.45 * doc.box.width / other.box.width
    intruder = _paste_face(image, other.image, other.box, scale, (1040, 420), faded=True)
    with pytest.raises(MultipleFaces, match="different person"):
        reference_from_image(intruder)


def test_small_and_far_document_faces_are_found_by_upsampling_and_tiles():
    passport = Image.open(shared_data(PASSPORT)).convert("RGB")
    small = passport.resize((380, 251))  # face ~50 px: below HOG's 80 px
    r_small = reference_from_image(np.asarray(small))
    assert r_small.strategy.startswith("hog+upsample")
    # a phone photo of the passport lying on a big table: 3600 px wide, passport 480 px
    table = Image.new("RGB", (3600, 2700), (120, 110, 100))
    table.paste(passport.resize((480, 317)), (2400, 1900))
    r_far = reference_from_image(np.asarray(table))
    assert r_far.strategy == "tiles"
    for r in (r_small, r_far):
        assert compare(ref(ID_CARD), r.embedding).match


@pytest.mark.parametrize(
    "image",
    [
        f"{FR}/examples/two_people.jpg",
        f"{FR}/examples/knn_examples/test/kit_with_rose.jpg",
        "faces/openface/examples/longoria-cooper.jpg",
    ],
)
def test_two_people_in_a_reference_photo_raise_multiple_faces(image: str):
    with pytest.raises(MultipleFaces) as exc:
        reference_from_image(shared_data(image).read_bytes())
    assert exc.value.code == "multiple_faces" and exc.value.count >= 2
    assert "多张人脸" in exc.value.message_zh


def test_embedding_bytes_round_trip_for_encrypted_storage():
    r = ref(PASSPORT)
    data = r.embedding_bytes()
    assert len(data) == 512 and embedding_to_bytes(embedding_from_bytes(data)) == data
    assert "embedding" not in json.dumps(r.as_dict())  # never in what is shown or logged


def _frame(video: str, index: int) -> np.ndarray:
    return next(iter(read_frames(shared_data(video), indices={index}))).rgb


def test_live_frame_verification_with_quality_gates():
    clip = "videos/d13.mp4"
    live_ref = reference_from_image(_frame(clip, 150))
    frame = _frame(clip, 20)
    ok = verify_frame(live_ref, frame)
    assert ok.verified and ok.reason == "match" and ok.quality.ok
    other = verify_frame(ref(PASSPORT), frame)
    assert not other.verified and other.reason == "mismatch" and other.match is not None
    dark = verify_frame(live_ref, (frame * 0.25).astype(np.uint8))
    assert dark.reason == "too_dark" and dark.match is None and "太暗" in dark.message_zh
    bright = verify_frame(live_ref, np.clip(frame.astype(np.int16) + 150, 0, 255).astype(np.uint8))
    assert bright.reason in ("too_bright", "no_face")
    blurred = np.asarray(
        Image.fromarray(frame).resize((45, 80)).resize(frame.shape[1::-1], Image.BILINEAR)
    )
    assert verify_frame(live_ref, blurred).reason in ("blurred", "no_face")
    # the customer far from the camera: a 640x480 frame with the face ~60 px
    far = np.zeros((480, 640, 3), np.uint8)
    far[200:360, 300:390] = np.asarray(Image.fromarray(frame).resize((90, 160)))
    assert verify_frame(live_ref, far).reason in ("face_too_small", "no_face")
    two = verify_frame(
        live_ref,
        np.asarray(Image.open(shared_data(f"{FR}/examples/two_people.jpg")).convert("RGB")),
    )
    assert two.reason == "multiple_faces" and not two.verified


def test_operator_cli_compare_and_pairs(tmp_path):
    root = shared_data("faces")
    out = compare_images(
        root / "openface/examples/lennon-1.jpg", root / "openface/examples-aligned/lennon-1.png"
    )
    assert (
        out["match"] is True
        and out["threshold"] == DEFAULT_THRESHOLD
        and 0 < out["distance"] < out["threshold"]
    )
    assert compare_images(
        root / "dlib_multi/dogs.jpg", root / "openface/examples/lennon-1.jpg"
    ) == {"error": "no_face", "message": "no face found in the image", "image": "a"}
    pairs = tmp_path / "pairs.csv"
    pairs.write_text(
        "img_a,img_b\n"
        "openface/examples/lennon-1.jpg,openface/examples-aligned/lennon-1.png\n"
        "openface/examples/lennon-1.jpg,openface/examples/clapton-1.jpg\n"
        "face_recognition/examples/two_people.jpg,openface/examples/lennon-1.jpg\n"
        "../../../etc/passwd,openface/examples/lennon-1.jpg\n"
        "openface/examples/missing.jpg,openface/examples/lennon-1.jpg\n",
        encoding="utf-8",
    )
    rows = list(compare_pairs(pairs, root))
    assert [r.get("match") for r in rows[:2]] == [True, False]
    assert all(set(r) >= {"img_a", "img_b"} for r in rows)
    assert rows[2]["error"] == "multiple_faces"
    assert rows[3]["error"] == "bad_image" and "outside" in rows[3]["message"]
    assert rows[4]["error"] == "bad_image"
    json.dumps(rows)  # one JSON line per pair

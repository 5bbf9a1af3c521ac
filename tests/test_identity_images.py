"""Uploads that are not what they should be: clear errors, nothing crashes; odd but valid images work."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from identity import (
    ImageError,
    ImageLimits,
    ImageTooLarge,
    ImageTooSmall,
    NoFace,
    compare,
    load_image,
    reference_from_image,
)
from identity.face_detect import detect_faces

from .helpers import shared_data

OBAMA = "faces/face_recognition/examples/obama.jpg"


def jpeg(im: Image.Image, **kwargs) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=92, **kwargs)
    return buf.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A valid PNG signature and IHDR claiming ``width`` x ``height``, with 1 byte of pixel data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0"))
        + chunk(b"IEND", b"")
    )


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"%PDF-1.7\n1 0 obj << /Type /Catalog >> endobj\n", "not an image"),
        ("这不是图片".encode(), "not an image"),
        (b"", "not an image"),
        (b"GIF89a" + b"\0" * 100, "not an image"),  # a format we do not decode
    ],
)
def test_not_an_image_is_refused_with_a_clear_message(data: bytes, message: str):
    with pytest.raises(ImageError) as exc:
        load_image(data)
    assert message in str(exc.value) and exc.value.code == "bad_image"


def test_huge_dimensions_are_refused_before_decoding():
    # 10^10 pixels claimed in 60 bytes: a decompression bomb must not be decoded
    bomb = png_header_only(100_000, 100_000)
    assert len(bomb) < 100
    with pytest.raises(ImageTooLarge) as exc:
        load_image(bomb)
    assert (
        str(exc.value) == "image too large (max 8000x8000)" and exc.value.code == "image_too_large"
    )
    # below Pillow's own bomb limit but above ours
    with pytest.raises(ImageTooLarge, match=r"max 8000x8000"):
        load_image(png_header_only(9000, 100))


def test_too_many_bytes_and_too_few_pixels():
    with pytest.raises(ImageTooLarge, match="max 1 MB"):
        load_image(b"\xff\xd8" + b"\0" * (1024 * 1024 + 1), ImageLimits(max_bytes=1024 * 1024))
    one_pixel = io.BytesIO()
    Image.new("RGB", (1, 1), (128, 128, 128)).save(one_pixel, "PNG")
    with pytest.raises(ImageTooSmall) as exc:
        load_image(one_pixel.getvalue())
    assert "1x1" in str(exc.value) and exc.value.code == "image_too_small"


def test_truncated_jpeg_is_a_damaged_image():
    data = shared_data(OBAMA).read_bytes()
    with pytest.raises(ImageError, match="damaged or truncated"):
        load_image(data[: len(data) // 3])


def test_grayscale_rgba_cmyk_and_16_bit_become_rgb_and_still_match():
    color = Image.open(shared_data(OBAMA))
    reference = reference_from_image(shared_data(OBAMA).read_bytes())
    # grayscale JPEG
    gray = load_image(jpeg(color.convert("L")))
    assert gray.shape[2] == 3 and gray.dtype == np.uint8
    # CMYK JPEG
    cmyk = load_image(jpeg(color.convert("CMYK")))
    assert cmyk.shape == (color.height, color.width, 3)
    # 16-bit grayscale PNG
    wide = np.asarray(color.convert("L"), dtype=np.uint16) * 257
    buf = io.BytesIO()
    Image.fromarray(wide).save(buf, "PNG")
    sixteen = load_image(buf.getvalue())
    assert sixteen.dtype == np.uint8 and 0 < sixteen.mean() < 255
    for rgb in (gray, cmyk, sixteen):
        assert compare(reference, reference_from_image(rgb).embedding).match


def test_rgba_png_is_flattened_and_matches_the_jpeg():
    rgba_bytes = shared_data("faces/face_recognition/tests/test_images/32bit.png").read_bytes()
    assert Image.open(io.BytesIO(rgba_bytes)).mode == "RGBA"
    rgb = load_image(rgba_bytes)
    assert rgb.shape[2] == 3
    same = reference_from_image(
        shared_data("faces/face_recognition/examples/obama2.jpg").read_bytes()
    )
    assert compare(same, reference_from_image(rgb).embedding).match


def test_exif_rotated_photo_is_turned_upright():
    upright = Image.open(shared_data(OBAMA)).convert("RGB")
    upright.thumbnail((640, 640))
    # what a phone writes: pixels stored sideways, EXIF orientation 6 ("rotate 90 clockwise to view")
    sideways = upright.transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6
    data = jpeg(sideways, exif=exif.tobytes())
    raw = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    assert raw.shape[:2] == (upright.width, upright.height)
    assert detect_faces(raw) == []  # sideways: HOG finds nothing
    rgb = load_image(data)
    assert rgb.shape[:2] == (upright.height, upright.width)
    ref = reference_from_image(data)
    assert ref.strategy == "hog"
    # the same sideways pixels without the EXIF tag: found by the rotation fallback
    no_exif = reference_from_image(jpeg(sideways))
    assert no_exif.strategy.startswith("rotated")
    assert compare(ref, no_exif.embedding).match


def test_a_photo_of_dogs_has_no_face():
    with pytest.raises(NoFace) as exc:
        reference_from_image(shared_data("faces/dlib_multi/dogs.jpg").read_bytes())
    assert exc.value.code == "no_face" and exc.value.message_zh

"""Load an uploaded image safely and turn it into an RGB array.

An ID photo arrives as bytes from a customer or the bank's system: it may be
anything. :func:`load_image` accepts JPEG, PNG, WebP, BMP and TIFF only,
refuses more than ``max_bytes`` bytes, reads the header first and refuses an
image larger than ``max_side`` x ``max_side`` pixels *before* decoding it (a
10 kB PNG can claim 100000 x 100000 pixels), applies the EXIF orientation, and
converts grayscale, 16-bit, palette, RGBA/LA (flattened on white) and CMYK to
8-bit RGB. :func:`downscale` shrinks it for detection.
"""

from __future__ import annotations

import io
import struct
import warnings
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from .exceptions import ImageError, ImageTooLarge, ImageTooSmall

#: Pillow decoders we let loose on untrusted bytes
FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "TIFF")


@dataclass(frozen=True)
class ImageLimits:
    """What an upload may be."""

    #: largest file accepted, in bytes
    max_bytes: int = 15 * 1024 * 1024
    #: largest width and height, in pixels (checked from the header, before decoding)
    max_side: int = 8000
    #: smallest width and height: below this no face can be usable
    min_side: int = 48


DEFAULT_LIMITS = ImageLimits()


def load_image(data: bytes, limits: ImageLimits = DEFAULT_LIMITS) -> np.ndarray:
    """Decode ``data`` into an upright ``uint8`` RGB array of shape (h, w, 3).

    Raises :class:`ImageError` ("not an image", damaged), :class:`ImageTooLarge`
    or :class:`ImageTooSmall`.
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise ImageError("not an image (expected bytes)")
    if len(data) == 0:
        raise ImageError("not an image (empty file)")
    if len(data) > limits.max_bytes:
        raise ImageTooLarge(f"image too large (max {limits.max_bytes // (1024 * 1024)} MB)")
    too_large = f"image too large (max {limits.max_side}x{limits.max_side})"
    try:
        with warnings.catch_warnings():
            # Pillow's own bomb guard: a warning above MAX_IMAGE_PIXELS, an error above twice that
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im: Image.Image = Image.open(io.BytesIO(data), formats=FORMATS)
            width, height = im.size  # header only: nothing decoded yet
            if width > limits.max_side or height > limits.max_side:
                raise ImageTooLarge(too_large)
            if width < limits.min_side or height < limits.min_side:
                raise ImageTooSmall(
                    f"image too small ({width}x{height}, min {limits.min_side}x{limits.min_side})"
                )
            # face_recognition's import sets Pillow's process-wide LOAD_TRUNCATED_IMAGES,
            # which would let a damaged upload decode as a half-grey image: refuse it here
            ImageFile.LOAD_TRUNCATED_IMAGES = False
            im.load()
            im = ImageOps.exif_transpose(im) or im
            return _to_rgb(im)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageTooLarge(too_large) from exc
    except UnidentifiedImageError as exc:
        raise ImageError("not an image (JPEG, PNG, WebP, BMP or TIFF expected)") from exc
    except ImageError:
        raise
    except (OSError, ValueError, SyntaxError, EOFError, struct.error) as exc:
        raise ImageError(f"image is damaged or truncated ({exc.__class__.__name__})") from exc


def load_image_file(path: str | Path, limits: ImageLimits = DEFAULT_LIMITS) -> np.ndarray:
    """:func:`load_image` on a file (the size limit is checked before reading it)."""
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > limits.max_bytes:
            raise ImageTooLarge(f"image too large (max {limits.max_bytes // (1024 * 1024)} MB)")
        data = path.read_bytes()
    except OSError as exc:
        raise ImageError(f"cannot read {path.name}: {exc.strerror or exc}") from exc
    return load_image(data, limits)


def downscale(rgb: np.ndarray, max_side: int) -> tuple[np.ndarray, float]:
    """``rgb`` shrunk so that its longer side is at most ``max_side``, and the scale used."""
    h, w = rgb.shape[:2]
    scale = max_side / max(h, w)
    if scale >= 1.0:
        return rgb, 1.0
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return cv2.resize(rgb, size, interpolation=cv2.INTER_AREA), scale


def _to_rgb(im: Image.Image) -> np.ndarray:
    mode = im.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(im, dtype=np.float64)
        top = arr.max() if arr.size else 0.0
        # 16-bit (or wider) grayscale: scale to 8 bits by the format's range
        arr = arr / 257.0 if top > 255 else arr
        gray = np.clip(arr, 0, 255).astype(np.uint8)
        return np.ascontiguousarray(np.repeat(gray[:, :, None], 3, axis=2))
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        im = Image.alpha_composite(white, rgba)
    if im.mode != "RGB":
        im = im.convert("RGB")  # L, 1, P, CMYK, YCbCr, LAB, RGBX...
    return np.ascontiguousarray(np.asarray(im, dtype=np.uint8))

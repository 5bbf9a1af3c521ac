"""Load an uploaded image safely and turn it into an RGB array.

An ID photo arrives as bytes from a customer or the bank's system: it may be
anything. :func:`load_image` accepts JPEG, PNG, WebP, BMP and TIFF only,
refuses more than ``max_bytes`` bytes, reads the header first and refuses an
image larger than ``max_side`` x ``max_side`` pixels, or of more than
``max_pixels`` pixels in all, *before* decoding it (a 10 kB PNG can claim
100000 x 100000 pixels; a 182 kB one 7999 x 7999, 64 million pixels, 192 MB
decoded), applies the EXIF orientation, and converts grayscale, 16-bit,
palette, RGBA/LA (flattened on white) and CMYK to 8-bit RGB. Pillow's own
decompression-bomb guard (``Image.MAX_IMAGE_PIXELS``, 89 MP, process-wide and
left as it is) fires in ``Image.open`` for what is larger still: its warning and
error are :class:`ImageTooLarge` too. :func:`inspect_image` makes the header
checks alone, cheaply, so that the server refuses an upload before a face
worker sees it. :func:`downscale` shrinks an image for detection.
"""

from __future__ import annotations

import contextlib
import io
import struct
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from .exceptions import ImageError, ImageTooLarge, ImageTooSmall

#: Pillow decoders we let loose on untrusted bytes, and the type each is served back as
FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "TIFF")
CONTENT_TYPES = {
    "JPEG": "image/jpeg",
    "PNG": "image/png",
    "WEBP": "image/webp",
    "BMP": "image/bmp",
    "TIFF": "image/tiff",
}


@dataclass(frozen=True)
class ImageLimits:
    """What an upload may be."""

    #: largest file accepted, in bytes
    max_bytes: int = 15 * 1024 * 1024
    #: largest width and height, in pixels (checked from the header, before decoding)
    max_side: int = 8000
    #: decoded-pixel budget, width x height (checked from the header, before decoding): 24 MP
    #: takes any phone's normal photo (12-20 MP) and a 24 MP camera's; 72 MB as RGB
    max_pixels: int = 24_000_000
    #: smallest width and height: below this no face can be usable
    min_side: int = 48


DEFAULT_LIMITS = ImageLimits()


@dataclass(frozen=True)
class ImageInfo:
    """What an image's header says (nothing decoded)."""

    width: int
    height: int
    #: Pillow's format name (one of :data:`FORMATS`)
    format: str

    @property
    def content_type(self) -> str:
        """The type to store and serve the image as (never what the uploader claimed)."""
        return CONTENT_TYPES[self.format]


def _open(data: bytes, limits: ImageLimits) -> tuple[Image.Image, ImageInfo]:
    """The lazily opened image and its header checked against ``limits`` (nothing decoded yet).

    Call under ``warnings.catch_warnings()`` with ``DecompressionBombWarning`` as an error."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise ImageError("not an image (expected bytes)")
    if len(data) == 0:
        raise ImageError("not an image (empty file)")
    if len(data) > limits.max_bytes:
        raise ImageTooLarge(f"image too large (max {limits.max_bytes // (1024 * 1024)} MB)")
    im: Image.Image = Image.open(io.BytesIO(data), formats=FORMATS)
    width, height = im.size  # header only: nothing decoded yet
    if width > limits.max_side or height > limits.max_side:
        raise ImageTooLarge(f"image too large (max {limits.max_side}x{limits.max_side})")
    if width * height > limits.max_pixels:
        raise ImageTooLarge(
            f"image too large ({width}x{height} is {width * height / 1e6:.0f} megapixels, "
            f"max {limits.max_pixels / 1e6:.0f})"
        )
    if width < limits.min_side or height < limits.min_side:
        raise ImageTooSmall(
            f"image too small ({width}x{height}, min {limits.min_side}x{limits.min_side})"
        )
    return im, ImageInfo(width, height, str(im.format))


def inspect_image(data: bytes, limits: ImageLimits = DEFAULT_LIMITS) -> ImageInfo:
    """The header checks of :func:`load_image` without decoding: type, bytes, sides, pixels.

    Raises what :func:`load_image` raises for them. Cheap (the header only), so the server
    makes it before an upload reaches a face worker."""
    with _errors(limits):
        return _open(data, limits)[1]


def load_image(data: bytes, limits: ImageLimits = DEFAULT_LIMITS) -> np.ndarray:
    """Decode ``data`` into an upright ``uint8`` RGB array of shape (h, w, 3).

    Raises :class:`ImageError` ("not an image", damaged), :class:`ImageTooLarge`
    or :class:`ImageTooSmall`.
    """
    with _errors(limits):
        im, _ = _open(data, limits)
        # face_recognition's import sets Pillow's process-wide LOAD_TRUNCATED_IMAGES,
        # which would let a damaged upload decode as a half-grey image: refuse it here
        ImageFile.LOAD_TRUNCATED_IMAGES = False
        im.load()
        im = ImageOps.exif_transpose(im) or im
        return _to_rgb(im)


@contextlib.contextmanager
def _errors(limits: ImageLimits) -> Iterator[None]:
    """Pillow's errors as :class:`ImageError` (its bomb guard's as :class:`ImageTooLarge`)."""
    try:
        with warnings.catch_warnings():
            # Pillow's own bomb guard: a warning above MAX_IMAGE_PIXELS, an error above twice that
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            yield
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        # above Pillow's own limit (89 MP): wider or taller than any side we take
        raise ImageTooLarge(f"image too large (max {limits.max_side}x{limits.max_side})") from exc
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

"""Errors raised by the identity package.

Each carries a stable machine-readable ``code`` (the server maps it to an HTTP
status and a JSON body ``{"error": code, "message": text}``) and the customer's
sentence in Chinese (``message_zh``). Messages never contain biometric data.
"""

from __future__ import annotations

from typing import Any

from .messages import text


class IdentityError(Exception):
    """Base class: a face image, frame or video cannot be used."""

    code = "identity_error"

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or text(self.code).en)

    @property
    def message(self) -> str:
        return str(self)

    def __reduce__(self) -> tuple[Any, ...]:
        # errors cross the worker-process boundary: keep message and attributes
        return (self.__class__, (str(self),), self.__dict__)

    @property
    def message_zh(self) -> str:
        return text(self.code).zh


class ImageError(IdentityError):
    """An upload is not an image we accept (format, size, damage)."""

    code = "bad_image"


class ImageTooLarge(ImageError):
    """Too many bytes or pixels (checked before decoding: decompression bombs stop here)."""

    code = "image_too_large"


class ImageTooSmall(ImageError):
    """Too few pixels to hold a usable face."""

    code = "image_too_small"


class NoFace(IdentityError):
    """No face was found."""

    code = "no_face"


class MultipleFaces(IdentityError):
    """More than one face where exactly one is needed. ``count`` faces were seen."""

    code = "multiple_faces"

    def __init__(self, message: str | None = None, *, count: int = 2) -> None:
        super().__init__(message)
        self.count = count


class PoorQuality(IdentityError):
    """A face was found but fails a quality gate (``code`` is the gate's code)."""

    def __init__(self, code: str, message: str | None = None) -> None:
        self.code = code
        super().__init__(message)

    def __reduce__(self) -> tuple[Any, ...]:
        return (PoorQuality, (self.code, str(self)), self.__dict__)


class VideoError(IdentityError):
    """A video file cannot be opened or decoded."""

    code = "bad_video"


class ChallengeError(IdentityError):
    """A liveness challenge is malformed (unknown step, no steps, bad time limit)."""

    code = "bad_challenge"


class WorkerClosed(IdentityError):
    """The face worker pool was closed."""

    code = "worker_closed"


class WorkerBusy(IdentityError):
    """Too many frames already wait for the face worker pool; skip this check."""

    code = "worker_busy"

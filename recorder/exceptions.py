"""Errors raised by the recorder package.

Each carries a stable machine-readable ``code`` for the server's edge
(HTTP JSON body, CLI exit message). Messages never contain key material.
"""

from __future__ import annotations


class RecorderError(Exception):
    """Base class: a recording cannot be written, read, finalised or verified."""

    code = "recorder_error"


class WrongKey(RecorderError):
    """The master key (or data key) is not the one this recording was encrypted with."""

    code = "wrong_key"


class IntegrityError(RecorderError):
    """Stored data does not match its hash, chain, signature or authentication tag.

    ``segment`` is the 1-based index of the first bad segment, when one is to blame.
    """

    code = "integrity_error"

    def __init__(self, message: str, *, segment: int | None = None) -> None:
        super().__init__(message)
        self.segment = segment


class StorageFull(RecorderError):
    """Sealed segments could not be stored (disk full or failing); they are still in memory."""

    code = "storage_full"


class StorageUnavailable(RecorderError, OSError):
    """The object store cannot be reached or refused the request (network, credentials, bucket).

    An ``OSError`` too, so code that already treats a failing disk as "retry later"
    treats an unreachable store the same way.
    """

    code = "storage_unavailable"


class EvidenceNotFound(RecorderError):
    """The identity evidence store holds no such session or item."""

    code = "evidence_not_found"


class EvidenceError(RecorderError):
    """Identity evidence cannot be read: tampered, moved to another session or kind, or another key."""

    code = "evidence_error"

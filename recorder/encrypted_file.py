"""Chunked AES-256-GCM files: encrypted at rest, yet any byte range decrypts on its own.

Layout::

    header = magic "VCENC001" | file id (8) | key check (8) | u32 chunk size | u64 plaintext size
    chunk* = AES-256-GCM(data key, nonce = file id | u32 chunk index, AAD = header) ciphertext || tag

Every chunk holds ``chunk size`` plaintext bytes (64 KiB) except the last. The
header is authenticated by every chunk, so a changed size, truncation or
reordering fails; the file id (random, top bit set) keeps nonces distinct from
other files and from segments under the same data key. The key check
(HMAC-SHA256(data key, "vcounter key check" | file id), 8 bytes) tells a wrong
key from corrupted data. A server answers an HTTP Range by decrypting only the
chunks it covers.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import struct
from collections.abc import Iterator
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from .exceptions import IntegrityError, WrongKey
from .storage import Blob, BlobWriter, LocalStorage

MAGIC = b"VCENC001"
HEADER = struct.Struct(">8s8s8sIQ")
CHUNK_SIZE = 64 << 10
TAG = 16
#: chunks read and decrypted per storage read when streaming
_BATCH = 16


def _key_check(data_key: bytes, file_id: bytes) -> bytes:
    return hmac.new(data_key, b"vcounter key check" + file_id, hashlib.sha256).digest()[:8]


class EncryptedWriter:
    """Streams ``size`` plaintext bytes into a :class:`BlobWriter` as a chunked encrypted file.

    ``sha256`` (hex) and ``stored_size`` describe the stored (encrypted) bytes after :meth:`close`.
    """

    def __init__(
        self, out: BlobWriter, data_key: bytes, size: int, *, chunk_size: int = CHUNK_SIZE
    ) -> None:
        file_id = bytes([os.urandom(1)[0] | 0x80]) + os.urandom(7)
        self._header = HEADER.pack(MAGIC, file_id, _key_check(data_key, file_id), chunk_size, size)
        self._file_id = file_id
        self._aead = AESGCM(data_key)
        self._out = out
        self._chunk_size = chunk_size
        self._size = size
        self._pending = bytearray()
        self._index = 0
        self._written = 0
        self._digest = hashlib.sha256()
        self.stored_size = 0
        self.sha256 = ""
        self._emit(self._header)

    def _emit(self, data: bytes) -> None:
        self._out.write(data)
        self._digest.update(data)
        self.stored_size += len(data)

    def _seal(self, chunk: bytes | bytearray) -> None:
        nonce = self._file_id + self._index.to_bytes(4, "big")
        self._emit(self._aead.encrypt(nonce, bytes(chunk), self._header))
        self._index += 1

    def write(self, data: bytes) -> None:
        self._written += len(data)
        if self._written > self._size:
            raise ValueError("more data than the declared size")
        self._pending += data
        full = len(self._pending) // self._chunk_size * self._chunk_size
        for start in range(0, full, self._chunk_size):
            self._seal(self._pending[start : start + self._chunk_size])
        del self._pending[:full]

    def close(self) -> None:
        """Seal the last chunk; the caller then commits (or aborts) the blob writer."""
        if self._written != self._size:
            raise ValueError(f"wrote {self._written} of {self._size} declared bytes")
        if self._pending:
            self._seal(self._pending)
            self._pending.clear()
        self.sha256 = self._digest.hexdigest()


class EncryptedFile:
    """A chunked encrypted file opened for random reads of its plaintext."""

    def __init__(self, blob: Blob, data_key: bytes) -> None:
        self._blob = blob
        head = blob.read(0, HEADER.size)
        if len(head) != HEADER.size or head[:8] != MAGIC:
            blob.close()
            raise IntegrityError("not a vcounter encrypted file")
        _, self._file_id, check, self._chunk_size, self.size = HEADER.unpack(head)
        if not hmac.compare_digest(check, _key_check(data_key, self._file_id)):
            blob.close()
            raise WrongKey("file is encrypted under another data key")
        self._header = head
        self._aead = AESGCM(data_key)
        self.chunks = -(-self.size // self._chunk_size)
        expected = HEADER.size + self.size + self.chunks * TAG
        if blob.size != expected:
            blob.close()
            raise IntegrityError(
                f"encrypted file is {blob.size} bytes, expected {expected} (truncated or padded)"
            )
        self._cached: tuple[int, bytes] | None = None

    def __enter__(self) -> EncryptedFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._blob.close()

    def _chunks(self, first: int, count: int) -> Iterator[bytes]:
        """Decrypt ``count`` consecutive chunks with one storage read."""
        stride = self._chunk_size + TAG
        sealed = self._blob.read(HEADER.size + first * stride, count * stride)
        for i in range(count):
            index = first + i
            piece = sealed[i * stride : (i + 1) * stride]
            try:
                yield self._aead.decrypt(
                    self._file_id + index.to_bytes(4, "big"), piece, self._header
                )
            except InvalidTag:
                raise IntegrityError(
                    f"chunk {index} does not decrypt (authentication tag mismatch)"
                ) from None

    def read(self, offset: int, length: int) -> bytes:
        """Plaintext bytes ``[offset, offset + length)``, clipped to the end of the file."""
        if offset < 0 or length < 0:
            raise ValueError("negative offset or length")
        end = min(offset + length, self.size)
        if offset >= end:
            return b""
        first, last = offset // self._chunk_size, (end - 1) // self._chunk_size
        if self._cached and self._cached[0] == first == last:
            plain = self._cached[1]
        else:
            plain = b"".join(self._chunks(first, last - first + 1))
            if first == last:
                self._cached = (first, plain)
        start = offset - first * self._chunk_size
        return plain[start : start + end - offset]

    def iter_plaintext(self) -> Iterator[bytes]:
        """All plaintext, decrypted (and so authenticated) chunk by chunk."""
        for first in range(0, self.chunks, _BATCH):
            yield from self._chunks(first, min(_BATCH, self.chunks - first))


def open_encrypted(source: str | Path | Blob, data_key: bytes) -> EncryptedFile:
    """Open a chunked encrypted file (a path, or a :class:`Blob` from a :class:`Storage`)."""
    if isinstance(source, str | Path):
        path = Path(source)
        source = LocalStorage(path.parent).open(path.name)
    return EncryptedFile(source, data_key)

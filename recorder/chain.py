"""The hash chain over sealed segments, and streamed hashing of stored objects.

``chain_0 = SHA256("vcounter-recording\\0" || session_id)`` and
``chain_i = SHA256(chain_{i-1} || SHA256(segment_i))`` over the raw 32-byte
digests, where ``segment_i`` is the file as stored (ciphertext). ``chain.log``
has one line per segment: ``index size sha256 chain`` (hex digests).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from .storage import Storage

BLOCK = 1 << 20


def genesis(session_id: str) -> bytes:
    return hashlib.sha256(b"vcounter-recording\0" + session_id.encode()).digest()


def link(previous: bytes, segment_sha256: bytes) -> bytes:
    return hashlib.sha256(previous + segment_sha256).digest()


@dataclass(frozen=True)
class ChainEntry:
    index: int
    size: int
    sha256: str
    chain: str

    def line(self) -> str:
        return f"{self.index:06d} {self.size} {self.sha256} {self.chain}\n"


def parse_chain_log(text: str) -> tuple[list[ChainEntry], list[str]]:
    """Entries and malformed lines (a torn last line after a crash is one)."""
    entries, bad = [], []
    for line in text.splitlines():
        fields = line.split()
        try:
            index, size, sha, chain = fields
            if len(bytes.fromhex(sha)) != 32 or len(bytes.fromhex(chain)) != 32:
                raise ValueError
            entries.append(ChainEntry(int(index), int(size), sha.lower(), chain.lower()))
        except ValueError:
            bad.append(line)
    return entries, bad


def hash_object(storage: Storage, name: str) -> tuple[int, str]:
    """(size, sha256 hex) of a stored object, read in 1 MiB blocks."""
    blob = storage.open(name)
    try:
        digest = hashlib.sha256()
        offset = 0
        while offset < blob.size:
            block = blob.read(offset, BLOCK)
            if not block:
                break
            digest.update(block)
            offset += len(block)
        return offset, digest.hexdigest()
    finally:
        blob.close()

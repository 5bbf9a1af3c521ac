"""What a segment is: a plaintext packet log, sealed with AES-256-GCM.

Plaintext layout (all integers big-endian)::

    segment = magic "VCSEG001" | u32 header length | header | record*
    header  = UTF-8 JSON {"format", "session_id", "index", "started_at",
              "sealed_at", "final", "tracks": [TrackInfo...]}
    record  = u8 track | u8 flags | i64 pts_us | i64 arrival_us | u32 length | payload

``track`` indexes the header's ``tracks`` (every segment lists all tracks known
when it was sealed, so each one is self-describing); track 255 is a timeline
event whose payload is JSON ``{"kind", "data"}``. ``pts_us`` is microseconds on
the recording timeline, ``arrival_us`` the frame's arrival (wall clock, epoch
microseconds). Flags: 1 keyframe, 2 first frame of a new stream,
4 frames were lost just before this one.
``final`` is true only in the segment written by a clean close.

Sealed segment = AES-256-GCM(data key, nonce = 4 zero bytes | u64 index,
AAD = "vcounter segment\\0" | session id | "\\0" | u64 index), ciphertext || tag.
The index in nonce and AAD stops segments being reordered or swapped between
sessions; the chain (``chain.py``) stops them being dropped.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from .exceptions import IntegrityError

MAGIC = b"VCSEG001"
FORMAT = "vcounter-segment/1"
RECORD = struct.Struct(">BBqqI")
_LENGTH = struct.Struct(">I")
EVENT_TRACK = 255
MAX_TRACKS = 255
FLAG_KEYFRAME = 1
FLAG_NEW_STREAM = 2
FLAG_AFTER_GAP = 4


@dataclass
class TrackInfo:
    id: int
    party: str
    kind: str  # "audio" | "video"
    codec: str  # "VP8" | "opus"
    clock_rate: int
    #: from the first VP8 keyframe (0 until one arrives)
    width: int = 0
    height: int = 0


@dataclass(frozen=True)
class Record:
    track: int
    flags: int
    pts_us: int
    arrival_us: int
    payload: bytes


def vp8_keyframe_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a VP8 keyframe header (RFC 6386 §9.1), None for other frames."""
    if len(data) < 10 or data[0] & 1 or data[3:6] != b"\x9d\x01\x2a":
        return None
    width, height = struct.unpack_from("<HH", data, 6)
    return width & 0x3FFF, height & 0x3FFF


def append_record(
    buffer: bytearray, track: int, flags: int, pts_us: int, arrival_us: int, payload: bytes
) -> None:
    buffer += RECORD.pack(track, flags, pts_us, arrival_us, len(payload))
    buffer += payload


def build(header: dict[str, Any], body: bytes | bytearray) -> bytes:
    head = json.dumps(header, separators=(",", ":")).encode()
    return b"".join((MAGIC, _LENGTH.pack(len(head)), head, body))


def header_json(
    session_id: str,
    index: int,
    started_at: float,
    sealed_at: float,
    final: bool,
    tracks: list[TrackInfo],
) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "session_id": session_id,
        "index": index,
        "started_at": started_at,
        "sealed_at": sealed_at,
        "final": final,
        "tracks": [asdict(t) for t in tracks],
    }


def parse(plaintext: bytes, index: int) -> tuple[dict[str, Any], Iterator[Record]]:
    """The header and a lazy iterator over the records of a decrypted segment."""
    if plaintext[:8] != MAGIC:
        raise IntegrityError(f"segment {index:06d}: not a vcounter segment", segment=index)
    (length,) = _LENGTH.unpack_from(plaintext, 8)
    header = json.loads(plaintext[12 : 12 + length])
    return header, _records(memoryview(plaintext), 12 + length, index)


def _records(view: memoryview, offset: int, index: int) -> Iterator[Record]:
    end = len(view)
    while offset < end:
        if offset + RECORD.size > end:
            raise IntegrityError(f"segment {index:06d}: truncated record", segment=index)
        track, flags, pts, arrival, length = RECORD.unpack_from(view, offset)
        offset += RECORD.size
        if offset + length > end:
            raise IntegrityError(f"segment {index:06d}: truncated record", segment=index)
        yield Record(track, flags, pts, arrival, bytes(view[offset : offset + length]))
        offset += length


def _nonce(index: int) -> bytes:
    return b"\0\0\0\0" + index.to_bytes(8, "big")


def _aad(session_id: str, index: int) -> bytes:
    return b"vcounter segment\0" + session_id.encode() + b"\0" + index.to_bytes(8, "big")


def seal(aead: AESGCM, session_id: str, index: int, plaintext: bytes) -> bytes:
    return aead.encrypt(_nonce(index), plaintext, _aad(session_id, index))


def unseal(aead: AESGCM, session_id: str, index: int, sealed: bytes) -> bytes:
    try:
        return aead.decrypt(_nonce(index), sealed, _aad(session_id, index))
    except InvalidTag:
        raise IntegrityError(
            f"segment {index:06d}: does not decrypt (authentication tag mismatch)", segment=index
        ) from None

"""Where things live in a session's store (one directory per session).

::

    recording.json              session id, start time, master key id (written at start)
    key.wrapped                 the session's data key, wrapped by the master key
    segments/000001.seg ...     AES-256-GCM sealed segments (see segment_format)
    chain.log                   one line per stored segment: index size sha256 chain
    dropped/000007.seg          segments that recovery could not authenticate (kept)
    customer.webm.enc ...       one chunked-encrypted WebM per party (see encrypted_file)
    timeline.json               events with their offsets from recording start
    manifest.json               canonical JSON, signed; its presence marks a finished recording
    manifest.sig                raw 64-byte Ed25519 signature of manifest.json
    public_key.pem              the signing key's public half
"""

from __future__ import annotations

import json
import re
from typing import Any

from .exceptions import IntegrityError, RecorderError
from .keys import MasterKey
from .storage import Storage, read_all

RECORDING = "recording.json"
KEY_FILE = "key.wrapped"
CHAIN_LOG = "chain.log"
SEGMENTS = "segments/"
DROPPED = "dropped/"
TIMELINE = "timeline.json"
MANIFEST = "manifest.json"
SIGNATURE = "manifest.sig"
PUBLIC_KEY = "public_key.pem"

#: party names become file names
PARTY_RE = re.compile(r"^[a-z0-9_-]{1,32}$")
_SEGMENT_RE = re.compile(r"^(?:segments|dropped)/(\d{6,})\.seg$")


def segment_name(index: int) -> str:
    return f"{SEGMENTS}{index:06d}.seg"


def segment_index(name: str) -> int | None:
    match = _SEGMENT_RE.match(name)
    return int(match.group(1)) if match else None


def output_name(party: str) -> str:
    return f"{party}.webm.enc"


def read_data_key(storage: Storage, master_key: MasterKey) -> bytes:
    """Unwrap the session's data key (raises ``WrongKey`` for another master key)."""
    try:
        blob = read_all(storage, KEY_FILE)
    except FileNotFoundError:
        raise RecorderError(f"no {KEY_FILE}: not a recording, or it never started") from None
    return master_key.unwrap(blob)


def read_recording(storage: Storage) -> dict[str, Any]:
    """The ``recording.json`` written when the recording started."""
    try:
        info = json.loads(read_all(storage, RECORDING))
    except FileNotFoundError:
        raise RecorderError(f"no {RECORDING}: not a recording, or it never started") from None
    except ValueError:
        info = None
    if not isinstance(info, dict) or not isinstance(info.get("session_id"), str):
        raise IntegrityError(f"{RECORDING} is damaged")
    return info

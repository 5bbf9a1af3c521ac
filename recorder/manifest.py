"""The signed manifest: what a finished recording consists of, and proof it is unchanged.

``manifest.json`` is canonical JSON (sorted keys, no spaces, UTF-8) and
``manifest.sig`` the raw Ed25519 signature of exactly those bytes, so a third
party can check it with standard tools::

    openssl pkeyutl -verify -pubin -inkey public_key.pem -rawin \\
        -in manifest.json -sigfile manifest.sig
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from .exceptions import IntegrityError
from .keys import SigningKey
from .layout import MANIFEST, PUBLIC_KEY, SIGNATURE
from .storage import Storage, read_all

FORMAT = "vcounter-recording/1"


def canonical_json(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


@dataclass(frozen=True)
class Manifest:
    data: dict[str, Any]
    #: the stored bytes (canonical JSON) that ``signature`` signs
    raw: bytes
    signature: bytes
    public_key_pem: bytes

    @property
    def session_id(self) -> str:
        return str(self.data["session_id"])

    @property
    def outputs(self) -> list[dict[str, Any]]:
        return list(self.data["outputs"])

    @classmethod
    def sign(cls, data: dict[str, Any], key: SigningKey) -> Manifest:
        raw = canonical_json(data)
        return cls(data, raw, key.sign(raw), key.public_pem())

    def store(self, storage: Storage) -> None:
        """Write key, signature, then the manifest itself: its presence marks the recording finished."""
        storage.put_bytes(PUBLIC_KEY, self.public_key_pem)
        storage.put_bytes(SIGNATURE, self.signature)
        storage.put_bytes(MANIFEST, self.raw)

    @classmethod
    def load(cls, storage: Storage) -> Manifest:
        """Read the stored manifest (not verified: see :func:`recorder.verify.verify`)."""
        raw = read_all(storage, MANIFEST)
        try:
            data = json.loads(raw)
        except ValueError:
            raise IntegrityError("manifest.json is not valid JSON") from None
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise IntegrityError("manifest.json is not a vcounter recording manifest")
        return cls(data, raw, read_all(storage, SIGNATURE), read_all(storage, PUBLIC_KEY))

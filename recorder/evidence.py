"""Identity evidence of a session: reference photos, embeddings and snapshots, encrypted at rest.

Layout in the store (names relative to its root)::

    <session_id>/key.wrapped            the session's evidence data key, wrapped by the master key
    <session_id>/<kind>/<item_id>       one item: its description and its data, each sealed

An item object (integers big-endian)::

    magic "VCEVI001" | u32 n | nonce (12) | sealed description (n) | nonce (12) | sealed data
    sealed x = AES-256-GCM(session data key, nonce, x,
                           AAD = "vcounter evidence\\0" part "\\0" session id "\\0" item id "\\0" kind)

``part`` is ``meta`` for the description (canonical JSON of :class:`EvidenceItem`:
size, SHA-256 of the data, content type, creation time, the caller's ``meta``)
and ``data`` for the data. The AAD ties an item to its session, id and kind: an
item copied into another session's folder, renamed, or filed under another
kind does not decrypt. Nonces are random (a session holds a handful of items
under its own key). The description is read on its own, so listing a session
never reads images.

Every object is written with :meth:`Storage.put_bytes` (temporary object and
rename on disk, one PutObject on an S3-compatible store): a crash leaves no half
item, only a hidden temporary file that listings skip and
:meth:`Storage.discard_incomplete` removes. The store is a local directory
(:meth:`EvidenceStore.local`) or any other :class:`Storage`, such as the
spooled S3 store of :mod:`recorder.object_store`. Data and meta are never logged.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import re
import secrets
import struct
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from .exceptions import EvidenceError, EvidenceNotFound, IntegrityError, WrongKey
from .keys import MasterKey, new_data_key
from .storage import LocalStorage, Storage, read_all

__all__ = [
    "KINDS",
    "EvidenceError",
    "EvidenceItem",
    "EvidenceNotFound",
    "EvidenceStore",
    "LocalTree",
]

logger = logging.getLogger(__name__)

KINDS = ("reference_image", "reference_embedding", "snapshot", "live_embedding", "receipt")
KEY_FILE = "key.wrapped"
FORMAT = "vcounter-evidence/1"
MAGIC = b"VCEVI001"
_HEAD = struct.Struct(">8sI")
_NONCE = 12
_TAG = 16
#: largest description (JSON, before sealing); ``meta`` is meant for a few scores and ids
MAX_DESCRIPTION = 8 << 10
#: session and item ids: URL-safe base64 characters (what ``secrets.token_urlsafe`` makes)
_ID_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")
_CONTENT_TYPE_RE = re.compile(r"[\x21-\x7e]+/[\x20-\x7e]+")


def _check_id(value: object, what: str) -> str:
    if not isinstance(value, str) or not _ID_RE.fullmatch(value):
        raise ValueError(f"invalid {what}: 1 to 64 characters of A-Z a-z 0-9 _ -")
    return value


def _check_kind(kind: object) -> str:
    if kind not in KINDS:
        raise ValueError(f"unknown evidence kind {kind!r} (one of {', '.join(KINDS)})")
    return str(kind)


@dataclass(frozen=True)
class EvidenceItem:
    """What is known about an item without its data (``meta`` is left out of the repr)."""

    id: str
    session_id: str
    kind: str
    #: bytes of plaintext data
    size: int
    #: SHA-256 (hex) of the plaintext data, as put on the recording's signed timeline
    sha256: str
    content_type: str
    #: ISO 8601, UTC, microseconds
    created_at: str
    meta: dict[str, Any] = field(default_factory=dict, repr=False, hash=False)

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "meta": copy.deepcopy(self.meta)}


def _aad(part: bytes, session_id: str, item_id: str, kind: str) -> bytes:
    return b"\0".join(
        (b"vcounter evidence", part, session_id.encode(), item_id.encode(), kind.encode())
    )


def _description(item: EvidenceItem) -> bytes:
    return json.dumps(
        {"format": FORMAT, **asdict(item)},
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    ).encode()


def _seal_item(aead: AESGCM, item: EvidenceItem, description: bytes, data: bytes) -> bytes:
    ids = (item.session_id, item.id, item.kind)
    meta_nonce, data_nonce = os.urandom(_NONCE), os.urandom(_NONCE)
    sealed_meta = aead.encrypt(meta_nonce, description, _aad(b"meta", *ids))
    return b"".join(
        (
            _HEAD.pack(MAGIC, len(sealed_meta)),
            meta_nonce,
            sealed_meta,
            data_nonce,
            aead.encrypt(data_nonce, data, _aad(b"data", *ids)),
        )
    )


def _describe(
    aead: AESGCM,
    read: Callable[[int, int], bytes],
    total: int,
    session_id: str,
    item_id: str,
    kind: str,
) -> tuple[EvidenceItem, int]:
    """The item's description and where its data starts; ``read(offset, length)`` reads the object."""
    where = f"evidence item {session_id}/{item_id}"
    head = read(0, _HEAD.size)
    if len(head) != _HEAD.size or head[:8] != MAGIC:
        raise EvidenceError(f"{where} is not a vcounter evidence item")
    _, length = _HEAD.unpack(head)
    data_at = _HEAD.size + _NONCE + length
    if length > MAX_DESCRIPTION + _TAG or total < data_at + _NONCE + _TAG:
        raise EvidenceError(f"{where} is truncated or damaged")
    sealed = read(_HEAD.size, _NONCE + length)
    try:
        plain = aead.decrypt(
            sealed[:_NONCE], sealed[_NONCE:], _aad(b"meta", session_id, item_id, kind)
        )
        description = json.loads(plain)
        if description.pop("format") != FORMAT:
            raise ValueError("unknown format")
        item = EvidenceItem(**description)
    except InvalidTag:
        raise EvidenceError(
            f"{where} does not decrypt: tampered, or moved from another session or kind"
        ) from None
    except (ValueError, TypeError, KeyError, AttributeError):
        raise EvidenceError(f"{where} has a damaged description") from None
    if (item.session_id, item.id, item.kind) != (session_id, item_id, kind):
        raise EvidenceError(f"{where} describes another item")
    return item, data_at


def _item_parts(name: str) -> tuple[str, str] | None:
    """(kind, item id) when ``name`` is an item's name, else None (the key, stray files)."""
    parts = name.split("/")
    if len(parts) == 3 and parts[1] in KINDS and _ID_RE.fullmatch(parts[2]):
        return parts[1], parts[2]
    return None


class LocalTree(LocalStorage):
    """A :class:`LocalStorage` that lists only the folder a prefix names and prunes empty folders.

    ``LocalStorage.list`` walks the whole root, fine for one recording but not
    for a store holding every session's evidence.
    """

    def list(self, prefix: str = "") -> list[str]:
        folder, _, rest = prefix.rpartition("/")
        if not folder:
            return super().list(prefix)
        return [f"{folder}/{name}" for name in LocalStorage(self._path(folder)).list(rest)]

    def delete(self, name: str) -> None:
        super().delete(name)
        folder = self._path(name).parent
        while folder != self.root:
            try:
                folder.rmdir()
            except OSError:  # not empty (or already gone)
                break
            folder = folder.parent


class EvidenceStore:
    """Per-session identity evidence in a :class:`Storage`, each session under its own data key.

    Synchronous: the server calls it in a thread. Writes of one store are
    serialised (a session's data key is created once). ``master`` may be
    ``None`` for a store that only lists and deletes (the purge job needs no key).
    """

    def __init__(self, storage: Storage, master: MasterKey | None) -> None:
        self.storage = storage
        self._master = master
        self._lock = threading.Lock()

    @classmethod
    def local(cls, root: str | Path, master: MasterKey | None) -> EvidenceStore:
        """A store in a local directory (created with mode 0700 on first write)."""
        return cls(LocalTree(root), master)

    def __repr__(self) -> str:
        return f"EvidenceStore({self.storage!r}, {self._master!r})"

    # -- keys ------------------------------------------------------------------------------

    def _master_key(self) -> MasterKey:
        if self._master is None:
            raise EvidenceError("no master key: identity evidence cannot be read or written")
        return self._master

    def _data_key(self, session_id: str, *, create: bool = False) -> bytes:
        """The session's data key; created when ``create``, else a missing key is an error."""
        name = f"{session_id}/{KEY_FILE}"
        master = self._master_key()
        try:
            wrapped = read_all(self.storage, name)
        except FileNotFoundError:
            if not create:
                raise EvidenceError(
                    f"identity evidence of session {session_id}: data key missing"
                ) from None
            key = new_data_key()
            self.storage.put_bytes(name, master.wrap(key))
            return key
        try:
            return master.unwrap(wrapped)
        except WrongKey:
            raise EvidenceError(
                f"identity evidence of session {session_id} is encrypted under another "
                f"master key, not this one ({master.key_id})"
            ) from None
        except IntegrityError:
            raise EvidenceError(
                f"identity evidence of session {session_id}: wrapped data key is damaged"
            ) from None

    # -- items -----------------------------------------------------------------------------

    def put(
        self,
        session_id: str,
        kind: str,
        data: bytes,
        *,
        content_type: str = "application/octet-stream",
        meta: dict[str, Any] | None = None,
    ) -> EvidenceItem:
        """Encrypt and store one item; returns its description (with the plaintext's SHA-256)."""
        _check_id(session_id, "session id")
        _check_kind(kind)
        if (
            not isinstance(content_type, str)
            or len(content_type) > 128
            or not _CONTENT_TYPE_RE.fullmatch(content_type)
        ):
            raise ValueError("invalid content type")
        if meta is not None and not isinstance(meta, dict):
            raise ValueError("meta must be a JSON object")
        try:
            # canonical JSON and back: what get() returns is what put() returns
            meta = json.loads(json.dumps(meta or {}, allow_nan=False))
        except (TypeError, ValueError):
            raise ValueError(
                "meta must hold only JSON values (str, number, bool, null, list, dict)"
            ) from None
        data = bytes(data)
        item = EvidenceItem(
            id=secrets.token_urlsafe(12),
            session_id=session_id,
            kind=kind,
            size=len(data),
            sha256=hashlib.sha256(data).hexdigest(),
            content_type=content_type,
            created_at=datetime.now(UTC).isoformat(timespec="microseconds"),
            meta=meta,
        )
        description = _description(item)
        if len(description) > MAX_DESCRIPTION:
            raise ValueError(
                f"meta too large (an item's description is at most {MAX_DESCRIPTION} bytes)"
            )
        with self._lock:
            aead = AESGCM(self._data_key(session_id, create=True))
            sealed = _seal_item(aead, item, description, data)
            self.storage.put_bytes(f"{session_id}/{kind}/{item.id}", sealed)
        logger.debug("session %s: kept %s %s (%d bytes)", session_id, kind, item.id, item.size)
        return item

    def _item_name(self, session_id: str, item_id: str) -> str:
        for kind in KINDS:
            name = f"{session_id}/{kind}/{item_id}"
            if self.storage.exists(name):
                return name
        raise EvidenceNotFound(f"no evidence item {item_id} in session {session_id}")

    def get(self, session_id: str, item_id: str) -> tuple[EvidenceItem, bytes]:
        """The item and its decrypted data (checked against its SHA-256)."""
        _check_id(session_id, "session id")
        _check_id(item_id, "item id")
        name = self._item_name(session_id, item_id)
        kind = name.split("/")[1]
        aead = AESGCM(self._data_key(session_id))
        try:
            blob = read_all(self.storage, name)
        except FileNotFoundError:
            raise EvidenceNotFound(f"no evidence item {item_id} in session {session_id}") from None
        item, data_at = _describe(
            aead,
            lambda offset, length: blob[offset : offset + length],
            len(blob),
            session_id,
            item_id,
            kind,
        )
        where = f"evidence item {session_id}/{item_id}"
        try:
            data = aead.decrypt(
                blob[data_at : data_at + _NONCE],
                blob[data_at + _NONCE :],
                _aad(b"data", session_id, item_id, kind),
            )
        except InvalidTag:
            raise EvidenceError(
                f"{where} does not decrypt: tampered, or moved from another session or kind"
            ) from None
        if len(data) != item.size or hashlib.sha256(data).hexdigest() != item.sha256:
            raise EvidenceError(f"{where}: data does not match its SHA-256")
        return item, data

    def _names(self, session_id: str, kind: str | None = None) -> list[tuple[str, str, str]]:
        """(name, kind, item id) of the session's complete items, optionally of one kind."""
        prefix = f"{session_id}/{kind}/" if kind else f"{session_id}/"
        return [
            (name, *parts) for name in self.storage.list(prefix) if (parts := _item_parts(name))
        ]

    def count(self, session_id: str, kind: str | None = None) -> int:
        """How many items the session holds (needs no key: nothing is decrypted)."""
        _check_id(session_id, "session id")
        if kind is not None:
            _check_kind(kind)
        return len(self._names(session_id, kind))

    def delete_session(self, session_id: str) -> int:
        """Delete everything stored for the session, its data key last; returns the items deleted."""
        _check_id(session_id, "session id")
        key = f"{session_id}/{KEY_FILE}"
        with self._lock:
            names = self.storage.list(f"{session_id}/")
            items = sum(1 for name in names if _item_parts(name))
            for name in names:
                if name != key:
                    self.storage.delete(name)
            self.storage.delete(key)
        if names:
            logger.info("session %s: identity evidence deleted (%d items)", session_id, items)
        return items

    def sessions(self) -> list[str]:
        """Ids of the sessions that have anything stored, sorted."""
        found = {name.split("/", 1)[0] for name in self.storage.list() if "/" in name}
        return sorted(s for s in found if _ID_RE.fullmatch(s))

    def list(self, session_id: str, kind: str | None = None) -> list[EvidenceItem]:
        """The session's items (descriptions only, no data), oldest first; [] for an unknown session."""
        _check_id(session_id, "session id")
        if kind is not None:
            _check_kind(kind)
        names = self._names(session_id, kind)
        if not names:
            return []
        aead = AESGCM(self._data_key(session_id))
        items = []
        for name, item_kind, item_id in names:
            try:
                blob = self.storage.open(name)
            except FileNotFoundError:  # deleted meanwhile
                continue
            try:
                item, _ = _describe(aead, blob.read, blob.size, session_id, item_id, item_kind)
            finally:
                blob.close()
            items.append(item)
        return sorted(items, key=lambda i: (i.created_at, i.id))

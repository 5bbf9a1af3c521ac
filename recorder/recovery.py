"""Finalises recordings that were interrupted (server killed, power lost) before their manifest.

Run at startup: :func:`find_interrupted` lists session directories that began
recording but have no manifest; :func:`recover` keeps every segment that
authenticates (the chain is rebuilt over them, since a crash can fall between
storing a segment and extending ``chain.log``), moves the rest (a torn last
write) to ``dropped/`` and finalises with ``recovered: true`` and the dropped
segments listed in the manifest. Nothing is deleted.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from . import segment_format as fmt
from .chain import ChainEntry, genesis, link
from .exceptions import IntegrityError
from .finalize import build, read_chain_log, stored_segments
from .keys import MasterKey, SigningKey
from .layout import (
    CHAIN_LOG,
    DROPPED,
    MANIFEST,
    RECORDING,
    read_data_key,
    read_recording,
    segment_index,
    segment_name,
)
from .manifest import Manifest
from .storage import Storage, as_storage, read_all

logger = logging.getLogger(__name__)


def find_interrupted(root: str | Path) -> list[Path]:
    """Session directories under ``root`` that started recording but have no manifest."""
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted(
        d
        for d in root.iterdir()
        if d.is_dir() and (d / RECORDING).is_file() and not (d / MANIFEST).exists()
    )


def recover(
    directory: str | Path | Storage,
    master_key: MasterKey,
    signing_key: SigningKey,
    metadata: dict[str, Any],
    *,
    scratch_dir: str | Path | None = None,
) -> Manifest:
    """Finalise whatever an interrupted recording stored; returns the existing manifest if it has one.

    Raises ``WrongKey`` (without touching anything) for another master key.
    """
    storage = as_storage(directory)
    if storage.exists(MANIFEST):
        return Manifest.load(storage)
    storage.discard_incomplete()
    session_id = read_recording(storage)["session_id"]
    aead = AESGCM(read_data_key(storage, master_key))
    logged = {e.index: e for e in read_chain_log(storage)[0]}
    present = stored_segments(storage)
    earlier = sorted(i for i in map(segment_index, storage.list(DROPPED)) if i is not None)

    kept: list[ChainEntry] = []
    dropped: list[dict[str, Any]] = [
        {"index": i, "reason": "moved aside by an earlier recovery"} for i in earlier
    ]
    chain = genesis(session_id)
    for index in range(1, max(present + list(logged), default=0) + 1):
        if index in earlier:
            continue
        if index not in present:
            if index in logged or index < max(present, default=0):
                dropped.append({"index": index, "reason": "missing"})
            continue
        sealed = read_all(storage, segment_name(index))
        digest = hashlib.sha256(sealed).digest()
        try:
            fmt.parse(fmt.unseal(aead, session_id, index, sealed), index)
            if index in logged and logged[index].sha256 != digest.hex():
                raise IntegrityError(f"segment {index:06d}: sha256 differs from chain.log")
        except IntegrityError as exc:
            reason = "torn write" if index == max(present) and index not in logged else str(exc)
            dropped.append({"index": index, "reason": reason, "size": len(sealed)})
            storage.put_bytes(f"{DROPPED}{index:06d}.seg", sealed)
            storage.delete(segment_name(index))
            continue
        chain = link(chain, digest)
        kept.append(ChainEntry(index, len(sealed), digest.hex(), chain.hex()))
    storage.put_bytes(CHAIN_LOG, "".join(e.line() for e in kept).encode())
    dropped.sort(key=lambda d: d["index"])
    if dropped:
        logger.warning(
            "recording %s: recovery dropped segments %s", session_id, [d["index"] for d in dropped]
        )
    return build(
        storage, master_key, signing_key, metadata, kept, recovered=dropped, scratch_dir=scratch_dir
    )

"""Turns a closed recording's segments into one encrypted WebM per party and a signed manifest.

Blocking (remuxing is cheap, but an hour-long call is hundreds of MB): call it
from a worker thread, e.g. ``await loop.run_in_executor(None, finalize, ...)``.

Every segment is checked against ``chain.log`` and its authentication tag
before anything is written; plaintext only ever exists in memory and in the
encrypted :class:`~recorder.spool.Spool`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from . import segment_format as fmt
from .chain import ChainEntry, genesis, link, parse_chain_log
from .encrypted_file import CHUNK_SIZE, EncryptedWriter
from .exceptions import IntegrityError, RecorderError
from .keys import MasterKey, SigningKey
from .layout import (
    CHAIN_LOG,
    SEGMENTS,
    TIMELINE,
    output_name,
    read_data_key,
    read_recording,
    segment_index,
    segment_name,
)
from .manifest import FORMAT, Manifest, canonical_json
from .storage import Storage, as_storage, read_all
from .webm_writer import MuxResult, WebmWriter

logger = logging.getLogger(__name__)


def read_chain_log(storage: Storage) -> tuple[list[ChainEntry], list[str]]:
    text = (
        read_all(storage, CHAIN_LOG).decode(errors="replace") if storage.exists(CHAIN_LOG) else ""
    )
    return parse_chain_log(text)


def stored_segments(storage: Storage) -> list[int]:
    return sorted(i for i in map(segment_index, storage.list(SEGMENTS)) if i is not None)


def finalize(
    directory: str | Path | Storage,
    master_key: MasterKey,
    signing_key: SigningKey,
    metadata: dict[str, Any],
    *,
    scratch_dir: str | Path | None = None,
) -> Manifest:
    """Finalise a cleanly closed recording; raises :class:`IntegrityError` naming the first bad segment."""
    storage = as_storage(directory)
    entries, bad = read_chain_log(storage)
    if bad:
        raise IntegrityError(f"chain.log has {len(bad)} malformed line(s)")
    logged, stored = [e.index for e in entries], stored_segments(storage)
    if logged != stored:
        missing, extra = set(logged) - set(stored), set(stored) - set(logged)
        if not missing and not extra:
            raise IntegrityError("chain.log is out of order")
        first = min(missing | extra)
        problem = "missing" if first in missing else "not in chain.log"
        raise IntegrityError(f"segment {first:06d}: {problem}", segment=first)
    return build(storage, master_key, signing_key, metadata, entries, scratch_dir=scratch_dir)


def build(
    storage: Storage,
    master_key: MasterKey,
    signing_key: SigningKey,
    metadata: dict[str, Any],
    expected: list[ChainEntry],
    *,
    recovered: list[dict[str, Any]] | None = None,
    scratch_dir: str | Path | None = None,
) -> Manifest:
    """Mux, encrypt and sign the recording made of ``expected`` segments (in order).

    ``recovered`` (from :func:`recorder.recovery.recover`) lists dropped segments
    and allows a recording that was never closed.
    """
    recording = read_recording(storage)
    session_id = recording["session_id"]
    data_key = read_data_key(storage, master_key)
    aead = AESGCM(data_key)

    def segments() -> Iterator[tuple[ChainEntry, dict[str, Any], Iterator[fmt.Record]]]:
        chain = genesis(session_id)
        for want in expected:
            sealed = read_all(storage, segment_name(want.index))
            digest = hashlib.sha256(sealed).digest()
            chain = link(chain, digest)
            for problem, ok in (
                ("sha256", digest.hex() == want.sha256),
                ("chain", chain.hex() == want.chain),
            ):
                if not ok:
                    raise IntegrityError(
                        f"segment {want.index:06d}: {problem} mismatch", segment=want.index
                    )
            header, records = fmt.parse(
                fmt.unseal(aead, session_id, want.index, sealed), want.index
            )
            yield want, header, records

    last_header: dict[str, Any] = {}
    if expected:
        last = expected[-1].index
        last_header, _ = fmt.parse(
            fmt.unseal(aead, session_id, last, read_all(storage, segment_name(last))), last
        )
    if recovered is None and not last_header.get("final"):
        raise RecorderError(
            f"recording {session_id} was not closed (no final segment): recover it instead"
        )
    tracks = [fmt.TrackInfo(**t) for t in last_header.get("tracks", [])]
    parties = sorted({t.party for t in tracks})

    writers = {
        party: WebmWriter(
            party,
            [t for t in tracks if t.party == party],
            title=f"{session_id} {party}",
            scratch_dir=scratch_dir,
        )
        for party in parties
    }
    events: list[dict[str, Any]] = []
    try:
        for _, _, records in segments():
            for record in records:
                if record.track == fmt.EVENT_TRACK:
                    event = json.loads(record.payload)
                    events.append(
                        {"offset_ms": record.pts_us // 1000, "at": record.arrival_us / 1e6, **event}
                    )
                elif record.track < len(tracks):
                    writers[tracks[record.track].party].add(record)
                else:
                    raise IntegrityError("record of an undeclared track")
        outputs = [_store_output(storage, writer, data_key) for writer in writers.values()]
    finally:
        for writer in writers.values():
            writer.discard()

    events.sort(key=lambda e: e["offset_ms"])
    # the authenticated copy in the segments, rather than recording.json
    started_at = last_header.get("started_at", recording["started_at"])
    timeline = canonical_json(
        {"session_id": session_id, "started_at": started_at, "events": events}
    )
    storage.put_bytes(TIMELINE, timeline)
    data = {
        "format": FORMAT,
        "session_id": session_id,
        "metadata": metadata,
        "recording": {
            "started_at": started_at,
            "ended_at": last_header.get("sealed_at"),
            "complete": bool(last_header.get("final")),
        },
        "encryption": {
            "cipher": "AES-256-GCM",
            "data_key": "key.wrapped",
            "master_key_id": master_key.key_id,
            "chunk_size": CHUNK_SIZE,
        },
        "segments": [
            {"index": e.index, "name": segment_name(e.index), "size": e.size, "sha256": e.sha256}
            for e in expected
        ],
        "chain": {
            "algorithm": "sha256",
            "genesis": genesis(session_id).hex(),
            "final": expected[-1].chain if expected else genesis(session_id).hex(),
        },
        "outputs": [o for o in outputs if o],
        "timeline": {
            "name": TIMELINE,
            "sha256": hashlib.sha256(timeline).hexdigest(),
            "events": events,
        },
        "recovered": recovered is not None,
        "dropped": recovered or [],
        "signing_key": {"algorithm": "Ed25519", "fingerprint": signing_key.fingerprint()},
        "finalized_at": time.time(),
    }
    try:
        manifest = Manifest.sign(data, signing_key)
    except (TypeError, ValueError) as exc:
        raise RecorderError(f"metadata is not JSON-serialisable: {exc}") from None
    manifest.store(storage)
    logger.info(
        "recording %s finalised: %d segments, outputs %s%s",
        session_id,
        len(expected),
        ", ".join(o["name"] for o in data["outputs"]),
        " (recovered)" if recovered is not None else "",
    )
    return manifest


def _store_output(storage: Storage, writer: WebmWriter, data_key: bytes) -> dict[str, Any] | None:
    result: MuxResult = writer.close()
    if not result.packets:
        return None
    name = output_name(writer.party)
    out = storage.create(name)
    try:
        encrypted = EncryptedWriter(out, data_key, result.size)
        for block in writer.spool.iter_plaintext():
            encrypted.write(block)
        encrypted.close()
        out.commit()
    except BaseException:
        out.abort()
        raise
    return {
        "name": name,
        "party": writer.party,
        "container": "webm",
        "size": encrypted.stored_size,
        "sha256": encrypted.sha256,
        "plaintext_size": result.size,
        "start_ms": result.start_ms,
        "end_ms": result.end_ms,
        "duration_ms": result.duration_ms,
        "packets": result.packets,
        "skipped_frames": result.skipped,
    }

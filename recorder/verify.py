"""Proves a recording unchanged: hash chain, manifest signature, output hashes, decryptability,
and that it is the recording it is asked for.

A recording's files only prove themselves: a genuine recording copied over
another one's directory is self-consistent and signed. So the caller names
what it expects -- the recording id (the id the segments and the hash chain
are sealed under, also ``metadata.recording_id``), the session id and, where a
database is at hand, the SHA-256 of the manifest it recorded when the
recording was finalised -- and any mismatch fails the verification first.

Reads every stored byte once (twice for outputs when a master key is given),
in 1 MiB blocks, several files at a time in threads (hashlib and AES-GCM
release the GIL). Problems are reported in recording order, so ``reason``
names the first bad segment. Blocking: call it from a worker thread.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from . import segment_format as fmt
from .chain import genesis, hash_object, link, parse_chain_log
from .encrypted_file import EncryptedFile
from .exceptions import RecorderError
from .keys import MasterKey, SigningKey, fingerprint
from .layout import (
    CHAIN_LOG,
    MANIFEST,
    PUBLIC_KEY,
    SEGMENTS,
    SIGNATURE,
    read_data_key,
    segment_index,
)
from .manifest import FORMAT
from .storage import Storage, as_storage, read_all


@dataclass
class VerifyResult:
    ok: bool
    #: "verified: ..." or the first problem
    reason: str
    problems: list[str] = field(default_factory=list)
    #: facts an auditor should see even when ok (recovered, dropped segments, untrusted key)
    notes: list[str] = field(default_factory=list)
    #: the recording id the manifest names (the id its segments and chain are sealed under)
    session_id: str | None = None
    bytes_checked: int = 0
    #: the signature was checked against a key the caller gave (not the one beside the recording)
    trusted: bool = False
    #: the session the manifest says the recording belongs to (``metadata.session_id``)
    call_session_id: str | None = None


def verify(
    directory: str | Path | Storage,
    master_key: MasterKey | None = None,
    public_key_pem: bytes | None = None,
    *,
    recording_id: str | None = None,
    session_id: str | None = None,
    manifest_sha256: str | None = None,
    workers: int | None = None,
) -> VerifyResult:
    """Check a finished recording; ``public_key_pem`` is the key the signer must have used.

    Without ``public_key_pem`` the signature is checked with the key stored beside the recording:
    that proves self-consistency only (``trusted`` False, and a note), never who signed it.
    ``recording_id``, ``session_id`` and ``manifest_sha256`` (the hash the database recorded)
    bind the recording to what was asked for: a recording that is another one's fails.
    """
    storage = as_storage(directory)
    problems: list[str] = []
    notes: list[str] = []
    manifest, raw, trusted = _check_manifest(storage, public_key_pem, problems, notes)
    if manifest is None:
        return _result(problems, notes, None, 0)
    # first: a swapped recording verifies in every other respect
    problems[:0] = binding_problems(
        manifest,
        raw,
        recording_id=recording_id,
        session_id=session_id,
        manifest_sha256=manifest_sha256,
    )
    call_session = _metadata(manifest).get("session_id")
    session_id = str(manifest.get("session_id"))
    segments: list[dict[str, Any]] = manifest.get("segments", [])
    outputs: list[dict[str, Any]] = manifest.get("outputs", [])

    data_key = None
    if master_key is not None:
        try:
            data_key = read_data_key(storage, master_key)
        except (RecorderError, OSError) as exc:
            problems.append(f"data key: {exc}")
    else:
        notes.append("decryption not checked (no master key given)")
    aead = AESGCM(data_key) if data_key else None

    jobs: list[Callable[[], tuple[list[str], bytes | None, int]]] = []
    jobs += [partial(_check_segment, storage, s, aead, session_id) for s in segments]
    jobs += [partial(_check_output, storage, o, data_key) for o in outputs]
    with ThreadPoolExecutor(workers or min(4, os.cpu_count() or 1)) as pool:
        results = list(pool.map(lambda job: job(), jobs))

    chain = genesis(session_id)
    for i, (found, digest, _) in enumerate(results):
        problems += found
        if i < len(segments) and digest is not None:
            chain = link(chain, digest)
    segments_ok = not any(found for found, _, _ in results[: len(segments)])
    if segments_ok and chain.hex() != manifest.get("chain", {}).get("final"):
        problems.append("chain: final hash does not match the manifest")
    _check_chain_log(storage, segments, problems)
    _check_timeline(storage, manifest, problems)
    if manifest.get("recovered"):
        dropped = [f"{d['index']:06d} ({d['reason']})" for d in manifest.get("dropped", [])]
        notes.append(
            "recovered after an interruption"
            + (f"; dropped segments: {', '.join(dropped)}" if dropped else "")
        )
    checked = sum(size for _, _, size in results)
    result = _result(problems, notes, session_id, checked, len(segments), len(outputs))
    result.trusted = trusted
    result.call_session_id = str(call_session) if call_session is not None else None
    return result


def _result(
    problems: list[str],
    notes: list[str],
    session_id: str | None,
    checked: int,
    n_seg: int = 0,
    n_out: int = 0,
) -> VerifyResult:
    if problems:
        return VerifyResult(False, problems[0], problems, notes, session_id, checked)
    return VerifyResult(
        True, f"verified: {n_seg} segments, {n_out} outputs", [], notes, session_id, checked
    )


def binding_problems(
    manifest: dict[str, Any],
    raw: bytes,
    *,
    recording_id: str | None = None,
    session_id: str | None = None,
    manifest_sha256: str | None = None,
) -> list[str]:
    """Why the manifest (parsed, and its stored bytes) is not the asked-for recording's: its ids
    against the expected ones, its SHA-256 against the one the database recorded ([] when it is).

    Cheap (no signature, no media): the auditor's session page checks every recording with it.
    """
    problems: list[str] = []
    metadata = _metadata(manifest)
    sealed_as = str(manifest.get("session_id"))  # the id the segments and chain are sealed under
    named = metadata.get("recording_id", sealed_as)
    if recording_id is not None and (sealed_as != recording_id or named != recording_id):
        problems.append(
            f"manifest: is recording {_shown(named)} of session "
            f"{_shown(metadata.get('session_id'))}, not {_shown(recording_id)} "
            "(another recording's files)"
        )
    elif session_id is not None and metadata.get("session_id") != session_id:
        problems.append(
            f"manifest: belongs to session {_shown(metadata.get('session_id'))}, "
            f"not {_shown(session_id)}"
        )
    digest = hashlib.sha256(raw).hexdigest()
    if manifest_sha256 is not None and digest != manifest_sha256:
        problems.append(
            "manifest: not the manifest the database recorded when the recording was finalised "
            f"(sha256 {digest[:16]}, recorded {manifest_sha256[:16]})"
        )
    return problems


def _metadata(manifest: dict[str, Any]) -> dict[str, Any]:
    metadata = manifest.get("metadata")
    return metadata if isinstance(metadata, dict) else {}


def _shown(value: object) -> str:
    """An id from a (possibly forged) manifest, quoted and cut short for a message."""
    text = repr(value)
    return text if len(text) <= 90 else text[:87] + "..."


def _fingerprint(pem: bytes | None) -> str | None:
    try:
        return fingerprint(pem) if pem else None
    except RecorderError:
        return None


def _read(storage: Storage, name: str) -> bytes | None:
    try:
        return read_all(storage, name)
    except FileNotFoundError:
        return None


def _check_manifest(
    storage: Storage,
    trusted_pem: bytes | None,
    problems: list[str],
    notes: list[str],
) -> tuple[dict[str, Any] | None, bytes, bool]:
    """Check the signature, then parse: the manifest (None when there is nothing to check
    further), its bytes and whether the trusted key signed it."""
    raw, signature, stored_pem = (_read(storage, n) for n in (MANIFEST, SIGNATURE, PUBLIC_KEY))
    if raw is None:
        problems.append("no manifest.json (recording not finalised, or not a recording)")
        return None, b"", False
    key_pem = trusted_pem or stored_pem
    signer = _fingerprint(key_pem)
    signed = False
    if not signature:
        problems.append("manifest: no manifest.sig")
    elif signer is None:
        problems.append("manifest: no usable public key to check the signature with")
    elif not SigningKey.verify(key_pem or b"", signature, raw):
        stored = _fingerprint(stored_pem)
        if (
            trusted_pem
            and stored
            and stored != signer
            and SigningKey.verify(stored_pem or b"", signature, raw)
        ):
            problems.append(
                f"manifest: signed by another key ({stored[:16]}), not the trusted key ({signer[:16]})"
            )
        else:
            problems.append(
                "manifest: signature invalid (manifest.json or manifest.sig was changed)"
            )
    else:
        signed = True
        if trusted_pem is None:
            notes.append(
                f"signature checked with the key stored beside the recording ({signer[:16]}): "
                "self-consistency only; pass the trusted public key to check who signed"
            )
    try:
        manifest = json.loads(raw)
    except ValueError:
        problems.append("manifest: not valid JSON")
        return None, raw, False
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        problems.append("manifest: not a vcounter recording manifest")
        return None, raw, False
    named = manifest.get("signing_key", {}).get("fingerprint")
    if signed and named != signer:
        problems.append("manifest: names a different signing key than the one that signed it")
        signed = False
    return manifest, raw, signed and trusted_pem is not None


def _check_segment(
    storage: Storage, entry: dict[str, Any], aead: AESGCM | None, session_id: str
) -> tuple[list[str], bytes | None, int]:
    index = int(entry["index"])
    label = f"segment {index:06d}"
    try:
        sealed = read_all(storage, entry["name"])
    except FileNotFoundError:
        return [f"{label}: missing"], None, 0
    digest = hashlib.sha256(sealed).digest()
    if digest.hex() != entry["sha256"]:
        detail = (
            ""
            if len(sealed) == entry["size"]
            else f" (size {len(sealed)}, expected {entry['size']})"
        )
        return [f"{label}: sha256 mismatch{detail}"], digest, len(sealed)
    if aead is not None:
        try:
            fmt.unseal(aead, session_id, index, sealed)
        except RecorderError as exc:
            return [str(exc)], digest, len(sealed)
    return [], digest, len(sealed)


def _check_output(
    storage: Storage, entry: dict[str, Any], data_key: bytes | None
) -> tuple[list[str], bytes | None, int]:
    name = entry["name"]
    try:
        size, sha = hash_object(storage, name)
    except FileNotFoundError:
        return [f"{name}: missing"], None, 0
    if sha != entry["sha256"]:
        return [f"{name}: sha256 mismatch"], None, size
    if data_key is not None:
        try:
            with EncryptedFile(storage.open(name), data_key) as f:
                for _ in f.iter_plaintext():
                    pass
        except RecorderError as exc:
            return [f"{name}: {exc}"], None, size
    return [], None, size


def _check_chain_log(storage: Storage, segments: list[dict[str, Any]], problems: list[str]) -> None:
    """chain.log and the segments directory must agree with the (signed) manifest."""
    listed = {int(s["index"]) for s in segments}
    for name in storage.list(SEGMENTS):
        index = segment_index(name)
        if index is not None and index not in listed:
            problems.append(f"segment {index:06d}: not in the manifest")
    try:
        entries, bad = parse_chain_log(read_all(storage, CHAIN_LOG).decode(errors="replace"))
    except FileNotFoundError:
        problems.append("chain.log: missing")
        return
    logged = [(e.index, e.sha256) for e in entries]
    if bad or logged != [(int(s["index"]), s["sha256"]) for s in segments]:
        problems.append("chain.log: does not match the manifest")


def _check_timeline(storage: Storage, manifest: dict[str, Any], problems: list[str]) -> None:
    timeline = manifest.get("timeline", {})
    try:
        sha = hash_object(storage, timeline.get("name", ""))[1]
    except (FileNotFoundError, RecorderError):
        problems.append("timeline.json: missing")
        return
    if sha != timeline.get("sha256"):
        problems.append("timeline.json: sha256 mismatch")

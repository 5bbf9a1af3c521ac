"""Sealed signature receipts: one file a customer keeps and anyone can check.

When a customer signs a document on screen, the server seals what happened —
the document's SHA-256, the handwritten signature image, a face snapshot taken
at that moment, the identity verdict, the times and the session — with its
Ed25519 key (the key that signs recording manifests, :mod:`recorder.keys`).

The file
========

A receipt is one UTF-8 JSON document, written in **canonical form**:

* ``json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
  allow_nan=False)`` encoded as UTF-8: object keys sorted by code point, no
  whitespace between tokens, no trailing newline, no BOM;
* strings escape only ``"``, ``\\`` and the control characters below U+0020
  (``\\b \\f \\n \\r \\t``, others ``\\u00XX``); everything else is literal UTF-8;
* numbers: integers in decimal; non-integers as Python's shortest round-trip
  ``repr`` (``0.35``, ``1e-07``); no NaN or infinity;
* base64 is standard (``+/``, ``=`` padding, no line breaks) and canonical
  (the unused low bits of the last character are zero).

Its top level has exactly four keys (in this order, being sorted)::

    {"fingerprint":"<64 hex>","payload":{...},"public_key":"<PEM>","signature":"<base64>"}

``signature`` is the Ed25519 signature of the **payload bytes exactly as they
stand in the file**: everything between the fixed 92-byte prefix
``{"fingerprint":"<64 hex>","payload":`` and the last ``,"public_key":"``.
``public_key`` is the signer's SubjectPublicKeyInfo PEM and ``fingerprint`` the
SHA-256 (hex) of its raw 32 bytes (:func:`recorder.keys.fingerprint`, the
fingerprint the bank publishes). The payload (:data:`PAYLOAD_FIELDS`)::

    format          "vcounter-receipt/1"
    receipt_id      32 random hex digits
    session_id      the call
    flow            {"business", "version"}
    step_id         the signature step of the flow
    document        {"id", "title", "sha256"}: the document the customer saw
    signature_image {"media_type": "image/png", "sha256", "data": base64}
    face_snapshot   {"media_type": "image/jpeg", "sha256", "data": base64} or null
    identity        the verdict: {"method": "face"|"manual"|"none", "verified", and
                    optionally "score", "distance", "threshold", "liveness", "reason", "by"}
    signed_at       when the customer signed, ISO 8601 UTC, milliseconds: 2025-01-31T09:30:00.123Z
    sealed_at       when the server sealed it (same form)
    key_fingerprint the signer's fingerprint again, inside what is signed
    extra           an object of other facts (agent, customer name, ...)

Verifying
=========

:func:`verify_receipt` refuses a file whose bytes differ in any way from what
the server wrote: damaged JSON, a re-serialisation (other whitespace, key order,
escaping, number form, a trailing newline), missing or unexpected fields, an
image that does not match its stated SHA-256, non-canonical base64, a public key
that is not the fingerprinted one, or a bad signature.

**Self-consistency is not authenticity.** A receipt carries its own public
key, so a forger can edit one and re-sign it with a key of their own: it is
then perfectly self-consistent. Only the check against the bank's published
key proves the bank sealed it: pass ``trusted_public_keys`` (the CLI trusts
the server's signing key and every ``--public-key``, and refuses without any).
Without it the result is ``ok`` but ``trusted=False``, with a warning as
``reason``. ``session_id`` binds the receipt to the session it is asked to be
of: a genuine receipt of another session fails (``wrong_session``).

Images never appear in logs, reprs or reasons.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
import math
import numbers
import re
import secrets
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from cryptography.exceptions import UnsupportedAlgorithm

from .exceptions import RecorderError
from .keys import SigningKey, fingerprint

logger = logging.getLogger(__name__)

FORMAT = "vcounter-receipt/1"
#: larger files are refused unread (a receipt holds two small images)
MAX_RECEIPT_BYTES = 32 * 1024 * 1024

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
JPEG_MAGIC = b"\xff\xd8\xff"

ENVELOPE_FIELDS = frozenset({"fingerprint", "payload", "public_key", "signature"})
PAYLOAD_FIELDS = frozenset(
    {
        "format",
        "receipt_id",
        "session_id",
        "flow",
        "step_id",
        "document",
        "signature_image",
        "face_snapshot",
        "identity",
        "signed_at",
        "sealed_at",
        "key_fingerprint",
        "extra",
    }
)
FLOW_FIELDS = frozenset({"business", "version"})
DOCUMENT_FIELDS = frozenset({"id", "title", "sha256"})
IMAGE_FIELDS = frozenset({"media_type", "sha256", "data"})
IDENTITY_METHODS = ("face", "manual", "none")
IDENTITY_REQUIRED = frozenset({"method", "verified"})
#: optional identity fields and the JSON types each may hold (null always allowed)
IDENTITY_OPTIONAL: dict[str, str] = {
    "score": "number",
    "distance": "number",
    "threshold": "number",
    "liveness": "bool",
    "reason": "string",
    "by": "string",
}

UNTRUSTED_WARNING = (
    "WARNING: the receipt is self-consistent, but its signer was not checked against "
    "a trusted key: anyone can sign a receipt with a key of their own"
)

_HEX64 = re.compile(r"[0-9a-f]{64}")
_TIME = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z")


class ReceiptError(RecorderError, ValueError):
    """A receipt cannot be sealed from these inputs (the message never holds image data)."""

    code = "receipt_error"


@dataclass(frozen=True)
class ReceiptCheck:
    """The outcome of :func:`verify_receipt`.

    ``ok``: the file is intact and validly signed — and, when trusted keys were
    given, by one of them. ``trusted``: the signer is one of the trusted keys
    (``ok and not trusted`` means only self-consistency was checked; ``reason``
    then holds :data:`UNTRUSTED_WARNING`). ``payload`` is set when the receipt
    is self-consistent (also for an unknown signer, to show what it claims);
    ``fingerprint`` is the signer's key when known. ``code`` names the outcome
    for programs: ``None`` (valid and trusted), ``untrusted``, ``unknown_key``,
    ``not_a_receipt`` (not a JSON object at all), ``not_canonical``,
    ``malformed``, ``image_mismatch``, ``bad_key``, ``bad_signature``, ``wrong_session``.
    """

    ok: bool
    reason: str | None
    #: holds the images (base64): kept out of the repr so that logging a check cannot leak them
    payload: dict[str, Any] | None = field(repr=False)
    fingerprint: str | None
    trusted: bool = False
    code: str | None = None


class _Invalid(Exception):
    def __init__(self, code: str, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


def canonical_json(obj: Any) -> bytes:
    """The canonical form (see the module docstring); ValueError/TypeError when not representable."""
    text = json.dumps(
        obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate ("\\ud800") cannot be UTF-8
        raise ValueError("a string holds a lone surrogate (not representable in UTF-8)") from None


def _envelope_prefix(fp: str) -> bytes:
    return b'{"fingerprint":' + canonical_json(fp) + b',"payload":'


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _short(value: Any) -> str:
    """A value for a message: truncated, so a hostile file cannot flood the output."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


# -- sealing ---------------------------------------------------------------------------------


def seal_receipt(
    signing: SigningKey,
    *,
    session_id: str,
    flow: dict[str, Any],
    step_id: str,
    document: dict[str, Any],
    signature_png: bytes,
    face_snapshot_jpeg: bytes | None,
    identity: dict[str, Any],
    signed_at: datetime,
    extra: dict[str, Any] | None = None,
) -> bytes:
    """Seal a signature: the receipt file (canonical JSON bytes, see the module docstring).

    ``document`` is ``{"id", "title", "sha256"}`` (hex SHA-256 of the document
    the customer saw); ``signature_png`` the handwritten signature (PNG);
    ``face_snapshot_jpeg`` the customer's face at that moment (JPEG), or None
    without video; ``identity`` the verdict; ``signed_at`` timezone-aware.
    Raises :class:`ReceiptError` on inputs that do not fit the format. The
    result is verified before it is returned.
    """
    if not isinstance(signed_at, datetime) or signed_at.utcoffset() is None:
        raise ReceiptError("signed_at must be a timezone-aware datetime")
    if not isinstance(signature_png, bytes | bytearray) or not bytes(signature_png).startswith(
        PNG_MAGIC
    ):
        raise ReceiptError("the signature image is not a PNG")
    if face_snapshot_jpeg is not None and (
        not isinstance(face_snapshot_jpeg, bytes | bytearray)
        or not bytes(face_snapshot_jpeg).startswith(JPEG_MAGIC)
    ):
        raise ReceiptError("the face snapshot is not a JPEG")
    if extra is not None and not isinstance(extra, dict):
        raise ReceiptError("extra must be an object (dict) or None")
    key_fp = signing.fingerprint()
    payload: dict[str, Any] = {
        "format": FORMAT,
        "receipt_id": secrets.token_hex(16),
        "session_id": session_id,
        "flow": dict(flow) if isinstance(flow, dict) else flow,
        "step_id": step_id,
        "document": dict(document) if isinstance(document, dict) else document,
        "signature_image": _image("image/png", bytes(signature_png)),
        "face_snapshot": None
        if face_snapshot_jpeg is None
        else _image("image/jpeg", bytes(face_snapshot_jpeg)),
        "identity": _normalise_identity(identity),
        "signed_at": _iso(signed_at),
        "sealed_at": _iso(datetime.now(UTC)),
        "key_fingerprint": key_fp,
        "extra": {} if extra is None else extra,
    }
    try:
        payload_bytes = canonical_json(payload)
        # the payload as the verifier will see it (tuples become lists, ...)
        _check_payload(json.loads(payload_bytes))
    except _Invalid as exc:
        raise ReceiptError(f"cannot seal: {exc.reason}") from None
    except (TypeError, ValueError) as exc:  # not JSON-serialisable, NaN, lone surrogate
        raise ReceiptError(f"cannot seal: {exc}") from None
    public_pem = signing.public_pem().decode("ascii")
    signature = _b64(signing.sign(payload_bytes))
    data = (
        _envelope_prefix(key_fp)
        + payload_bytes
        + b',"public_key":'
        + canonical_json(public_pem)
        + b',"signature":'
        + canonical_json(signature)
        + b"}"
    )
    check = verify_receipt(data, trusted_public_keys=[public_pem.encode("ascii")])
    if not check.ok:  # a bug here, never the caller's input
        raise RecorderError(f"a freshly sealed receipt does not verify: {check.reason}")
    logger.info(
        "session %s: sealed signature receipt %s (step %s, document sha256 %s, identity %s)",
        session_id,
        payload["receipt_id"],
        step_id,
        payload["document"]["sha256"],
        payload["identity"]["method"],
    )
    return data


def _image(media_type: str, data: bytes) -> dict[str, str]:
    return {
        "media_type": media_type,
        "sha256": hashlib.sha256(data).hexdigest(),
        "data": _b64(data),
    }


def _normalise_identity(identity: Any) -> Any:
    """Plain numbers for the scores (numpy floats are not JSON); the rest as given."""
    if not isinstance(identity, dict):
        return identity
    out = dict(identity)
    for key in ("score", "distance", "threshold"):
        value = out.get(key)
        if isinstance(value, numbers.Real) and not isinstance(value, bool | int):
            out[key] = float(value)
    return out


# -- verifying -------------------------------------------------------------------------------


def verify_receipt(
    data: bytes,
    *,
    trusted_public_keys: list[bytes] | None = None,
    session_id: str | None = None,
) -> ReceiptCheck:
    """Check a receipt file; never raises on a bad file (see :class:`ReceiptCheck`).

    ``trusted_public_keys``: PEM public keys the signer must be one of (the
    bank's published key). ``None`` checks self-consistency only (``ok`` with
    ``trusted=False`` and a warning); an empty list trusts no key. A trusted
    key that is not an Ed25519 PEM raises :class:`recorder.exceptions.RecorderError`.
    ``session_id``: the session the receipt must be of.
    """
    trusted = None if trusted_public_keys is None else {fingerprint(k) for k in trusted_public_keys}
    try:
        payload, key_fp = _check(bytes(data))
    except _Invalid as exc:
        return ReceiptCheck(False, exc.reason, None, None, code=exc.code)
    if session_id is not None and payload["session_id"] != session_id:
        return ReceiptCheck(
            False,
            f"the receipt is of session {_short(payload['session_id'])}, not {_short(session_id)}",
            payload,
            key_fp,
            trusted=trusted is not None and key_fp in trusted,
            code="wrong_session",
        )
    if trusted is None:
        return ReceiptCheck(
            True, UNTRUSTED_WARNING, payload, key_fp, trusted=False, code="untrusted"
        )
    if key_fp not in trusted:
        known = ", ".join(sorted(f[:16] for f in trusted)) or "none"
        return ReceiptCheck(
            False,
            f"signed by an unknown key (fingerprint {key_fp}), not by a trusted "
            f"key (trusted: {known}): it may have been re-signed by someone else",
            payload,
            key_fp,
            code="unknown_key",
        )
    return ReceiptCheck(True, None, payload, key_fp, trusted=True)


def _reject_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _Invalid("malformed", f"duplicate key {_short(key)}")
        out[key] = value
    return out


def _reject_constant(name: str) -> Any:
    raise _Invalid("not_canonical", f"{name} is not a JSON number")


def _check(raw: bytes) -> tuple[dict[str, Any], str]:
    if len(raw) > MAX_RECEIPT_BYTES:
        raise _Invalid(
            "not_a_receipt", f"not a receipt: {len(raw)} bytes is larger than any receipt"
        )
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _Invalid(
            "not_a_receipt", f"not a receipt: not UTF-8 text (byte {exc.start})"
        ) from None
    try:
        doc = json.loads(
            text, object_pairs_hook=_reject_duplicates, parse_constant=_reject_constant
        )
    except json.JSONDecodeError as exc:  # the message names a position, never the content
        raise _Invalid(
            "not_a_receipt",
            f"not a receipt: damaged JSON ({exc.msg} at byte {len(text[: exc.pos].encode())})",
        ) from None
    except RecursionError:
        raise _Invalid("not_a_receipt", "not a receipt: JSON nested too deeply") from None
    if not isinstance(doc, dict):
        raise _Invalid("not_a_receipt", "not a receipt: the JSON is not an object")
    try:
        canonical = canonical_json(doc)
    except ValueError as exc:
        raise _Invalid("not_canonical", f"not in canonical form: {exc}") from None
    if canonical != raw:
        at = _first_difference(canonical, raw)
        raise _Invalid(
            "not_canonical",
            "not in canonical form: the file was re-serialised or edited "
            f"(whitespace, key order, escaping or number form differ from byte {at}); "
            "only the exact bytes the server wrote verify",
        )
    _fields(doc, ENVELOPE_FIELDS, "receipt")
    key_fp, pem, sig_b64, payload = (
        doc["fingerprint"],
        doc["public_key"],
        doc["signature"],
        doc["payload"],
    )
    if not isinstance(key_fp, str) or not _HEX64.fullmatch(key_fp):
        raise _Invalid("malformed", "fingerprint is not 64 lowercase hex digits")
    if not isinstance(pem, str) or not pem.isascii():
        raise _Invalid("bad_key", "public_key is not a PEM text")
    try:
        actual_fp = fingerprint(pem.encode("ascii"))
    except RecorderError as exc:
        raise _Invalid("bad_key", f"public_key: {exc}") from None
    except (ValueError, TypeError, UnsupportedAlgorithm):  # a damaged key of another algorithm
        raise _Invalid("bad_key", "public_key: not an Ed25519 public key") from None
    if actual_fp != key_fp:
        raise _Invalid("bad_key", "fingerprint does not match the public key")
    if not isinstance(sig_b64, str):
        raise _Invalid("malformed", "signature is not a string")
    signature = _b64decode(sig_b64, "signature")
    if len(signature) != 64:
        raise _Invalid(
            "bad_signature", f"signature is {len(signature)} bytes, an Ed25519 signature is 64"
        )
    if not isinstance(payload, dict):
        raise _Invalid("malformed", "payload is not an object")
    _check_payload(payload)
    if payload["key_fingerprint"] != key_fp:
        raise _Invalid("bad_key", "the payload names another signing key than the one attached")
    # the signed bytes: exactly as stored in the file (the file is canonical, so they are
    # also the canonical form of the payload; no re-dump is trusted blindly)
    prefix = _envelope_prefix(key_fp)
    end = raw.rfind(b',"public_key":"')
    if not raw.startswith(prefix) or end < len(prefix):
        raise _Invalid("malformed", "the payload is not where the format puts it")
    signed = raw[len(prefix) : end]
    if signed != canonical_json(payload):
        raise _Invalid("not_canonical", "the stored payload bytes are not its canonical form")
    # the key's PEM must be the canonical one too (no second spelling of the same key)
    canonical_pem = _canonical_pem(pem)
    if canonical_pem != pem:
        raise _Invalid("bad_key", "public_key is not in canonical PEM form")
    if not SigningKey.verify(pem.encode("ascii"), signature, signed):
        raise _Invalid(
            "bad_signature",
            "bad signature: the payload is not what the key signed (the receipt was altered)",
        )
    return payload, key_fp


def _first_difference(a: bytes, b: bytes) -> int:
    """Index of the first differing byte (binary search: the slices compare in C)."""
    lo, hi = 0, min(len(a), len(b))
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if a[:mid] == b[:mid]:
            lo = mid
        else:
            hi = mid - 1
    return lo


def _canonical_pem(pem: str) -> str:
    from cryptography.hazmat.primitives import serialization

    key = serialization.load_pem_public_key(pem.encode("ascii"))
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode("ascii")


def _fields(
    obj: dict[str, Any], expected: frozenset[str], what: str, optional: frozenset[str] = frozenset()
) -> None:
    missing = sorted(expected - obj.keys())
    unexpected = sorted(obj.keys() - expected - optional)
    if missing:
        raise _Invalid("malformed", f"{what}: missing field(s) {', '.join(map(_short, missing))}")
    if unexpected:
        shown = ", ".join(map(_short, unexpected[:5])) + (" ..." if len(unexpected) > 5 else "")
        raise _Invalid("malformed", f"{what}: unexpected field(s) {shown}")


def _string(value: Any, what: str, *, empty: bool = False) -> str:
    if not isinstance(value, str) or (not empty and not value):
        raise _Invalid("malformed", f"{what} must be a{'' if empty else ' non-empty'} string")
    return value


def _hex64(value: Any, what: str) -> str:
    if not isinstance(value, str) or not _HEX64.fullmatch(value):
        raise _Invalid("malformed", f"{what} must be 64 lowercase hex digits (SHA-256)")
    return value


def _time(value: Any, what: str) -> None:
    if not isinstance(value, str) or not _TIME.fullmatch(value):
        raise _Invalid(
            "malformed", f"{what} must be an ISO 8601 UTC time like 2025-01-31T09:30:00.123Z"
        )
    try:
        datetime.fromisoformat(value[:-1])
    except ValueError:
        raise _Invalid("malformed", f"{what} is not a valid date and time") from None


def _b64decode(value: str, what: str) -> bytes:
    if not value.isascii():
        raise _Invalid("malformed", f"{what} is not base64")
    try:
        data = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise _Invalid("malformed", f"{what} is not base64") from None
    if _b64(data) != value:  # unused bits set, or padding spelt otherwise: a second spelling
        raise _Invalid("not_canonical", f"{what} is not canonical base64")
    return data


def _check_image(value: Any, what: str, media_type: str, magic: bytes) -> None:
    if not isinstance(value, dict):
        raise _Invalid("malformed", f"{what} must be an object")
    _fields(value, IMAGE_FIELDS, what)
    if value["media_type"] != media_type:
        raise _Invalid("malformed", f"{what}.media_type must be {media_type}")
    stated = _hex64(value["sha256"], f"{what}.sha256")
    data = _b64decode(_string(value["data"], f"{what}.data"), f"{what}.data")
    if hashlib.sha256(data).hexdigest() != stated:
        raise _Invalid(
            "image_mismatch", f"{what} does not match its stated sha256 (the image was changed)"
        )
    if not data.startswith(magic):
        raise _Invalid("malformed", f"{what} is not {media_type}")


def _check_identity(value: Any) -> None:
    if not isinstance(value, dict):
        raise _Invalid("malformed", "identity must be an object")
    _fields(value, IDENTITY_REQUIRED, "identity", frozenset(IDENTITY_OPTIONAL))
    if value["method"] not in IDENTITY_METHODS:
        raise _Invalid("malformed", f"identity.method must be one of {', '.join(IDENTITY_METHODS)}")
    if not isinstance(value["verified"], bool):
        raise _Invalid("malformed", "identity.verified must be true or false")
    if value["method"] == "none" and value["verified"]:
        raise _Invalid("malformed", "identity: method none cannot be verified")
    for key, kind in IDENTITY_OPTIONAL.items():
        item = value.get(key)
        if item is None:
            continue
        good = {
            "number": isinstance(item, int | float)
            and not isinstance(item, bool)
            and math.isfinite(item),
            "bool": isinstance(item, bool),
            "string": isinstance(item, str),
        }[kind]
        if not good:
            raise _Invalid("malformed", f"identity.{key} must be a {kind} or null")


def _check_payload(p: dict[str, Any]) -> None:
    """Exact fields and types; the images against their hashes. Raises :class:`_Invalid`."""
    _fields(p, PAYLOAD_FIELDS, "payload")
    if p["format"] != FORMAT:
        raise _Invalid("malformed", f"payload.format is {_short(p['format'])}, not {FORMAT}")
    if not isinstance(p["receipt_id"], str) or not re.fullmatch(r"[0-9a-f]{32}", p["receipt_id"]):
        raise _Invalid("malformed", "receipt_id must be 32 lowercase hex digits")
    _string(p["session_id"], "session_id")
    _string(p["step_id"], "step_id")
    flow = p["flow"]
    if not isinstance(flow, dict):
        raise _Invalid("malformed", "flow must be an object {business, version}")
    _fields(flow, FLOW_FIELDS, "flow")
    _string(flow["business"], "flow.business")
    version = flow["version"]
    if not (isinstance(version, str) and version) and not (
        isinstance(version, int) and not isinstance(version, bool)
    ):
        raise _Invalid("malformed", "flow.version must be a string or an integer")
    doc = p["document"]
    if not isinstance(doc, dict):
        raise _Invalid("malformed", "document must be an object {id, title, sha256}")
    _fields(doc, DOCUMENT_FIELDS, "document")
    _string(doc["id"], "document.id")
    _string(doc["title"], "document.title", empty=True)
    _hex64(doc["sha256"], "document.sha256")
    _check_image(p["signature_image"], "signature_image", "image/png", PNG_MAGIC)
    if p["face_snapshot"] is not None:
        _check_image(p["face_snapshot"], "face_snapshot", "image/jpeg", JPEG_MAGIC)
    _check_identity(p["identity"])
    _time(p["signed_at"], "signed_at")
    _time(p["sealed_at"], "sealed_at")
    _hex64(p["key_fingerprint"], "key_fingerprint")
    if not isinstance(p["extra"], dict):
        raise _Invalid("malformed", "extra must be an object")


# -- reading ---------------------------------------------------------------------------------


def redacted(payload: dict[str, Any]) -> dict[str, Any]:
    """The payload with each image's base64 replaced by its size: for printing and logs."""
    out = dict(payload)
    for key in ("signature_image", "face_snapshot"):
        image = out.get(key)
        if isinstance(image, dict) and isinstance(image.get("data"), str):
            data = image["data"]
            size = len(data) * 3 // 4 - data[-2:].count("=")
            out[key] = {k: v for k, v in image.items() if k != "data"} | {"bytes": size}
    return out


def image_bytes(payload: dict[str, Any], which: str) -> bytes | None:
    """The decoded ``signature_image`` or ``face_snapshot`` of a verified payload (None if absent)."""
    image = payload.get(which)
    return None if image is None else base64.b64decode(image["data"])

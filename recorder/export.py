"""Evidence packages: a recording as a ZIP a third party can verify with standard tools.

The package holds the recording exactly as stored (encrypted segments,
chain.log, encrypted per-party WebMs; read from a local directory or any
:class:`~recorder.storage.Storage`, such as S3), the signed manifest, the public key,
the timeline, and ``README.txt`` with the verification steps (sha256sum and
openssl). Nothing in it is plaintext media: the recipient decrypts with the
session's data key, which the package carries wrapped under a passphrase
(scrypt + AES-256-GCM, ``export_key.json``) handed over separately.

The session's identity evidence images (reference photo, snapshots; never
face embeddings) go in ``evidence/``, re-encrypted like the media (chunked
AES-256-GCM under the same data key) and listed with kind, SHA-256 of the
plaintext and creation time in ``evidence/index.json`` and the README.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import secrets
import tempfile
import time
import zipfile
from collections.abc import Callable
from hashlib import scrypt
from pathlib import Path

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from .encrypted_file import EncryptedWriter, open_encrypted
from .evidence import EvidenceItem, EvidenceStore
from .exceptions import IntegrityError, RecorderError, WrongKey
from .keys import MasterKey
from .layout import MANIFEST, read_data_key
from .storage import Storage, as_storage, read_all
from .verify import VerifyResult, verify

EXPORT_KEY = "export_key.json"
RECORDING_DIR = "recording/"
EVIDENCE_DIR = "evidence/"
EVIDENCE_INDEX = EVIDENCE_DIR + "index.json"
#: evidence kinds a package carries: images a person can check (embeddings stay behind)
EXPORTED_KINDS = ("reference_image", "snapshot")
_EXTENSIONS = {"image/jpeg": ".jpg", "image/png": ".png", "image/webp": ".webp"}
_EVIDENCE_FILE = re.compile(r"evidence/[a-z_]+-[A-Za-z0-9_-]+\.[a-z]+\.enc")
SCRYPT = {"n": 2**15, "r": 8, "p": 1}
#: bytes read from storage per step while copying an object into the package
_COPY_BLOCK = 1 << 20

README = """vcounter evidence package — recording {recording_id} (session {session_id})
Exported {exported_at} by {exported_by}.

This package holds a bank video-counter call recording (双录) exactly as it was
stored, with a manifest signed by the bank's server. Nothing here is plaintext:
the media is AES-256-GCM encrypted; the key is in export_key.json, wrapped
under a passphrase the bank gives you separately.

HOW TO VERIFY WITH STANDARD TOOLS (Linux/macOS: sha256sum or shasum -a 256, OpenSSL 3)

1. The manifest is authentic (signed by the bank's key):
     openssl pkeyutl -verify -pubin -inkey public_key.pem -rawin \\
         -in manifest.json -sigfile manifest.sig
   prints "Signature Verified Successfully". Then make sure public_key.pem is
   the bank's key: its fingerprint
     openssl pkey -pubin -in public_key.pem -outform DER | tail -c 32 | sha256sum
   must equal the one the bank publishes: {fingerprint}

2. Every file is the one the manifest names: for each entry of "segments"
   (recording/segments/NNNNNN.seg) and "outputs" (recording/<party>.webm.enc)
   in manifest.json, `sha256sum <file>` must equal its "sha256".

3. Nothing was removed or reordered: the hash chain
     chain_0 = SHA256("vcounter-recording" || 0x00 || session_id)
     chain_i = SHA256(chain_(i-1) || SHA256(segment_i))      (raw 32-byte digests)
   must end at manifest.json "chain"."final" ({chain_final}).

Or run `vcounter verify {package_name}` on a machine with vcounter installed.

TO PLAY: `vcounter decrypt-export {package_name} OUTDIR --passphrase-file F`
writes customer.webm and agent.webm (VP8 + Opus; any browser, VLC or ffmpeg
plays them; both start at the recording's time origin, so play them side by
side in sync). The timeline (timeline.json) gives every event's offset in ms.
{evidence}"""

EVIDENCE_README = """
IDENTITY EVIDENCE (evidence/, also listed in evidence/index.json)

The customer's reference photo and the snapshots kept during the session,
encrypted like the media (same key and format). `vcounter decrypt-export`
writes them to OUTDIR/evidence/ (file name without .enc) and checks each one;
`sha256sum OUTDIR/evidence/*` must print the SHA-256 below. Items kept while
the call was recorded also appear, with the same SHA-256, in timeline.json
(reference_added, snapshot_captured...), which the signed manifest covers.

{rows}
"""


class _Buffer:
    """An in-memory BlobWriter: evidence items are small, the ZIP entry is written at once."""

    def __init__(self) -> None:
        self.data = bytearray()

    def write(self, data: bytes) -> None:
        self.data += data

    def commit(self) -> None:
        pass

    def abort(self) -> None:
        self.data.clear()


def _evidence_name(item: EvidenceItem) -> str:
    ext = _EXTENSIONS.get(item.content_type.split(";")[0].strip().lower(), ".bin")
    return f"{EVIDENCE_DIR}{item.kind}-{item.id}{ext}.enc"


def _write_evidence(
    z: zipfile.ZipFile, evidence: EvidenceStore, session_id: str, data_key: bytes
) -> list[dict[str, object]]:
    """The session's evidence images into ``evidence/``, encrypted under ``data_key``; the index."""
    index = []
    for item in evidence.list(session_id):
        if item.kind not in EXPORTED_KINDS:
            continue
        _, data = evidence.get(session_id, item.id)
        out = _Buffer()
        writer = EncryptedWriter(out, data_key, len(data))
        writer.write(data)
        writer.close()
        name = _evidence_name(item)
        z.writestr(name, bytes(out.data))
        index.append(
            {
                "file": name,
                "id": item.id,
                "kind": item.kind,
                "content_type": item.content_type,
                "size": item.size,
                "sha256": item.sha256,
                "created_at": item.created_at,
                "stored_sha256": writer.sha256,
            }
        )
    return index


def _evidence_readme(index: list[dict[str, object]]) -> str:
    if not index:
        return ""
    rows = [
        f"  {e['kind']:<16} {e['created_at']}  {str(e['file']).removesuffix('.enc')}\n"
        f"    sha256 {e['sha256']}"
        for e in index
    ]
    return EVIDENCE_README.format(rows="\n".join(rows))


def _wrap_for_passphrase(data_key: bytes, passphrase: str, recording_id: str) -> dict[str, object]:
    salt, nonce = secrets.token_bytes(16), secrets.token_bytes(12)
    kek = scrypt(passphrase.encode(), salt=salt, maxmem=128 * 1024 * 1024, dklen=32, **SCRYPT)
    wrapped = AESGCM(kek).encrypt(nonce, data_key, b"vcounter export\0" + recording_id.encode())
    b64 = lambda b: base64.b64encode(b).decode()  # noqa: E731
    return {
        "kdf": "scrypt",
        **SCRYPT,
        "salt": b64(salt),
        "cipher": "AES-256-GCM",
        "nonce": b64(nonce),
        "wrapped_key": b64(wrapped),
        "aad": f"vcounter export\\0{recording_id}",
    }


def _int(value: object) -> int:
    """A whole number read from a package's JSON (``int`` refuses anything else: a bad package)."""
    return int(str(value))


def unwrap_export_key(spec: dict[str, object], passphrase: str, recording_id: str) -> bytes:
    try:
        kek = scrypt(
            passphrase.encode(),
            salt=base64.b64decode(str(spec["salt"])),
            n=_int(spec["n"]),
            r=_int(spec["r"]),
            p=_int(spec["p"]),
            maxmem=128 * 1024 * 1024,
            dklen=32,
        )
        return AESGCM(kek).decrypt(
            base64.b64decode(str(spec["nonce"])),
            base64.b64decode(str(spec["wrapped_key"])),
            b"vcounter export\0" + recording_id.encode(),
        )
    except Exception:
        raise WrongKey("wrong passphrase for this package") from None


def export_package(
    directory: str | Path | Storage,
    out: Path,
    master_key: MasterKey,
    passphrase: str,
    *,
    exported_by: str,
    progress: Callable[[int, int], None] | None = None,
    evidence: EvidenceStore | None = None,
    recording_id: str | None = None,
) -> dict[str, object]:
    """Write ``out`` (a ZIP); returns a summary. The recording must be finalised.

    ``directory`` is a recording directory or any :class:`Storage` holding one
    (then ``recording_id`` names it); objects are streamed into the ZIP in
    1 MiB blocks. With ``evidence``, the session's reference photo and
    snapshots go in too.
    """
    storage = as_storage(directory)
    if recording_id is None:
        if not isinstance(directory, str | Path):
            raise ValueError("recording_id is required with a Storage")
        recording_id = Path(directory).name
    if not storage.exists(MANIFEST):
        raise RecorderError(f"{recording_id} is not finalised: nothing to export")
    manifest = json.loads(read_all(storage, MANIFEST))
    data_key = read_data_key(storage, master_key)
    top = {"manifest.json", "manifest.sig", "public_key.pem", "timeline.json"}
    blobs = [(name, storage.open(name)) for name in storage.list()]
    try:
        total = sum(blob.size for _, blob in blobs)
        exported_at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        info = {
            "recording_id": recording_id,
            "session_id": manifest.get("session_id"),
            "exported_at": exported_at,
            "exported_by": exported_by,
        }
        tmp = out.with_name(out.name + ".part")
        done = 0
        index: list[dict[str, object]] = []
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as z:
            z.writestr("export.json", json.dumps(info, indent=1))
            z.writestr(
                EXPORT_KEY,
                json.dumps(_wrap_for_passphrase(data_key, passphrase, recording_id), indent=1),
            )
            for name, blob in blobs:
                entry = zipfile.ZipInfo(
                    name if name in top else RECORDING_DIR + name, date_time=time.localtime()[:6]
                )
                entry.external_attr = 0o600 << 16
                with z.open(entry, "w", force_zip64=blob.size >= 1 << 31) as f:
                    offset = 0
                    while offset < blob.size:
                        block = blob.read(offset, _COPY_BLOCK)
                        if not block:
                            raise RecorderError(
                                f"{name}: ended after {offset} of {blob.size} bytes"
                            )
                        f.write(block)
                        offset += len(block)
                done += blob.size
                if progress is not None:
                    progress(done, total)
            # the call's session (the manifest's own "session_id" names the recording)
            session_id = (manifest.get("metadata") or {}).get("session_id")
            if evidence is not None and isinstance(session_id, str):
                index = _write_evidence(z, evidence, session_id, data_key)
                if index:
                    z.writestr(EVIDENCE_INDEX, json.dumps(index, indent=1))
            z.writestr(
                "README.txt",
                README.format(
                    **info,
                    fingerprint=manifest.get("signing_key", {}).get("fingerprint", "?"),
                    chain_final=manifest.get("chain", {}).get("final", "?"),
                    package_name=out.name,
                    evidence=_evidence_readme(index),
                ),
            )
    finally:
        for _, blob in blobs:
            blob.close()
    os.replace(tmp, out)
    return {**info, "bytes": total, "files": len(blobs), "evidence": len(index)}


def _extract(package: Path, into: Path) -> Path:
    with zipfile.ZipFile(package) as z:
        for name in z.namelist():
            target = (into / name).resolve()
            if into.resolve() not in target.parents:
                raise RecorderError(f"package entry {name!r} escapes the package")
        z.extractall(into)
    recording = into / RECORDING_DIR
    for name in ("manifest.json", "manifest.sig", "public_key.pem", "timeline.json"):
        if (into / name).exists():
            os.replace(into / name, recording / name)
    return recording


def verify_package(
    package: Path, public_key_pem: bytes | None = None, master_key: MasterKey | None = None
) -> VerifyResult:
    """Verify an evidence package as :func:`recorder.verify` does a recording directory."""
    try:
        with tempfile.TemporaryDirectory(prefix="vcounter-verify-") as tmp:
            return verify(_extract(package, Path(tmp)), master_key, public_key_pem)
    except (zipfile.BadZipFile, OSError) as exc:
        return VerifyResult(False, f"not a readable evidence package: {exc}", [str(exc)])


def decrypt_package(package: Path, out_dir: Path, passphrase: str) -> list[Path]:
    """Write the package's per-party WebMs (plaintext) into ``out_dir`` for playback, and its
    identity evidence into ``out_dir/evidence/``, each checked against the index's SHA-256."""
    written = []
    with zipfile.ZipFile(package) as z:
        info = json.loads(z.read("export.json"))
        data_key = unwrap_export_key(
            json.loads(z.read(EXPORT_KEY)), passphrase, info["recording_id"]
        )
        names = z.namelist()
        index = json.loads(z.read(EVIDENCE_INDEX)) if EVIDENCE_INDEX in names else []
        expected = {e["file"]: e["sha256"] for e in index}
        with tempfile.TemporaryDirectory(prefix="vcounter-decrypt-") as tmp:
            for name in names:
                if name.startswith(RECORDING_DIR) and name.endswith(".webm.enc"):
                    target = out_dir / Path(name).name.removesuffix(".enc")
                elif name in expected and _EVIDENCE_FILE.fullmatch(name):
                    target = out_dir / "evidence" / Path(name).name.removesuffix(".enc")
                    target.parent.mkdir(exist_ok=True)
                else:
                    continue
                digest = hashlib.sha256()
                encrypted = open_encrypted(Path(z.extract(name, tmp)), data_key)
                try:
                    with open(target, "wb") as f:
                        for block in encrypted.iter_plaintext():
                            f.write(block)
                            digest.update(block)
                finally:
                    encrypted.close()
                if name in expected and digest.hexdigest() != expected[name]:
                    target.unlink()
                    raise IntegrityError(
                        f"{name}: decrypted data does not match its SHA-256 in {EVIDENCE_INDEX}"
                    )
                written.append(target)
    return written

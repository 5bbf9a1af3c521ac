"""Sealed signature receipts (issue #5): real keys, a real PNG signature, a real face.

A receipt is what a customer keeps: it must verify as written, and no change
of any byte — nor a re-serialisation, nor a re-signing with another key — may
pass for the bank's seal.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
from datetime import UTC, datetime, timedelta, timezone

import numpy as np
import pytest
from PIL import Image, ImageDraw

from recorder.keys import SigningKey
from recorder.receipt import (
    FORMAT,
    ReceiptError,
    canonical_json,
    image_bytes,
    redacted,
    seal_receipt,
    verify_receipt,
)

from .helpers import REPO, shared_data
from .server_process import vcounter_command

DOC_SHA = hashlib.sha256(b"Personal loan contract, 12 pages").hexdigest()
SIGNED_AT = datetime(2025, 3, 14, 17, 26, 53, 589793, tzinfo=timezone(timedelta(hours=8)))


def _signature_png() -> bytes:
    """A handwritten-looking stroke on white, as the signature pad sends it."""
    img = Image.new("RGB", (96, 32), "white")
    ImageDraw.Draw(img).line(
        [(4, 24), (20, 6), (34, 26), (52, 8), (70, 24), (90, 12)], fill="black", width=2
    )
    out = io.BytesIO()
    img.save(out, "PNG")
    return out.getvalue()


@pytest.fixture(scope="module")
def face_jpeg() -> bytes:
    """The face of a real photo, small (so that every byte of a receipt can be altered in turn)."""
    photo = Image.open(shared_data("faces/face_recognition/examples/biden.jpg")).convert("RGB")
    face = photo.crop((360, 80, 780, 620)).resize((42, 54))
    out = io.BytesIO()
    face.save(out, "JPEG", quality=60)
    return out.getvalue()


@pytest.fixture(scope="module")
def bank() -> SigningKey:
    return SigningKey.generate()


def _seal(key: SigningKey, face: bytes | None, **changes: object) -> bytes:
    kwargs: dict = {
        "session_id": "S-20250314-0042",
        "flow": {"business": "loan_signing", "version": 3},
        "step_id": "sign_contract",
        "document": {
            "id": "loan_contract",
            "title": "个人贷款合同 Personal loan contract",
            "sha256": DOC_SHA,
        },
        "signature_png": _signature_png(),
        "face_snapshot_jpeg": face,
        "identity": {
            "method": "face",
            "verified": True,
            "score": 0.72,
            "distance": 0.28,
            "threshold": 0.4,
            "liveness": True,
        },
        "signed_at": SIGNED_AT,
        "extra": {"agent": "alice", "customer": "张三", "public_key": "not the envelope's"},
    }
    kwargs.update(changes)
    return seal_receipt(key, **kwargs)


def _assemble(key: SigningKey, payload: dict) -> bytes:
    """A receipt for any payload, signed by ``key``: what a forger with their own key can make."""
    payload_bytes = canonical_json(payload)
    return canonical_json(
        {
            "fingerprint": key.fingerprint(),
            "payload": json.loads(payload_bytes),
            "public_key": key.public_pem().decode(),
            "signature": base64.b64encode(key.sign(payload_bytes)).decode(),
        }
    )


def _image_chunks(receipt: bytes) -> list[str]:
    """Pieces of the embedded images' base64, to prove they never leak into reasons or reprs."""
    payload = json.loads(receipt)["payload"]
    chunks = []
    for name in ("signature_image", "face_snapshot"):
        data = payload[name]["data"] if payload[name] else ""
        chunks += [data[i : i + 12] for i in range(0, len(data) - 12, len(data) // 5 or 1)]
    return chunks


def test_round_trip(bank, face_jpeg):
    receipt = _seal(bank, face_jpeg)
    check = verify_receipt(receipt, trusted_public_keys=[bank.public_pem()])
    assert check.ok and check.trusted and check.reason is None and check.code is None
    assert check.fingerprint == bank.fingerprint()
    p = check.payload
    assert (
        p is not None and p["format"] == FORMAT and re.fullmatch(r"[0-9a-f]{32}", p["receipt_id"])
    )
    assert p["session_id"] == "S-20250314-0042" and p["step_id"] == "sign_contract"
    assert p["flow"] == {"business": "loan_signing", "version": 3}
    assert p["document"]["sha256"] == DOC_SHA and p["document"]["title"].startswith("个人贷款合同")
    assert image_bytes(p, "signature_image") == _signature_png()
    assert image_bytes(p, "face_snapshot") == face_jpeg
    assert p["face_snapshot"]["sha256"] == hashlib.sha256(face_jpeg).hexdigest()
    assert p["identity"]["method"] == "face" and p["identity"]["distance"] == 0.28
    assert p["signed_at"] == "2025-03-14T09:26:53.589Z"  # UTC, whatever zone it was given in
    assert datetime.fromisoformat(p["sealed_at"][:-1]).replace(tzinfo=UTC) <= datetime.now(UTC)
    assert p["key_fingerprint"] == bank.fingerprint() and p["extra"]["customer"] == "张三"
    # the file is UTF-8 canonical JSON, readable as it is
    assert receipt == canonical_json(json.loads(receipt)) and "张三" in receipt.decode("utf-8")
    # each receipt has its own id
    assert json.loads(_seal(bank, face_jpeg))["payload"]["receipt_id"] != p["receipt_id"]
    # images stay out of reprs and printable summaries
    shown = repr(check) + json.dumps(redacted(p))
    assert not any(chunk in shown for chunk in _image_chunks(receipt))
    assert redacted(p)["face_snapshot"]["bytes"] == len(face_jpeg)


def test_no_face_snapshot_manual_identity_and_numpy_scores(bank):
    manual = _seal(
        bank,
        None,
        identity={
            "method": "manual",
            "verified": True,
            "reason": "ID card checked against the customer on camera",
            "by": "alice",
        },
    )
    check = verify_receipt(manual, trusted_public_keys=[bank.public_pem()])
    assert check.ok and check.payload["face_snapshot"] is None
    assert check.payload["identity"]["by"] == "alice"
    # the flow engine's verdict comes from numpy: its floats are sealed as plain numbers
    scored = _seal(
        bank,
        None,
        identity={
            "method": "face",
            "verified": True,
            "score": np.float32(0.75),
            "distance": np.float64(0.25),
            "threshold": 0.4,
            "liveness": None,
        },
    )
    check = verify_receipt(scored, trusted_public_keys=[bank.public_pem()])
    assert check.ok and check.payload["identity"]["score"] == 0.75


def test_every_single_byte_change_fails(bank, face_jpeg):
    receipt = _seal(bank, face_jpeg)
    trusted = [bank.public_pem()]
    assert verify_receipt(receipt, trusted_public_keys=trusted).ok
    n = len(receipt)
    assert 1500 < n < 8000, n
    chunks = _image_chunks(receipt)
    passed, reasons = [], set()

    def attempt(altered: bytes, what: tuple[int, int]) -> None:
        check = verify_receipt(altered, trusted_public_keys=trusted)
        if check.ok:
            passed.append(what)  # (position, new value or -1 for a deletion)
            return
        assert check.reason and len(check.reason) < 400
        reasons.add(check.reason)

    # every position, three ways: the lowest bit (neighbouring base64/hex digits, the unused
    # bits of base64's last character), letter case, and the top bit (broken UTF-8)
    for i in range(n):
        for flip in (0x01, 0x20, 0x80):
            altered = bytearray(receipt)
            altered[i] ^= flip
            attempt(bytes(altered), (i, altered[i]))
    # every possible value where a second spelling could hide: the first and last characters
    # of each base64 field (image data, key, signature), the fingerprint; and every 97th byte
    positions = set(range(0, 20)) | set(range(0, n, 97))
    for field in (
        b'"signature_image":{"data":"',
        b'"face_snapshot":{"data":"',
        b'"public_key":"',
        b'"signature":"',
    ):
        start = receipt.rindex(field) + len(field)
        end = receipt.index(b'"', start)
        positions |= set(range(start, start + 3)) | set(range(end - 5, end + 1))
    pem_body_end = receipt.rindex(b"\\n-----END PUBLIC KEY")
    positions |= set(range(pem_body_end - 5, pem_body_end + 2))
    for i in sorted(positions):
        for value in range(256):
            if value != receipt[i]:
                altered = bytearray(receipt)
                altered[i] = value
                attempt(bytes(altered), (i, value))
    # and removing any one byte, or adding a space
    for i in range(0, n, 3):
        attempt(receipt[:i] + receipt[i + 1 :], (i, -1))
        attempt(receipt[:i] + b" " + receipt[i:], (i, 32))
    assert passed == []
    assert not any(chunk in reason for reason in reasons for chunk in chunks)
    # the reasons say what is wrong
    assert any("does not match its stated sha256" in r for r in reasons)
    assert any(r.startswith("bad signature") for r in reasons)
    assert any("canonical" in r for r in reasons)
    assert any("damaged JSON" in r for r in reasons)


def test_reserialised_json_is_refused(bank, face_jpeg):
    """Only the server's exact bytes verify: the same JSON spelt otherwise is refused, with why."""
    receipt = _seal(bank, face_jpeg)
    doc = json.loads(receipt)
    variants = {
        "pretty": json.dumps(doc, indent=2, ensure_ascii=False).encode(),
        "spaces": json.dumps(doc, sort_keys=True, ensure_ascii=False).encode(),
        "ascii escapes": json.dumps(doc, sort_keys=True, separators=(",", ":")).encode(),
        "key order": json.dumps(
            dict(reversed(doc.items())), separators=(",", ":"), ensure_ascii=False
        ).encode(),
        "trailing newline": receipt + b"\n",
        "BOM": b"\xef\xbb\xbf" + receipt,
        "UTF-16": receipt.decode().encode("utf-16"),
    }
    for name, data in variants.items():
        assert data != receipt, name
        check = verify_receipt(data, trusted_public_keys=[bank.public_pem()])
        assert not check.ok and check.payload is None, name
        assert check.code in ("not_canonical", "not_a_receipt"), (name, check.reason)
    check = verify_receipt(variants["pretty"])
    assert "not in canonical form" in check.reason and "exact bytes" in check.reason
    # a duplicated key (JSON parsers disagree which one wins) is refused too
    dup = receipt[:-1] + b',"signature":"' + doc["signature"].encode() + b'"}'
    assert verify_receipt(dup).reason == "duplicate key 'signature'"


def test_another_key_fails_against_the_trusted_key(bank, face_jpeg):
    genuine = _seal(bank, face_jpeg)
    forger = SigningKey.generate()
    # the forger changes the document and re-signs with their own key: self-consistent...
    payload = json.loads(genuine)["payload"]
    payload["document"]["sha256"] = hashlib.sha256(b"another contract").hexdigest()
    payload["key_fingerprint"] = forger.fingerprint()
    forged = _assemble(forger, payload)
    alone = verify_receipt(forged)
    assert alone.ok and not alone.trusted and alone.code == "untrusted"
    assert (
        alone.reason.startswith("WARNING") and "not checked against a trusted key" in alone.reason
    )
    assert alone.fingerprint == forger.fingerprint()
    # ...but not the bank's seal
    check = verify_receipt(forged, trusted_public_keys=[bank.public_pem()])
    assert not check.ok and check.code == "unknown_key"
    assert (
        check.reason.startswith("signed by an unknown key") and forger.fingerprint() in check.reason
    )
    # several trusted keys (a rotated one): any of them will do, none other
    assert verify_receipt(genuine, trusted_public_keys=[forger.public_pem(), bank.public_pem()]).ok
    assert not verify_receipt(genuine, trusted_public_keys=[]).ok
    # the forger's key attached to the bank's signature: the signature does not match
    doc = json.loads(genuine)
    swapped = canonical_json(
        doc | {"public_key": forger.public_pem().decode(), "fingerprint": forger.fingerprint()}
    )
    assert verify_receipt(swapped).code == "bad_key"  # the payload names the bank's key
    # a payload naming one key, signed by another
    assert verify_receipt(_assemble(forger, json.loads(genuine)["payload"])).code == "bad_key"


def test_self_signed_receipts_with_bad_contents_are_refused(bank, face_jpeg):
    """What only a signer could produce: still checked field by field, images against hashes."""
    base = json.loads(_seal(bank, face_jpeg))["payload"]

    def reason(payload: dict) -> str:
        check = verify_receipt(_assemble(bank, payload))
        assert not check.ok and check.payload is None
        return check.reason

    assert (
        reason(base | {"face_snapshot": base["face_snapshot"] | {"sha256": "0" * 64}})
        == "face_snapshot does not match its stated sha256 (the image was changed)"
    )
    other_png = base64.b64encode(_signature_png()[:-1] + b"\x00").decode()
    assert "signature_image does not match" in reason(
        base | {"signature_image": base["signature_image"] | {"data": other_png}}
    )
    assert (
        reason({k: v for k, v in base.items() if k != "identity"})
        == "payload: missing field(s) 'identity'"
    )
    assert reason(base | {"comment": "x"}) == "payload: unexpected field(s) 'comment'"
    assert "unexpected field(s) 'pages'" in reason(
        base | {"document": base["document"] | {"pages": 12}}
    )
    assert "identity.method" in reason(base | {"identity": {"method": "guess", "verified": True}})
    assert "format" in reason(base | {"format": "vcounter-receipt/2"})
    assert "signed_at" in reason(base | {"signed_at": "2025-03-14 09:26:53"})
    jpeg_as_png = base["face_snapshot"] | {"media_type": "image/png"}
    assert "signature_image" in reason(base | {"signature_image": jpeg_as_png})


def test_sealing_refuses_bad_input(bank, face_jpeg):
    png = _signature_png()
    bad = {
        "naive time": {"signed_at": datetime(2025, 3, 14, 9, 0)},
        "not a PNG": {"signature_png": face_jpeg},
        "not a JPEG": {"face_snapshot_jpeg": png},
        "document hash": {"document": {"id": "c", "title": "t", "sha256": "ABC"}},
        "document fields": {"document": {"id": "c", "sha256": DOC_SHA}},
        "flow": {"flow": {"business": "loan_signing"}},
        "identity none verified": {"identity": {"method": "none", "verified": True}},
        "identity unknown field": {"identity": {"method": "face", "verified": True, "photo": "x"}},
        "NaN score": {"identity": {"method": "face", "verified": False, "score": float("nan")}},
        "extra not JSON": {"extra": {"blob": b"\x00"}},
        "empty session": {"session_id": ""},
    }
    for name, change in bad.items():
        with pytest.raises(ReceiptError) as info:
            _seal(bank, face_jpeg, **change)
        message = str(info.value)
        assert len(message) < 300 and not any(
            c in message for c in _image_chunks(_seal(bank, face_jpeg))
        ), name
    # "none": signed without any identity verification; sealed as such, never as verified
    check = verify_receipt(_seal(bank, None, identity={"method": "none", "verified": False}))
    assert check.ok and check.payload["identity"] == {"method": "none", "verified": False}


def test_garbage_is_not_a_receipt():
    for data in (b"", b"\x00\xff" * 50, os.urandom(300), b"[1,2]", b'"receipt"', b"{", b"{}"):
        check = verify_receipt(data)
        assert not check.ok and check.payload is None
    assert verify_receipt(b"[1,2]").code == "not_a_receipt"
    assert verify_receipt(b"{}").reason.startswith("receipt: missing field(s)")


# -- the command line -------------------------------------------------------------------------


def _run_all(
    commands: list[tuple[list[str], dict[str, str]]],
) -> list[subprocess.CompletedProcess[str]]:
    """Run the CLI invocations side by side (each one starts Python: ~1.5 s)."""
    procs = [
        subprocess.Popen(
            [*vcounter_command(), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, **env},
            cwd=REPO,
        )
        for args, env in commands
    ]
    done = []
    for (args, _), proc in zip(commands, procs, strict=True):
        out, err = proc.communicate(timeout=120)
        done.append(subprocess.CompletedProcess(args, proc.returncode, out, err))
    return done


def test_cli_verify_receipt(tmp_path, face_jpeg):
    """The installed ``vcounter`` script: valid 0, altered 1, garbage 2."""
    key_file = tmp_path / "keys" / "signing.pem"
    server_key = SigningKey.create(key_file)
    genuine = tmp_path / "receipt.json"
    genuine.write_bytes(_seal(server_key, face_jpeg))
    altered = tmp_path / "altered.json"
    altered.write_bytes(genuine.read_bytes().replace(DOC_SHA.encode(), DOC_SHA[::-1].encode()))
    garbage = tmp_path / "garbage.json"
    garbage.write_bytes(os.urandom(2000))
    env = {"VCOUNTER_SIGNING_KEY_FILE": str(key_file)}
    data = ["--data-dir", str(tmp_path / "var")]
    ok, bad, junk = _run_all(
        [(["verify-receipt", str(f), *data], env) for f in (genuine, altered, garbage)]
    )
    assert ok.returncode == 0, ok.stderr
    assert (
        "S-20250314-0042" in ok.stdout
        and DOC_SHA in ok.stdout
        and "2025-03-14T09:26:53.589Z" in ok.stdout
    )
    assert "face: verified" in ok.stdout and server_key.fingerprint() in ok.stdout
    assert "signed by a trusted key" in ok.stdout and "WARNING" not in ok.stderr
    assert bad.returncode == 1 and "FAILED" in bad.stderr and "bad signature" in bad.stderr, (
        bad.stderr
    )
    assert junk.returncode == 2 and "not a receipt" in junk.stderr, junk.stderr


def test_cli_trust(tmp_path, face_jpeg, monkeypatch, capsys):
    """Which keys ``verify-receipt`` trusts (in process: the same ``main``, without a Python start-up each)."""
    from server.cli import main

    key_file = tmp_path / "keys" / "signing.pem"
    server_key = SigningKey.create(key_file)
    forger = SigningKey.generate()
    (tmp_path / "forger.pem").write_bytes(forger.public_pem())
    genuine, foreign = tmp_path / "receipt.json", tmp_path / "foreign.json"
    genuine.write_bytes(_seal(server_key, face_jpeg))
    foreign.write_bytes(_seal(forger, face_jpeg))
    missing_key = tmp_path / "nokeys" / "signing.pem"

    def run(*args: str, key: object = key_file) -> tuple[int, str, str]:
        monkeypatch.setenv("VCOUNTER_SIGNING_KEY_FILE", str(key))
        code = main(["verify-receipt", *args, "--data-dir", str(tmp_path / "var")])
        out, err = capsys.readouterr()
        return code, out, err

    code, out, _ = run(str(genuine), "--json")
    result = json.loads(out)
    assert code == 0 and result["ok"] and result["trusted"] and result["code"] is None
    assert result["fingerprint"] == server_key.fingerprint() == result["trusted_keys"][0]
    assert "data" not in result["payload"]["face_snapshot"] and len(out) < 4000  # no images printed
    code, _, err = run(str(foreign))
    assert code == 1 and "signed by an unknown key" in err and forger.fingerprint() in err
    # no trusted key at all: refused (the receipt's own key proves nothing); no key gets created
    code, out, err = run(str(foreign), key=missing_key)
    assert code == 2 and "no trusted public key" in err and "OK" not in out
    assert not missing_key.exists() and not missing_key.parent.exists()
    code, out, err = run(str(foreign), "--json", key=missing_key)
    assert code == 2 and out == "" and "no trusted public key" in err
    # the forger's key, given explicitly, is trusted; the server's key as well
    code, out, err = run(str(foreign), "--public-key", str(tmp_path / "forger.pem"))
    assert code == 0 and "trusted: --public-key" in out and "WARNING" not in err
    code, out, _ = run(str(genuine), "--public-key", str(tmp_path / "forger.pem"))
    assert code == 0 and "trusted: the server signing key" in out
    # unreadable inputs: exit 2
    assert run(str(tmp_path / "nothing.json"))[0] == 2
    code, _, err = run(str(genuine), "--public-key", str(key_file.parent / "nope.pem"))
    assert code == 2 and "cannot read --public-key" in err
    code, _, err = run(str(genuine), "--public-key", str(genuine))
    assert code == 2 and "not an Ed25519 public key" in err
    # an altered receipt that is still JSON: exit 1, in --json mode too
    doc = json.loads(genuine.read_bytes())
    doc["payload"]["session_id"] = "S-OTHER"
    genuine.write_bytes(canonical_json(doc))
    code, out, err = run(str(genuine), "--json")
    assert code == 1 and json.loads(out)["code"] == "bad_signature" and "FAILED" in err


# -- the documented third-party check ----------------------------------------------------------


def _documented(language: str) -> str:
    text = (REPO / "docs" / "receipts.md").read_text()
    blocks = re.findall(r"<!-- tested by tests/test_receipt.py -->\n```(\w+)\n(.*?)```", text, re.S)
    [code] = [body for lang, body in blocks if lang == language]
    return code


def test_documented_openssl_check(tmp_path, bank, face_jpeg):
    if not shutil.which("openssl"):
        pytest.skip("openssl not installed")
    receipt = _seal(bank, face_jpeg)
    (tmp_path / "bank-public.pem").write_bytes(bank.public_pem())
    script = _documented("sh")

    def run(data: bytes) -> subprocess.CompletedProcess[str]:
        (tmp_path / "receipt.json").write_bytes(data)
        # C locale: the UTF-8 customer name must not make grep call the file binary
        return subprocess.run(
            ["bash", "-c", "set -e\n" + script],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            env={**os.environ, "LC_ALL": "C"},
            timeout=60,
        )

    good = run(receipt)
    assert good.returncode == 0 and "Signature Verified Successfully" in good.stdout, (
        good.stdout + good.stderr
    )
    assert bank.fingerprint() in good.stdout
    payload = json.loads(receipt)["payload"]
    assert (tmp_path / "payload.bin").read_bytes() == canonical_json(payload)
    tampered = run(receipt.replace(DOC_SHA.encode(), DOC_SHA[::-1].encode()))
    assert (
        tampered.returncode != 0
        and "Signature Verification Failure" in tampered.stdout + tampered.stderr
    )


def test_documented_python_check(tmp_path, bank, face_jpeg):
    receipt = _seal(bank, face_jpeg)
    (tmp_path / "receipt.json").write_bytes(receipt)
    (tmp_path / "bank-public.pem").write_bytes(bank.public_pem())
    (tmp_path / "check.py").write_text(_documented("python"))
    run = subprocess.run(
        [sys.executable, "check.py", "receipt.json", "bank-public.pem"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (
        run.returncode == 0
        and run.stdout.strip() == f"valid: S-20250314-0042 {DOC_SHA} 2025-03-14T09:26:53.589Z"
    ), run.stdout + run.stderr
    other = SigningKey.generate()
    (tmp_path / "bank-public.pem").write_bytes(other.public_pem())
    refused = subprocess.run(
        [sys.executable, "check.py", "receipt.json", "bank-public.pem"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert refused.returncode != 0 and "InvalidSignature" in refused.stderr

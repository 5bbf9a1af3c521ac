"""The operator CLI on a real recording: sessions, verify (and a tampered copy), verify-log."""

from __future__ import annotations

import json
import subprocess

from server.appkeys import CONFIG

from .recordings import demux, recorded_call, stream_info
from .server_process import run_vcounter, server_cli


async def test_sessions_verify_and_verify_log(counter):
    session_id, recording_id = await recorded_call(counter, seconds=1.0)
    config = counter.app[CONFIG]

    listed = server_cli(config, "sessions", "--json")
    assert listed.returncode == 0, listed.stderr
    [row] = [r for r in json.loads(listed.stdout) if r["id"] == session_id]
    assert row["state"] == "ended" and row["business"] == "loan_signing" and row["agent"] == "carol"
    assert row["recording"] == f"{recording_id}:finalized" and row["duration_s"] > 0
    table = server_cli(config, "sessions")
    assert session_id in table.stdout and "finalized" in table.stdout

    ok = server_cli(config, "verify", session_id)
    assert ok.returncode == 0 and f"{recording_id}: OK" in ok.stdout, ok.stdout + ok.stderr

    manifest = config.recordings_dir / recording_id / "manifest.json"
    original = manifest.read_bytes()
    manifest.write_bytes(original.replace(b'"loan_signing"', b'"wealth_product"'))
    bad = server_cli(config, "verify", recording_id)
    assert bad.returncode == 1 and "FAILED" in bad.stdout and "signature" in bad.stdout.lower()
    manifest.write_bytes(original)

    missing = server_cli(config, "verify", "no-such-session")
    assert missing.returncode == 2 and "no recording" in missing.stderr

    log = server_cli(config, "verify-log")
    assert log.returncode == 0 and log.stdout.startswith("OK")


async def test_purge_respects_retention_and_legal_holds(counter):
    from datetime import timedelta

    from sqlmodel import select

    from server.db import AccessLog, Recording, utcnow

    config = counter.app[CONFIG]
    ids = [await recorded_call(counter, seconds=0.5) for _ in range(3)]
    (_, expired), (held_session, held), (_, current) = ids

    def age(s):
        for rid in (expired, held):
            row = s.get(Recording, rid)
            row.retention_until = utcnow() - timedelta(days=1)
            s.add(row)

    await counter.db.run(age)
    assert server_cli(config, "hold", held_session).returncode == 0
    dry = server_cli(config, "purge", "--dry-run")
    assert f"would delete {expired}" in dry.stdout and held not in dry.stdout
    assert (config.recordings_dir / expired).is_dir()

    done = server_cli(config, "purge")
    assert done.returncode == 0 and f"deleted {expired}" in done.stdout
    assert held not in done.stdout and current not in done.stdout
    assert not (config.recordings_dir / expired).exists()
    assert (config.recordings_dir / held).is_dir() and (config.recordings_dir / current).is_dir()

    def states(s):
        log = [(e.action, e.target) for e in s.exec(select(AccessLog).order_by(AccessLog.seq))]
        return {r.id: r.state for r in s.exec(select(Recording))}, log

    by_id, log = await counter.db.run(states)
    assert by_id[expired] == "purged" and by_id[held] == "finalized"
    assert ("purge", expired) in log and ("legal_hold", held) in log
    # far in the future, everything unheld goes; the held one stays
    later = server_cli(config, "purge", "--now", "2099-01-01T00:00:00")
    assert f"deleted {current}" in later.stdout and held not in later.stdout
    assert server_cli(config, "verify-log").returncode == 0


async def test_export_package_verifies_with_standard_tools(counter, tmp_path):
    import hashlib
    import zipfile

    session_id, recording_id = await recorded_call(counter, seconds=1.5)
    config = counter.app[CONFIG]
    package = tmp_path / "evidence.zip"
    secret = tmp_path / "pass.txt"
    secret.write_text("correct horse battery staple\n")
    done = server_cli(config, "export", session_id, str(package), "--passphrase-file", str(secret))
    assert done.returncode == 0, done.stderr
    assert "correct horse" not in done.stdout + done.stderr
    with zipfile.ZipFile(package) as z:
        names = set(z.namelist())
        assert {
            "README.txt",
            "manifest.json",
            "manifest.sig",
            "public_key.pem",
            "export_key.json",
        } <= names
        assert not any(n.endswith(".webm") for n in names), "no plaintext media in the package"
        z.extractall(tmp_path / "x")
    x = tmp_path / "x"
    manifest = json.loads((x / "manifest.json").read_text())
    for seg in manifest["segments"]:
        assert (
            hashlib.sha256(
                (x / "recording" / "segments" / seg["name"].split("/")[-1]).read_bytes()
            ).hexdigest()
            == seg["sha256"]
        )
    _openssl_verifies(x)
    assert server_cli(config, "verify", str(package)).returncode == 0

    # a byte changed inside the package's media fails verification
    tampered = tmp_path / "tampered.zip"
    with zipfile.ZipFile(package) as src, zipfile.ZipFile(tampered, "w") as dst:
        for item in src.infolist():
            data = src.read(item)
            if item.filename.endswith("agent.webm.enc"):
                data = data[:1000] + bytes([data[1000] ^ 1]) + data[1001:]
            dst.writestr(item, data)
    bad = server_cli(config, "verify", str(tampered))
    assert bad.returncode == 1 and "agent.webm.enc" in bad.stdout

    _decrypt_for_playback(package, tmp_path, secret)


def _decrypt_for_playback(package, tmp_path, secret) -> None:
    wrong = tmp_path / "wrong.txt"
    wrong.write_text("not it")
    out = tmp_path / "media"
    refused = run_vcounter(
        "decrypt-export", str(package), str(out), "--passphrase-file", str(wrong)
    )
    assert refused.returncode == 1 and "wrong passphrase" in refused.stderr
    played = run_vcounter(
        "decrypt-export", str(package), str(out), "--passphrase-file", str(secret)
    )
    assert played.returncode == 0, played.stderr
    webm = (out / "customer.webm").read_bytes()
    assert stream_info(webm) == {"video": "vp8", "audio": "opus"} and demux(webm)["video"]


def _openssl_verifies(x) -> None:
    """The README's first step, with the real openssl."""
    import shutil

    if not shutil.which("openssl"):
        return
    check = subprocess.run(
        [
            "openssl",
            "pkeyutl",
            "-verify",
            "-pubin",
            "-inkey",
            str(x / "public_key.pem"),
            "-rawin",
            "-in",
            str(x / "manifest.json"),
            "-sigfile",
            str(x / "manifest.sig"),
        ],
        capture_output=True,
        text=True,
    )
    assert "Signature Verified Successfully" in check.stdout, check.stdout + check.stderr
    fingerprint = json.loads((x / "manifest.json").read_text())["signing_key"]["fingerprint"]
    der = subprocess.run(
        ["openssl", "pkey", "-pubin", "-in", str(x / "public_key.pem"), "-outform", "DER"],
        capture_output=True,
        check=True,
    ).stdout
    import hashlib

    assert hashlib.sha256(der[-32:]).hexdigest() == fingerprint

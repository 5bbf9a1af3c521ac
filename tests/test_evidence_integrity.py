"""Evidence is verified as what it is asked to be, against a key that is not beside it.

Real recordings made by real calls, real SQLite, the real ``vcounter`` command and the real
auditor API:

- a recording copied over another session's directory, or a manifest re-signed even with the
  server's own key, verifies as itself but not as the recording asked for (its ids, and the
  manifest hash the database kept); the auditor's session page does not show it as genuine;
- ``vcounter verify`` and ``verify-receipt`` run from any directory trust the configured key
  (resolved beside the data directory), or ``--public-key``, never the key stored with the
  evidence; without a trusted key they refuse, and a missing ``./var`` is a clear error;
- a receipt is bound to its session and to the one the counter's timeline recorded sealing.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import aiohttp

from recorder.keys import SigningKey
from recorder.manifest import canonical_json
from recorder.receipt import seal_receipt
from server.appkeys import CONFIG

from .flow_driver import run_flow
from .helpers import login
from .recordings import recorded_call
from .server_process import server_cli, vcounter_command


def _vcounter_in(cwd: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """``vcounter *args`` as an operator runs it from ``cwd``, with no key configured in the
    environment (only what ``env`` sets)."""
    clean = {
        k: v for k, v in os.environ.items() if not k.startswith("VCOUNTER_") and k != "DATABASE_URL"
    }
    return subprocess.run(
        [*vcounter_command(), *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
        env={**clean, "VCOUNTER_IDENTITY": "0", **env},
    )


def _resign(directory: Path, key: SigningKey, change: dict[str, object]) -> None:
    """Change the manifest's metadata and sign it again with ``key`` (its public key beside it)."""
    manifest = json.loads((directory / "manifest.json").read_bytes())
    manifest["metadata"].update(change)
    manifest["signing_key"]["fingerprint"] = key.fingerprint()
    raw = canonical_json(manifest)
    (directory / "manifest.json").write_bytes(raw)
    (directory / "manifest.sig").write_bytes(key.sign(raw))
    (directory / "public_key.pem").write_bytes(key.public_pem())


async def _verify_api(counter, token: str, recording_id: str) -> dict:
    async with (
        aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"}) as http,
        http.get(f"{counter.url}/api/audit/recordings/{recording_id}/verify") as r,
    ):
        assert r.status == 200, await r.text()
        return await r.json()


async def test_a_recording_copied_over_another_sessions_does_not_verify_as_it(counter):
    config = counter.app[CONFIG]
    session_a, recording_a = await recorded_call(counter, seconds=0.5)
    session_b, recording_b = await recorded_call(counter, seconds=0.5)
    directory_a = config.recordings_dir / recording_a
    shutil.rmtree(directory_a)
    shutil.copytree(config.recordings_dir / recording_b, directory_a)
    token = await login(counter, "auditor")

    for target in (session_a, recording_a, str(directory_a)):
        cli = server_cli(config, "verify", target)
        assert cli.returncode == 1, cli.stdout + cli.stderr
        assert f"FAILED: manifest: is recording '{recording_b}' of session '{session_b}'" in (
            cli.stdout
        ), cli.stdout
    api = await _verify_api(counter, token, recording_a)
    assert api["ok"] is False and recording_b in api["reason"] and session_b in api["reason"]
    # the manifest's hash is not the one the database kept for A either
    assert any("the database recorded" in p for p in api["problems"]), api["problems"]

    # the session page does not present B's timeline or media as A's, and says why
    async with (
        aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"}) as http,
        http.get(f"{counter.url}/api/audit/sessions/{session_a}") as r,
    ):
        detail = await r.json()
    [rec] = detail["recordings"]
    assert rec["timeline"] == [] and rec["outputs"] == []
    assert recording_b in rec["mismatch"] and rec["problem"] == rec["mismatch"]
    assert "recording_mismatch" in detail["session"]["anomalies"]

    # B itself still verifies, as B
    assert (await _verify_api(counter, token, recording_b))["ok"] is True
    ok = server_cli(config, "verify", session_b)
    assert ok.returncode == 0 and f"{recording_b}: OK" in ok.stdout, ok.stdout + ok.stderr


async def test_a_manifest_resigned_with_the_servers_own_key_fails_against_the_database(counter):
    """Right ids, valid signature by the trusted key (an insider with the key, or an earlier
    finalisation): only the manifest hash the database kept tells it is not the recording's."""
    config = counter.app[CONFIG]
    session_id, recording_id = await recorded_call(counter, seconds=0.5)
    _resign(
        config.recordings_dir / recording_id,
        SigningKey.load(config.signing_key_file),
        {"business": "wealth_product"},
    )
    token = await login(counter, "auditor")
    api = await _verify_api(counter, token, recording_id)
    assert api["ok"] is False and "not the manifest the database recorded" in api["reason"]
    cli = server_cli(config, "verify", session_id)
    assert cli.returncode == 1 and "not the manifest the database recorded" in cli.stdout, (
        cli.stdout
    )
    detail_problem = None
    async with (
        aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"}) as http,
        http.get(f"{counter.url}/api/audit/sessions/{session_id}") as r,
    ):
        [rec] = (await r.json())["recordings"]
        detail_problem = rec["mismatch"]
    assert detail_problem and "database recorded" in detail_problem and rec["timeline"] == []


async def test_verify_from_another_directory_trusts_the_configured_key_not_the_one_beside_it(
    counter, tmp_path
):
    config = counter.app[CONFIG]
    session_id, recording_id = await recorded_call(counter, seconds=0.5)
    directory = config.recordings_dir / recording_id
    forger = SigningKey.generate()
    _resign(directory, forger, {"business": "wealth_product"})
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()

    # keys/ beside the data directory (as the test server has them): found from anywhere
    assert config.signing_key_file == config.data_dir.parent / "keys" / "signing.pem"
    by_session = _vcounter_in(elsewhere, "verify", session_id, "--data-dir", str(config.data_dir))
    assert by_session.returncode == 1, by_session.stdout + by_session.stderr
    assert "signed by another key" in by_session.stdout, by_session.stdout

    # a directory, from a place with no ./var and no key: refused, with a clear error
    refused = _vcounter_in(elsewhere, "verify", str(directory))
    assert refused.returncode == 2 and "Traceback" not in refused.stderr, refused.stderr
    assert "no trusted public key" in refused.stderr and "--public-key" in refused.stderr
    assert "OK" not in refused.stdout
    # ... and checked against an explicit key, with no database at hand
    public = tmp_path / "bank.pem"
    public.write_bytes(SigningKey.load(config.signing_key_file).public_pem())
    explicit = _vcounter_in(elsewhere, "verify", str(directory), "--public-key", str(public))
    assert explicit.returncode == 1 and "signed by another key" in explicit.stdout, (
        explicit.stdout + explicit.stderr
    )
    assert "no database at hand" in explicit.stderr and "Traceback" not in explicit.stderr
    # a genuine recording verifies that way, bound to its directory's name
    _, genuine = await recorded_call(counter, seconds=0.5)
    fine = _vcounter_in(
        elsewhere, "verify", str(config.recordings_dir / genuine), "--public-key", str(public)
    )
    assert fine.returncode == 0 and f"{genuine}: OK" in fine.stdout, fine.stdout + fine.stderr

    # a session id with no data directory at hand: a clear error, not a traceback
    lost = _vcounter_in(elsewhere, "verify", session_id, "--public-key", str(public))
    assert lost.returncode == 2 and "does not exist" in lost.stderr, lost.stderr
    assert "Traceback" not in lost.stderr


def _receipt_by(key: SigningKey, session_id: str) -> bytes:
    import base64

    from .flow_driver import signature_png

    return seal_receipt(
        key,
        session_id=session_id,
        flow={"business": "account_opening", "version": 1},
        step_id="sign",
        document={"id": "terms", "title": "Terms", "sha256": "a" * 64},
        signature_png=base64.b64decode(signature_png()),
        face_snapshot_jpeg=None,
        identity={"method": "manual", "verified": True, "by": "alice"},
        signed_at=datetime.now(UTC),
    )


async def test_verify_receipt_from_another_directory_never_trusts_the_receipts_own_key(
    counter, tmp_path
):
    config = counter.app[CONFIG]
    forged = tmp_path / "forged.json"
    forged.write_bytes(_receipt_by(SigningKey.generate(), "sess-forged-0001"))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    checked = _vcounter_in(
        elsewhere, "verify-receipt", str(forged), "--data-dir", str(config.data_dir)
    )
    assert checked.returncode == 1 and "signed by an unknown key" in checked.stderr, (
        checked.stdout + checked.stderr
    )
    alone = _vcounter_in(elsewhere, "verify-receipt", str(forged))
    assert alone.returncode == 2 and "no trusted public key" in alone.stderr, alone.stderr
    assert "OK" not in alone.stdout


async def test_a_receipt_is_bound_to_its_session_and_to_the_counters_record(counter, tmp_path):
    config = counter.app[CONFIG]
    customer = await counter.customer("account_opening", "李四", media=False)
    session_id = customer.messages[0]["session_id"]
    agent = await counter.agent("alice", media=False)
    await agent.accept_next()
    await agent.wait_for("flow_state", timeout=10)
    await run_flow(customer, agent)
    genuine = tmp_path / "receipt.json"
    genuine.write_bytes((await customer.wait_for("receipt"))["content"].encode())
    await agent.hangup()

    ok = server_cli(config, "verify-receipt", str(genuine))
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert f"sealed in session {session_id}'s timeline" in ok.stdout
    asked = server_cli(config, "verify-receipt", str(genuine), "--session", session_id)
    assert asked.returncode == 0, asked.stderr
    other = server_cli(config, "verify-receipt", str(genuine), "--session", "sess-someone-else")
    assert other.returncode == 1 and "not 'sess-someone-else'" in other.stderr, other.stderr

    # signed by the server's own key, but never sealed by the counter (a stolen key, a replayed
    # sealing): the timeline has no record of it
    unrecorded = tmp_path / "unrecorded.json"
    unrecorded.write_bytes(_receipt_by(SigningKey.load(config.signing_key_file), session_id))
    refused = server_cli(config, "verify-receipt", str(unrecorded), "--json")
    assert refused.returncode == 1, refused.stdout + refused.stderr
    result = json.loads(refused.stdout)
    assert result["ok"] is False and result["trusted"] is True
    assert result["code"] == "not_recorded" and "never sealed" in result["reason"]
    stranger = tmp_path / "stranger.json"
    stranger.write_bytes(_receipt_by(SigningKey.load(config.signing_key_file), "sess-unknown-01"))
    unknown = server_cli(config, "verify-receipt", str(stranger))
    assert unknown.returncode == 1 and "not in this counter's database" in unknown.stderr

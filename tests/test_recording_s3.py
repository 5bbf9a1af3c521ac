"""Recordings on an S3-compatible store (a real moto server): any node replays, verifies, exports and
purges them; the store going away mid-call loses nothing; a killed node's recording is finalised by
a surviving node from the store."""

from __future__ import annotations

import asyncio
import json
import logging
import time
import zipfile

import aiohttp
import pytest

from recorder import MasterKey, S3Storage, SigningKey, open_encrypted, read_data_key, verify
from recorder.encrypted_file import MAGIC
from recorder.s3_storage import parse_s3_url
from server.appkeys import CONFIG
from server.db import Recording, utcnow
from signaling.contrib.headless import HeadlessParticipant

from .helpers import PASSWORD, eventually, login
from .recordings import demux, recorded_call, stream_info, wait_recordings
from .s3_server import AWS_ENV, PausableProxy, S3Server
from .server_process import ServerProcess, run_vcounter

logger = logging.getLogger(__name__)


def remote_recording(server: S3Server, url: str, recording_id: str) -> S3Storage:
    """The recording as it is in the store, read with a client of the test's own (no spool)."""
    bucket, prefix = parse_s3_url(url)
    return S3Storage(server.client(), bucket, prefix).sub("recordings").sub(recording_id)


def plaintext(storage: S3Storage, master: MasterKey, party: str) -> bytes:
    data_key = read_data_key(storage, master)
    with open_encrypted(storage.open(f"{party}.webm.enc"), data_key) as f:
        return b"".join(f.iter_plaintext())


async def healthz(counter) -> dict:
    async with aiohttp.ClientSession() as http, http.get(f"{counter.url}/healthz") as r:
        assert r.status == 200
        return await r.json()


async def all_uploaded(counter) -> bool:
    storage = (await healthz(counter))["storage"]
    return storage["ok"] and storage["pending_uploads"] == 0


def keys(config) -> tuple[MasterKey, bytes]:
    return MasterKey.load(config.master_key_file), SigningKey.load(
        config.signing_key_file
    ).public_pem()


async def test_any_node_replays_verifies_exports_and_purges_a_recording_in_s3(
    make_counter, s3_server, s3_url, tmp_path
):
    store = {"storage_url": s3_url, "s3_endpoint_url": s3_server.endpoint}
    recorder_node = await make_counter(node_id="node-a", **store)
    session_id, recording_id = await recorded_call(recorder_node, seconds=3.0)
    config = recorder_node.app[CONFIG]
    await eventually(lambda: all_uploaded(recorder_node), timeout=30)
    assert (await healthz(recorder_node))["storage"]["kind"] == "s3"

    # in the store, as ciphertext; nothing left on the recording node's disk
    remote = remote_recording(s3_server, s3_url, recording_id)
    names = remote.list()
    assert {
        "manifest.json",
        "manifest.sig",
        "chain.log",
        "customer.webm.enc",
        "agent.webm.enc",
    } <= set(names)
    assert any(n.startswith("segments/") for n in names)
    assert remote.open("customer.webm.enc").read(0, 8) == MAGIC
    await eventually(
        lambda: not (config.data_dir / "spool" / "recordings" / recording_id).exists(), timeout=10
    )
    assert not (config.recordings_dir / recording_id).exists()
    master, trusted = keys(config)
    result = await asyncio.to_thread(verify, remote, master, trusted)
    assert result.ok, result.reason

    # another node, which did not record it: Range replay and verification
    other = await make_counter(node_id="node-b", **store)
    plain = await asyncio.to_thread(plaintext, remote, master, "agent")
    url = f"{other.url}/api/audit/recordings/{recording_id}/agent.webm"
    auth = {"Authorization": f"Bearer {await login(other, 'auditor')}"}
    async with aiohttp.ClientSession(headers=auth) as http:
        async with http.get(url) as r:
            assert r.status == 200 and await r.read() == plain
        start, end = 65_000, min(len(plain) - 1, 140_000)
        async with http.get(url, headers={"Range": f"bytes={start}-{end}"}) as r:
            assert (
                r.status == 206
                and r.headers["Content-Range"] == f"bytes {start}-{end}/{len(plain)}"
            )
            assert await r.read() == plain[start : end + 1]
        async with http.get(url, headers={"Range": f"bytes={len(plain)}-"}) as r:
            assert r.status == 416
        async with http.get(f"{other.url}/api/audit/recordings/{recording_id}/verify") as r:
            checked = await r.json()
        assert checked["ok"] is True, checked
        async with http.get(f"{other.url}/api/audit/sessions/{session_id}") as r:
            [rec] = (await r.json())["recordings"]
        assert {o["party"] for o in rec["outputs"]} == {"customer", "agent"}
    assert stream_info(plain) == {"video": "vp8", "audio": "opus"}

    # the command line on a host with none of the files: only the database and the store
    elsewhere = tmp_path / "operator"
    elsewhere.mkdir()
    env = {
        **AWS_ENV,
        "VCOUNTER_STORAGE_URL": s3_url,
        "VCOUNTER_S3_ENDPOINT_URL": s3_server.endpoint,
        "DATABASE_URL": config.db_url,
        "VCOUNTER_MASTER_KEY_FILE": str(config.master_key_file),
        "VCOUNTER_SIGNING_KEY_FILE": str(config.signing_key_file),
    }

    def cli(*args: str):
        return run_vcounter(*args, data_dir=elsewhere, env=env)

    checked = await asyncio.to_thread(cli, "verify", session_id)
    assert checked.returncode == 0 and f"{recording_id}: OK" in checked.stdout, (
        checked.stdout + checked.stderr
    )
    passphrase = tmp_path / "pass.txt"
    passphrase.write_text("correct horse battery staple")
    package = tmp_path / "evidence.zip"
    exported = await asyncio.to_thread(
        cli, "export", session_id, str(package), "--passphrase-file", str(passphrase)
    )
    assert exported.returncode == 0, exported.stderr
    with zipfile.ZipFile(package) as z:
        assert z.read("recording/customer.webm.enc") == remote.open("customer.webm.enc").read(
            0, remote.open("customer.webm.enc").size
        )
    ok = await asyncio.to_thread(cli, "verify", str(package))
    assert ok.returncode == 0 and "OK" in ok.stdout, ok.stdout + ok.stderr
    decrypted = await asyncio.to_thread(
        run_vcounter,
        "decrypt-export",
        str(package),
        str(tmp_path / "out"),
        "--passphrase-file",
        str(passphrase),
    )
    assert decrypted.returncode == 0, decrypted.stderr
    assert (tmp_path / "out" / "agent.webm").read_bytes() == plain

    def expire(s):
        row = s.get(Recording, recording_id)
        row.retention_until = utcnow().replace(year=2000)
        s.add(row)

    await other.db.run(expire)
    purged = await asyncio.to_thread(cli, "purge")
    assert purged.returncode == 0 and f"deleted {recording_id}" in purged.stdout, (
        purged.stdout + purged.stderr
    )
    assert remote.list() == []
    assert (await other.db.run(lambda s: s.get(Recording, recording_id).state)) == "purged"


async def test_store_away_mid_call_loses_nothing(make_counter, s3_server, s3_url):
    proxy = PausableProxy(s3_server.endpoint)
    await proxy.up()
    try:
        counter = await make_counter(
            node_id="node-offline", storage_url=s3_url, s3_endpoint_url=proxy.url
        )
        config = counter.app[CONFIG]
        customer = await counter.customer("loan_signing", "Offline store")
        agent = await counter.agent("carol")
        await agent.accept_next()
        await agent.wait_media(frames=10)
        t0 = time.monotonic()
        await asyncio.sleep(2.5)  # a segment or so is uploaded
        await proxy.down()
        await asyncio.sleep(5.0)  # the call goes on while segments pile up in the spool
        health = (await healthz(counter))["storage"]
        assert health["ok"] is False and health["pending_uploads"] >= 2, health
        await agent.wait_media(frames=10)  # media never stopped
        await agent.hangup()
        call_s = time.monotonic() - t0
        # finalised on the local spool while the store is away
        [row] = await wait_recordings(counter.db, customer.session_id)
        assert row.state == "finalized"
        health = (await healthz(counter))["storage"]
        assert health["ok"] is False and health["pending_uploads"] > 0, health
        remote = remote_recording(s3_server, s3_url, row.id)
        assert not remote.exists("manifest.json")

        await proxy.up()
        await eventually(lambda: all_uploaded(counter), timeout=30)
        await eventually(
            lambda: not (config.data_dir / "spool" / "recordings" / row.id).exists(), timeout=10
        )
        master, trusted = keys(config)
        result = await asyncio.to_thread(verify, remote, master, trusted)
        assert result.ok, result.reason
        video = demux(await asyncio.to_thread(plaintext, remote, master, "customer"))["video"]
        # the seconds recorded while the store was away are all there
        assert video[-1][0] - video[0][0] >= call_s - 0.5, (video[-1][0] - video[0][0], call_s)
    finally:
        await proxy.aclose()


@pytest.mark.slow
async def test_a_surviving_node_finalises_a_killed_nodes_recording_from_s3(
    make_counter, s3_server, s3_url, tmp_path, video_clip, audio_clip
):
    key_dir = tmp_path / "keys"
    doomed = ServerProcess(
        tmp_path / "doomed",
        env={
            **AWS_ENV,
            "VCOUNTER_NODE_ID": "doomed-node",
            "VCOUNTER_NODE_LEASE_S": "3",
            "VCOUNTER_STORAGE_URL": s3_url,
            "VCOUNTER_S3_ENDPOINT_URL": s3_server.endpoint,
            "VCOUNTER_MASTER_KEY_FILE": str(key_dir / "master.key"),
            "VCOUNTER_SIGNING_KEY_FILE": str(key_dir / "signing.pem"),
        },
    )
    added = doomed.cli(
        "user",
        "add",
        "--role",
        "agent",
        "--username",
        "alice",
        "--password",
        PASSWORD,
        "--skills",
        "account_opening",
    )
    assert added.returncode == 0, added.stderr
    await doomed.start()
    # another host (its own disk, none of the dead node's spool), the same database and store
    survivor = await make_counter(
        node_id="survivor",
        node_lease_s=3.0,
        data_dir=tmp_path / "survivor",
        database_url=f"sqlite:///{doomed.data_dir / 'vcounter.db'}",
        storage_url=s3_url,
        s3_endpoint_url=s3_server.endpoint,
    )
    customer = HeadlessParticipant(doomed.url, video=video_clip, audio=audio_clip, name="customer")
    agent = HeadlessParticipant(doomed.url, video=video_clip, audio=audio_clip, name="agent")
    try:
        await customer.join("account_opening", "Node death")
        await agent.login("alice", PASSWORD)
        await agent.set_ready()
        await agent.accept_next()
        await agent.wait_media(frames=20)
        started = time.monotonic()
        await asyncio.sleep(5.0)  # a few segments are sealed and uploaded
        media_s = time.monotonic() - started
        session_id = customer.session_id
        doomed.kill9()
        killed = time.monotonic()
    finally:
        await customer.aclose()
        await agent.aclose()
        doomed.stop()
    recording_id = f"{session_id}-1"
    remote = remote_recording(s3_server, s3_url, recording_id)
    assert remote.list("segments/")

    # the survivor sees the lease lapse (3 s), takes the recording over and finalises it from S3
    [row] = await wait_recordings(survivor.db, session_id, timeout=60)
    took_s = time.monotonic() - killed
    assert row.state == "recovered", (row.state, row.problem)
    logger.info(
        "recording %s recovered by the survivor %.1f s after the kill", recording_id, took_s
    )
    assert took_s < 15, took_s
    await eventually(lambda: all_uploaded(survivor), timeout=30)
    master, trusted = keys(survivor.app[CONFIG])
    result = await asyncio.to_thread(verify, remote, master, trusted)
    assert result.ok, result.reason
    manifest = json.loads(
        await asyncio.to_thread(lambda: remote.open("manifest.json").read(0, 1 << 20))
    )
    assert manifest["recovered"] is True and manifest["metadata"]["recovered_by_node"] == "survivor"
    video = demux(await asyncio.to_thread(plaintext, remote, master, "customer"))["video"]
    recorded_s = video[-1][0] - video[0][0]
    # at most the unsealed segment (2 s) plus its upload is lost
    assert recorded_s >= media_s - 2.5, (recorded_s, media_s)

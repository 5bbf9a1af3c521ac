"""The Storage contract, the same cases on the local disk and on a real S3-compatible server (moto),
and the spool in front of S3: uploads in order, keeps everything while the store is away."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from recorder import IntegrityError, LocalStorage, RecorderError, S3Storage
from recorder.s3_storage import PART_SIZE, parse_s3_url
from recorder.spooled_storage import SpooledStorage, Uploader
from recorder.storage import read_all
from server.config import Config
from server.recording import s3_client

from .s3_server import PausableProxy


def _s3(endpoint: str, url: str) -> S3Storage:
    bucket, prefix = parse_s3_url(url)
    # the client the server makes (timeouts, addressing, checksum settings), against moto
    return S3Storage(s3_client(Config(s3_endpoint_url=endpoint)), bucket, prefix)


@pytest.fixture(params=["local", "s3"])
def storage(request: pytest.FixtureRequest, tmp_path: Path):
    if request.param == "local":
        return LocalStorage(tmp_path / "store")
    server = request.getfixturevalue("s3_server")
    return _s3(server.endpoint, request.getfixturevalue("s3_url"))


def _leftovers(storage) -> list[str]:
    """What an interrupted write leaves behind: hidden temporary files, or multipart uploads."""
    if isinstance(storage, LocalStorage):
        return [p.name for p in storage.root.rglob(".*")] if storage.root.exists() else []
    uploads = storage.client.list_multipart_uploads(Bucket=storage.bucket, Prefix=storage.prefix)
    return [u["Key"] for u in uploads.get("Uploads", [])]


def test_put_replace_and_read_back(storage):
    storage.put_bytes("segments/000001.seg", b"first")
    assert read_all(storage, "segments/000001.seg") == b"first"
    storage.put_bytes("segments/000001.seg", b"second version")
    blob = storage.open("segments/000001.seg")
    try:
        assert blob.size == 14 and blob.read(0, blob.size) == b"second version"
    finally:
        blob.close()


def test_ranged_reads(storage):
    data = os.urandom(300_000)
    storage.put_bytes("customer.webm.enc", data)
    blob = storage.open("customer.webm.enc")
    try:
        assert blob.read(65_530, 20) == data[65_530:65_550]
        assert blob.read(299_990, 100) == data[299_990:]  # clipped at the end
        assert blob.read(300_000, 10) == b"" and blob.read(5, 0) == b""
        with pytest.raises(ValueError):
            blob.read(-1, 5)
    finally:
        blob.close()


@pytest.mark.parametrize("size", [1000, 2 * PART_SIZE + 12_345])
def test_create_is_invisible_until_commit(storage, size):
    data = os.urandom(size)
    writer = storage.create("agent.webm.enc")
    for start in range(0, size, 1 << 20):
        writer.write(data[start : start + (1 << 20)])
    assert not storage.exists("agent.webm.enc") and storage.list() == []
    with pytest.raises(FileNotFoundError):
        storage.open("agent.webm.enc")
    writer.commit()
    assert storage.list() == ["agent.webm.enc"]
    assert read_all(storage, "agent.webm.enc") == data
    assert _leftovers(storage) == []


def test_abort_leaves_nothing(storage):
    storage.put_bytes("agent.webm.enc", b"old")
    writer = storage.create("agent.webm.enc")
    writer.write(os.urandom(2 * PART_SIZE + 1))
    writer.abort()
    assert read_all(storage, "agent.webm.enc") == b"old"  # the old object is untouched
    assert _leftovers(storage) == []


def test_discard_incomplete_removes_an_interrupted_write(storage):
    writer = storage.create("customer.webm.enc")
    writer.write(os.urandom(2 * PART_SIZE + 1))  # the process dies here: neither commit nor abort
    assert _leftovers(storage)
    storage.discard_incomplete()
    assert _leftovers(storage) == [] and storage.list() == []
    writer.abort()  # only to close the file handle a dead process would not hold any more


def test_list_delete_and_missing_objects(storage):
    for name in ("segments/000002.seg", "chain.log", "segments/000001.seg", "dropped/000003.seg"):
        storage.put_bytes(name, name.encode())
    assert storage.list() == [
        "chain.log",
        "dropped/000003.seg",
        "segments/000001.seg",
        "segments/000002.seg",
    ]
    assert storage.list("segments/") == ["segments/000001.seg", "segments/000002.seg"]
    assert storage.list("nothing/") == []
    storage.delete("chain.log")
    storage.delete("chain.log")  # deleting what is not there is no error
    assert not storage.exists("chain.log") and storage.exists("segments/000001.seg")
    with pytest.raises(FileNotFoundError):
        storage.open("manifest.json")
    for bad in ("../escape", "/absolute", ".hidden", "segments/../x"):
        with pytest.raises(RecorderError):
            storage.put_bytes(bad, b"x")


def test_an_object_replaced_while_read_is_never_mixed(storage):
    storage.put_bytes("chain.log", b"A" * 200_000)
    blob = storage.open("chain.log")
    try:
        head = blob.read(0, 100_000)
        storage.put_bytes("chain.log", b"B" * 200_000)
        try:
            tail = blob.read(100_000, 100_000)
        except IntegrityError:  # S3: the ETag changed
            return
        assert head + tail == b"A" * 200_000  # a local file keeps the inode it opened
    finally:
        blob.close()


# -- the spool in front of S3 ---------------------------------------------------------------


def test_spool_uploads_in_order_and_releases_after_upload(tmp_path, s3_server, s3_url):
    remote = _s3(s3_server.endpoint, s3_url).sub("recordings").sub("rec-1")
    uploader = Uploader(workers=2, max_backoff=0.5)
    try:
        spool = SpooledStorage(
            LocalStorage(tmp_path / "spool"), remote, uploader, keep_local=True, local_complete=True
        )
        for i in range(1, 4):
            spool.put_bytes(f"segments/{i:06d}.seg", os.urandom(1000))
            spool.put_bytes("chain.log", f"{i} lines".encode())
        assert uploader.wait_idle(20)
        assert remote.list() == [
            "chain.log",
            "segments/000001.seg",
            "segments/000002.seg",
            "segments/000003.seg",
        ]
        assert read_all(remote, "chain.log") == b"3 lines"
        assert spool.spooled  # kept until released
        spool.release()
        assert uploader.wait_idle(20)
        assert not (tmp_path / "spool").exists()
        assert read_all(spool, "chain.log") == b"3 lines"  # now read from the store
    finally:
        uploader.close()


async def test_spool_keeps_everything_while_the_store_is_away(tmp_path, s3_server, s3_url):
    proxy = PausableProxy(s3_server.endpoint)
    await proxy.up()
    uploader = Uploader(workers=1, min_backoff=0.1, max_backoff=0.5)
    try:
        remote = _s3(proxy.url, s3_url)
        direct = _s3(s3_server.endpoint, s3_url)
        spool = SpooledStorage(LocalStorage(tmp_path / "spool"), remote, uploader, keep_local=False)
        spool.put_bytes("a/item", b"1")
        assert await _idle(uploader) and uploader.ok
        await proxy.down()
        spool.put_bytes("a/item2", b"2")
        spool.delete("a/item")
        await _until(lambda: not uploader.ok)
        assert uploader.pending == 2 and (tmp_path / "spool" / "a" / "item2").is_file()
        assert direct.list() == ["a/item"]  # nothing reached the store
        await proxy.up()
        assert await _idle(uploader, 20) and uploader.ok
        assert direct.list() == ["a/item2"] and not (tmp_path / "spool" / "a" / "item2").exists()
    finally:
        uploader.close()
        await proxy.aclose()


async def _idle(uploader: Uploader, timeout: float = 10.0) -> bool:
    import asyncio

    return await asyncio.to_thread(uploader.wait_idle, timeout)


async def _until(predicate, timeout: float = 10.0) -> None:
    from .helpers import eventually

    await eventually(predicate, timeout=timeout)


def test_identity_evidence_in_s3_is_read_and_purged_from_anywhere(tmp_path, s3_server, s3_url):
    from recorder import MasterKey
    from recorder.evidence import EvidenceStore
    from server.recording import object_store

    master = MasterKey.generate()
    config = Config(
        data_dir=tmp_path / "node", storage_url=s3_url, s3_endpoint_url=s3_server.endpoint
    )
    node = object_store(config)
    try:
        kept = EvidenceStore(node.evidence(), master).put(
            "session-1", "snapshot", b"\xff\xd8\xff jpeg", content_type="image/jpeg"
        )
        assert node.wait_uploaded(20)
        assert not list(
            (tmp_path / "node" / "spool" / "identity").rglob("snapshot/*")
        )  # uploaded, released
    finally:
        node.close()
    # another host, no uploader (the command line): the same item, from the store
    elsewhere = object_store(
        Config(data_dir=tmp_path / "cli", storage_url=s3_url, s3_endpoint_url=s3_server.endpoint),
        uploads=False,
    )
    store = EvidenceStore(elsewhere.evidence(), master)
    assert store.sessions() == ["session-1"]
    item, data = store.get("session-1", kept.id)
    assert item == kept and data == b"\xff\xd8\xff jpeg"
    assert EvidenceStore(elsewhere.evidence(), None).delete_session("session-1") == 1
    bucket, prefix = parse_s3_url(s3_url)
    assert S3Storage(s3_server.client(), bucket, prefix).list() == []

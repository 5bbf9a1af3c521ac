"""Where recordings and identity evidence live: the local data directory, or an S3-compatible store.

One interface, two implementations chosen at start from a storage URL
(:func:`open_object_store`):

* ``file:`` -- :class:`LocalObjectStore`: each recording in
  ``<recordings_dir>/<recording_id>/``, the evidence in ``identity_dir``. A
  recording is reachable only on the host that holds the directory.
* ``s3://BUCKET/PREFIX`` -- :class:`S3ObjectStore`: recordings under
  ``PREFIX/recordings/<recording_id>/`` and the evidence under
  ``PREFIX/identity/``, the same objects (ciphertext) as on disk. Every write
  goes to a local spool first (``spool_dir``) and is uploaded in the background
  (:mod:`recorder.spooled_storage`), so recording never waits for the network
  and an unreachable store loses nothing. Any node (or the command line) reads
  any recording.

Callers hold a :class:`~recorder.storage.Storage` per recording and never ask
which implementation they have, except for what only one of them can do:
:attr:`ObjectStore.shared` says whether other nodes see this node's
recordings (then a surviving node can finalise a dead node's recording).
"""

from __future__ import annotations

import logging
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from .evidence import LocalTree
from .exceptions import RecorderError, StorageUnavailable
from .s3_storage import S3Storage, parse_s3_url
from .spooled_storage import SpooledStorage, Uploader
from .storage import LocalStorage, Storage

logger = logging.getLogger(__name__)

#: recording ids become directory names and key prefixes
_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,80}$")


def _check_id(recording_id: str) -> str:
    if not _ID_RE.match(recording_id):
        raise RecorderError(f"invalid recording id {recording_id!r}")
    return recording_id


class ObjectStore(Protocol):
    #: "file" or "s3"
    kind: str
    #: whether every node reaches the recordings this node writes
    shared: bool

    def recording(self, recording_id: str) -> Storage:
        """A recording's storage to read (and finalise, recover, verify)."""
        ...

    def new_recording(self, recording_id: str) -> Storage:
        """The storage a new recording is written into."""
        ...

    def resume(self, recording_id: str) -> Storage:
        """A recording's storage, with whatever an earlier process left in this node's spool
        queued for upload (to recover a recording that a process left unfinished)."""
        ...

    def finished(self, storage: Storage) -> None:
        """The recording in ``storage`` is final: release its spool once it is uploaded."""
        ...

    def delete_recording(self, recording_id: str) -> bool:
        """Delete everything stored for the recording; whether anything was there."""
        ...

    def spooled_recordings(self) -> list[str]:
        """Ids of the recordings with objects in this node's spool (not uploaded yet)."""
        ...

    def evidence(self) -> Storage:
        """The identity evidence store (every session's, see :mod:`recorder.evidence`)."""
        ...

    def probe(self) -> None:
        """Check the remote store answers (and record it for :meth:`health`); blocking."""
        ...

    def health(self) -> dict[str, Any]:
        """``{"kind", "pending_uploads", "ok"}`` for health checks."""
        ...

    def wait_uploaded(self, timeout: float | None = None) -> bool:
        """Block until nothing waits for upload (True), or ``timeout`` seconds (False)."""
        ...

    def close(self, timeout: float = 10.0) -> None:
        """Upload what is queued for up to ``timeout`` seconds, then stop (idempotent)."""
        ...


class LocalObjectStore:
    """Recordings and evidence in local directories (the single-node default)."""

    kind = "file"
    shared = False

    def __init__(self, recordings_dir: str | Path, identity_dir: str | Path) -> None:
        self.recordings_dir = Path(recordings_dir)
        self.identity_dir = Path(identity_dir)

    def __repr__(self) -> str:
        return f"LocalObjectStore({str(self.recordings_dir)!r})"

    def recording(self, recording_id: str) -> Storage:
        return LocalStorage(self.recordings_dir / _check_id(recording_id))

    new_recording = recording
    resume = recording

    def finished(self, storage: Storage) -> None:
        pass

    def delete_recording(self, recording_id: str) -> bool:
        directory = self.recordings_dir / _check_id(recording_id)
        if not directory.is_dir():
            return False
        shutil.rmtree(directory)
        return True

    def spooled_recordings(self) -> list[str]:
        return []

    def evidence(self) -> Storage:
        return LocalTree(self.identity_dir)

    def probe(self) -> None:
        pass

    def health(self) -> dict[str, Any]:
        return {"kind": self.kind, "pending_uploads": 0, "ok": True}

    def wait_uploaded(self, timeout: float | None = None) -> bool:
        return True

    def close(self, timeout: float = 10.0) -> None:
        pass


class S3ObjectStore:
    """Recordings and evidence in an S3-compatible store, spooled through ``spool_dir``.

    ``uploads=False`` (the command line): no background uploader; the few
    writes a command makes (deletions) reach the store before returning.
    ``workers`` recordings upload at once (each one's objects in order): a
    node records a segment and a ``chain.log`` per call every 2 s.
    """

    kind = "s3"
    shared = True

    def __init__(
        self,
        remote: S3Storage,
        spool_dir: str | Path,
        *,
        uploads: bool = True,
        workers: int = 8,
        max_backoff: float = 5.0,
    ) -> None:
        self.remote = remote
        self.spool_dir = Path(spool_dir)
        self._recordings = remote.sub("recordings")
        self._identity = remote.sub("identity")
        self.uploader = (
            Uploader(workers=workers, max_backoff=max_backoff, name=repr(remote))
            if uploads
            else None
        )
        self._evidence: SpooledStorage | None = None

    def __repr__(self) -> str:
        return f"S3ObjectStore({self.remote!r}, spool {str(self.spool_dir)!r})"

    def _spooled(self, recording_id: str, *, local_complete: bool = False) -> SpooledStorage:
        recording_id = _check_id(recording_id)
        return SpooledStorage(
            LocalStorage(self.spool_dir / "recordings" / recording_id),
            self._recordings.sub(recording_id),
            self.uploader,
            keep_local=True,
            local_complete=local_complete,
        )

    def recording(self, recording_id: str) -> Storage:
        return self._spooled(recording_id)

    def new_recording(self, recording_id: str) -> Storage:
        if self.uploader is None:
            raise RecorderError("this object store does not record (no uploader)")
        return self._spooled(recording_id, local_complete=True)

    def resume(self, recording_id: str) -> Storage:
        storage = self._spooled(recording_id)
        storage.resume()
        return storage

    def finished(self, storage: Storage) -> None:
        if isinstance(storage, SpooledStorage):
            storage.release()

    def delete_recording(self, recording_id: str) -> bool:
        deleted = self._recordings.sub(_check_id(recording_id)).delete_all()
        spool = self.spool_dir / "recordings" / recording_id
        if spool.is_dir():
            shutil.rmtree(spool)
            deleted += 1
        return deleted > 0

    def spooled_recordings(self) -> list[str]:
        root = self.spool_dir / "recordings"
        if not root.is_dir():
            return []
        return sorted(
            d.name
            for d in root.iterdir()
            if d.is_dir() and _ID_RE.match(d.name) and LocalStorage(d).list()
        )

    def evidence(self) -> Storage:
        if self._evidence is None:
            self._evidence = SpooledStorage(
                LocalTree(self.spool_dir / "identity"),
                self._identity,
                self.uploader,
                keep_local=False,
            )
            if self.uploader is not None:
                self._evidence.resume()
        return self._evidence

    def probe(self) -> None:
        if self.uploader is None:
            self.remote.ping()
            return
        try:
            self.remote.ping()
        except StorageUnavailable as exc:
            self.uploader.report(False, str(exc))
        else:
            self.uploader.report(True)

    def health(self) -> dict[str, Any]:
        if self.uploader is None:
            return {"kind": self.kind, "pending_uploads": 0, "ok": True}
        return {"kind": self.kind, **self.uploader.health()}

    def wait_uploaded(self, timeout: float | None = None) -> bool:
        return True if self.uploader is None else self.uploader.wait_idle(timeout)

    def close(self, timeout: float = 10.0) -> None:
        if self.uploader is not None:
            self.uploader.close(timeout)


def open_object_store(
    url: str,
    *,
    recordings_dir: str | Path,
    identity_dir: str | Path,
    spool_dir: str | Path,
    s3_client: Callable[[], Any] | None = None,
    uploads: bool = True,
) -> ObjectStore:
    """The store a storage URL names: ``file:`` (the directories given) or ``s3://BUCKET/PREFIX``
    (through the client ``s3_client()`` makes, e.g. a boto3 ``s3`` client)."""
    if url in ("", "file:", "file://"):
        return LocalObjectStore(recordings_dir, identity_dir)
    if url.startswith("s3://"):
        bucket, prefix = parse_s3_url(url)
        if s3_client is None:
            raise RecorderError(f"{url}: no S3 client given")
        return S3ObjectStore(S3Storage(s3_client(), bucket, prefix), spool_dir, uploads=uploads)
    raise RecorderError(f"unknown storage URL {url!r}: use file: or s3://BUCKET/PREFIX")

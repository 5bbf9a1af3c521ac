"""Write-behind storage: every write lands on the local disk first, then goes to a remote store.

A :class:`SpooledStorage` is a :class:`~recorder.storage.Storage` made of a
local spool (a :class:`~recorder.storage.LocalStorage`: fsync, rename, crash
safe) and a remote store (an :class:`~recorder.s3_storage.S3Storage`). A write
returns once the local copy is durable; the :class:`Uploader` copies it to the
remote store in the background, in the order the writes were made (an object
rewritten before its upload moves to the back of the queue, so ``chain.log``
never reaches the store before the segments it lists). When the remote store
cannot be reached, objects stay queued and spooled, and every storage retries
with exponential backoff: nothing is lost and writers are never held up.

A local copy is deleted only after its upload is confirmed: at once
(``keep_local=False``: identity evidence), or, for a recording
(``keep_local=True``), when :meth:`SpooledStorage.release` is called after
finalisation, so that finalising reads the segments from the local disk and
works while the store is down. Reads prefer the local copy and fall back to
the remote store; ``local_complete`` says that the local spool holds everything
(a recording this process is writing), so listing need not ask the store.

A process that dies leaves its spool behind; :meth:`SpooledStorage.resume`
queues whatever is there for upload (every file in a spool is, by
construction, not yet known to be uploaded).
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .exceptions import RecorderError
from .layout import CHAIN_LOG, MANIFEST, PUBLIC_KEY, RECORDING, SIGNATURE
from .storage import Blob, BlobWriter, LocalStorage, Storage

logger = logging.getLogger(__name__)

#: the queue entry that releases the local copies once everything before it is uploaded
_RELEASE = ""
#: at most one "store unreachable" log line per this many seconds
ALERT_INTERVAL_S = 10.0
#: uploaded last when a spool is resumed: the manifest's presence marks a finished recording
_LAST = (CHAIN_LOG, PUBLIC_KEY, SIGNATURE, MANIFEST)


def _resume_order(name: str) -> tuple[int, str]:
    if name == RECORDING or name.endswith("key.wrapped"):
        return 0, name
    if name in _LAST:
        return 2 + _LAST.index(name), name
    return 1, name


class _Writer:
    def __init__(self, inner: BlobWriter, on_commit: Callable[[], None]) -> None:
        self._inner = inner
        self._on_commit = on_commit

    def write(self, data: bytes) -> None:
        self._inner.write(data)

    def commit(self) -> None:
        self._inner.commit()
        self._on_commit()

    def abort(self) -> None:
        self._inner.abort()


class SpooledStorage:
    """A local spool in front of a remote store; see the module docstring.

    Without an ``uploader`` it writes through: each write and delete reaches the
    remote store before returning (the command line, which has no background
    worker).
    """

    def __init__(
        self,
        local: LocalStorage,
        remote: Storage,
        uploader: Uploader | None,
        *,
        keep_local: bool,
        local_complete: bool = False,
    ) -> None:
        self.local = local
        self.remote = remote
        self._uploader = uploader
        self.keep_local = keep_local
        self.local_complete = local_complete
        self._lock = threading.Lock()
        #: name -> how many times this process wrote it; uploaded: the version last uploaded
        self._versions: dict[str, int] = {}
        self._uploaded: dict[str, int] = {}
        #: names deleted here whose remote delete is still queued
        self._deleting: set[str] = set()

    def __repr__(self) -> str:
        return f"SpooledStorage({self.local!r} -> {self.remote!r})"

    # -- the Storage protocol ---------------------------------------------------------

    def put_bytes(self, name: str, data: bytes) -> None:
        self.local.put_bytes(name, data)
        self._written(name)

    def create(self, name: str) -> BlobWriter:
        return _Writer(self.local.create(name), lambda: self._written(name))

    def open(self, name: str) -> Blob:
        with self._lock:
            if name in self._deleting:
                raise FileNotFoundError(f"{name}: deleted")
        try:
            return self.local.open(name)
        except FileNotFoundError:
            return self.remote.open(name)

    def list(self, prefix: str = "") -> list[str]:
        names = set(self.local.list(prefix))
        if not self.local_complete:
            names |= set(self.remote.list(prefix))
        with self._lock:
            names -= self._deleting
        return sorted(names)

    def delete(self, name: str) -> None:
        self.local.delete(name)
        with self._lock:
            self._versions.pop(name, None)
            self._deleting.add(name)
        self._queue(name, "delete")

    def exists(self, name: str) -> bool:
        with self._lock:
            if name in self._deleting:
                return False
        return self.local.exists(name) or (not self.local_complete and self.remote.exists(name))

    def discard_incomplete(self) -> None:
        self.local.discard_incomplete()
        self.remote.discard_incomplete()

    # -- spool management -------------------------------------------------------------

    @property
    def spooled(self) -> bool:
        """Whether anything is left in the local spool."""
        return bool(self.local.list())

    def resume(self) -> int:
        """Queue every object left in the local spool (by a process that died); returns how many."""
        names = sorted(self.local.list(), key=_resume_order)
        for name in names:
            with self._lock:
                self._versions.setdefault(name, 0)
            self._queue(name, "put")
        if names:
            logger.info("%r: %d spooled object(s) queued for upload", self, len(names))
        return len(names)

    def release(self) -> None:
        """Delete the local copies once everything written so far is uploaded."""
        self._queue(_RELEASE, "release")

    def _written(self, name: str) -> None:
        with self._lock:
            self._versions[name] = self._versions.get(name, 0) + 1
            self._deleting.discard(name)
        self._queue(name, "put")

    def _queue(self, name: str, op: str) -> None:
        if self._uploader is not None:
            self._uploader.enqueue(self, name, op)
        else:
            self.process(name, op)

    def process(self, name: str, op: str) -> None:
        """Carry out one queued operation (in the uploader's thread); raises when the store fails."""
        if op == "put":
            self._upload(name)
        elif op == "delete":
            self.remote.delete(name)
            with self._lock:
                self._deleting.discard(name)
                self._uploaded.pop(name, None)
        elif op == "release":
            self._release()
        else:
            raise RecorderError(f"unknown spool operation {op!r}")

    def _upload(self, name: str) -> None:
        with self._lock:
            version = self._versions.get(name, 0)
        try:
            blob = self.local.open(name)
        except FileNotFoundError:  # deleted, or uploaded and released meanwhile
            return
        try:
            copy = getattr(self.remote, "copy_from", None)
            if copy is not None:
                copy(name, blob)
            else:
                self.remote.put_bytes(name, blob.read(0, blob.size))
        finally:
            blob.close()
        with self._lock:
            self._uploaded[name] = version
            if not self.keep_local and self._versions.get(name, 0) == version:
                self.local.delete(name)
                self._versions.pop(name, None)

    def _release(self) -> None:
        kept = []
        with self._lock:
            self.local_complete = False
            for name in self.local.list():
                if name in self._uploaded and self._uploaded[name] == self._versions.get(name, 0):
                    self.local.delete(name)
                else:
                    kept.append(name)
        if kept:
            logger.warning(
                "%r: %d object(s) not uploaded yet stay spooled: %s",
                self,
                len(kept),
                ", ".join(kept[:5]),
            )
            return
        root = self.local.root
        for folder in sorted((p for p in root.rglob("*") if p.is_dir()), reverse=True):
            _rmdir(folder)
        _rmdir(root)


def _rmdir(path: Path) -> None:
    try:
        path.rmdir()
    except OSError:  # not empty (a hidden temporary file), or gone
        pass


class Uploader:
    """Background threads uploading what :class:`SpooledStorage` objects spool.

    Each storage's operations run in the order they were queued, one at a time;
    different storages (recordings) upload in parallel on ``workers`` threads.
    A failing storage is retried after a backoff doubling from ``min_backoff`` to
    ``max_backoff`` seconds. :attr:`ok` is False from a failure until the next
    success; :attr:`pending` counts the objects not uploaded yet.
    """

    def __init__(
        self,
        *,
        workers: int = 2,
        min_backoff: float = 0.5,
        max_backoff: float = 5.0,
        name: str = "object store",
    ) -> None:
        self.name = name
        self.min_backoff = min_backoff
        self.max_backoff = max_backoff
        self._cond = threading.Condition()
        self._queues: dict[SpooledStorage, OrderedDict[str, tuple[str, int]]] = {}
        self._ready: list[SpooledStorage] = []
        self._busy: set[SpooledStorage] = set()
        self._retry_at: dict[SpooledStorage, float] = {}
        self._backoff: dict[SpooledStorage, float] = {}
        self._tokens = itertools.count()
        self._closing = False
        self._failing_since: float | None = None
        self._last_alert = 0.0
        self.last_error: str | None = None
        self.uploaded = 0
        self._threads = [
            threading.Thread(target=self._work, name=f"upload-{i}", daemon=True)
            for i in range(workers)
        ]
        for thread in self._threads:
            thread.start()

    def __repr__(self) -> str:
        return f"Uploader({self.name!r}, pending={self.pending}, ok={self.ok})"

    @property
    def pending(self) -> int:
        with self._cond:
            return sum(1 for q in self._queues.values() for op, _ in q.values() if op != "release")

    @property
    def ok(self) -> bool:
        return self._failing_since is None

    def health(self) -> dict[str, Any]:
        return {"pending_uploads": self.pending, "ok": self.ok}

    def enqueue(self, storage: SpooledStorage, name: str, op: str) -> None:
        with self._cond:
            if self._closing:
                raise RecorderError(f"{self.name}: the uploader is closed")
            queue = self._queues.setdefault(storage, OrderedDict())
            queue.pop(name, None)
            queue[name] = (op, next(self._tokens))
            if (
                storage not in self._busy
                and storage not in self._retry_at
                and storage not in self._ready
            ):
                self._ready.append(storage)
            self._cond.notify()

    def report(self, ok: bool, error: str | None = None) -> None:
        """Record the outcome of a request to the store (an upload, or a probe while idle)."""
        now = time.monotonic()
        if ok:
            if self._failing_since is not None:
                logger.warning(
                    "%s reachable again after %.0f s: uploading %d spooled object(s)",
                    self.name,
                    now - self._failing_since,
                    self.pending,
                )
            self._failing_since, self.last_error = None, None
            return
        self.last_error = error
        if self._failing_since is None:
            self._failing_since = now
        if self._failing_since == now or now - self._last_alert >= ALERT_INTERVAL_S:
            self._last_alert = now
            logger.error(
                "%s unreachable (%s): %d object(s) spooled on local disk, retrying",
                self.name,
                error,
                self.pending,
            )

    def _next(self) -> SpooledStorage | None:
        """The next storage to work on (the caller holds the lock); None when closing."""
        while not self._closing:
            now = time.monotonic()
            for storage, at in list(self._retry_at.items()):
                if at <= now:
                    del self._retry_at[storage]
                    self._ready.append(storage)
            if self._ready:
                storage = self._ready.pop(0)
                self._busy.add(storage)
                return storage
            wait = min(self._retry_at.values(), default=now + 60) - now
            self._cond.wait(max(0.01, wait))
        return None

    def _work(self) -> None:
        while True:
            with self._cond:
                storage = self._next()
            if storage is None:
                return
            try:
                self._drain(storage)
            except Exception as exc:
                if not isinstance(exc, OSError):
                    logger.exception("%r: upload failed", storage)
                with self._cond:
                    delay = self._backoff.get(storage, self.min_backoff / 2) * 2
                    self._backoff[storage] = min(self.max_backoff, delay)
                    self._retry_at[storage] = time.monotonic() + self._backoff[storage]
                self.report(False, str(exc))
            finally:
                with self._cond:
                    self._busy.discard(storage)
                    if not self._queues.get(storage):
                        self._queues.pop(storage, None)
                    elif storage not in self._retry_at:
                        self._ready.append(storage)
                    self._cond.notify_all()

    def _drain(self, storage: SpooledStorage) -> None:
        while True:
            with self._cond:
                queue = self._queues.get(storage)
                if not queue or self._closing:
                    return
                name, (op, token) = next(iter(queue.items()))
            storage.process(name, op)
            with self._cond:
                if queue.get(name, (None, None))[1] == token:
                    del queue[name]
                self._backoff.pop(storage, None)
                if op != "release":
                    self.uploaded += 1
            self.report(True)

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Block until nothing is queued (True) or ``timeout`` seconds passed (False)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while self._queues or self._busy:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._cond.wait(remaining if remaining is not None else 1.0)
        return True

    def close(self, timeout: float = 10.0) -> None:
        """Upload what is queued for up to ``timeout`` seconds, then stop; what is left stays
        spooled for the next start. Idempotent."""
        if self._closing:
            return
        if not self.wait_idle(timeout):
            logger.warning(
                "%s: %d object(s) not uploaded at shutdown stay spooled on local disk",
                self.name,
                self.pending,
            )
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        for thread in self._threads:
            thread.join(timeout=30)
            if thread.is_alive():
                logger.warning(
                    "%s: upload thread %s still busy at shutdown", self.name, thread.name
                )

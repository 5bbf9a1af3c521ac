"""Where a recording's bytes live: a tiny object-store interface and its local implementation.

Names are relative, ``/``-separated paths inside one session's store
(``segments/000001.seg``, ``chain.log``, ``customer.webm.enc``). Every write is
atomic: a reader sees the old object or the new one, never a torn one.
:class:`LocalStorage` does ``tmp`` + fsync + rename + directory fsync;
:class:`~recorder.s3_storage.S3Storage` maps :meth:`Storage.put_bytes` to
``PutObject``, :meth:`Storage.create` to a multipart upload (completed on
``commit``), and ``Blob.read`` to a ranged ``GetObject``;
:class:`~recorder.spooled_storage.SpooledStorage` puts a local spool in front of
a remote store. :mod:`recorder.object_store` chooses among them.

Not expressed through this interface (local filesystem only):
``recovery.find_interrupted`` walks directories, and finalisation muxes into an
encrypted scratch file in a local temp directory (:mod:`recorder.spool`).
"""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path, PurePosixPath
from typing import Protocol

from .exceptions import RecorderError


class Blob(Protocol):
    """A stored object opened for ranged reads."""

    @property
    def size(self) -> int: ...

    def read(self, offset: int, length: int) -> bytes:
        """Up to ``length`` bytes from ``offset`` (fewer only at the end of the object)."""
        ...

    def close(self) -> None: ...


class BlobWriter(Protocol):
    """A streamed write that becomes visible, all at once, on :meth:`commit`."""

    def write(self, data: bytes) -> None: ...

    def commit(self) -> None: ...

    def abort(self) -> None: ...


class Storage(Protocol):
    def put_bytes(self, name: str, data: bytes) -> None:
        """Store ``data`` under ``name`` atomically and durably (replaces any old object)."""
        ...

    def create(self, name: str) -> BlobWriter: ...

    def open(self, name: str) -> Blob:
        """Raises ``FileNotFoundError`` when there is no such object."""
        ...

    def list(self, prefix: str = "") -> list[str]:
        """Names starting with ``prefix``, sorted."""
        ...

    def delete(self, name: str) -> None: ...

    def exists(self, name: str) -> bool: ...

    def discard_incomplete(self) -> None:
        """Remove leftovers of writes interrupted by a crash (S3: abort multipart uploads)."""
        ...


def read_all(storage: Storage, name: str) -> bytes:
    blob = storage.open(name)
    try:
        return blob.read(0, blob.size)
    finally:
        blob.close()


def as_storage(directory: str | Path | Storage) -> Storage:
    if isinstance(directory, str | Path):
        return LocalStorage(directory)
    return directory


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class _LocalBlob:
    def __init__(self, path: Path) -> None:
        self._fd = os.open(path, os.O_RDONLY)
        self.size = os.fstat(self._fd).st_size

    def read(self, offset: int, length: int) -> bytes:
        if offset < 0 or length < 0:
            raise ValueError("negative offset or length")
        return os.pread(self._fd, length, offset)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def _private_dirs(directory: Path) -> None:
    """Create ``directory`` and any missing parent with mode 0700.

    ``Path.mkdir(parents=True, mode=...)`` gives the mode to the last directory
    only: the ones above it would be 0755 and list every session id to any
    local user.
    """
    missing = []
    for candidate in (directory, *directory.parents):
        if candidate.is_dir():
            break
        missing.append(candidate)
    for candidate in reversed(missing):
        try:
            os.mkdir(candidate, 0o700)
        except FileExistsError:
            pass


class _LocalWriter:
    def __init__(self, path: Path) -> None:
        _private_dirs(path.parent)
        self._path = path
        self._tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        self._file = os.fdopen(
            os.open(self._tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb"
        )

    def write(self, data: bytes) -> None:
        self._file.write(data)

    def commit(self) -> None:
        try:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            os.replace(self._tmp, self._path)
            _fsync_dir(self._path.parent)
        except BaseException:
            self.abort()
            raise

    def abort(self) -> None:
        # closing flushes what is buffered, which fails again on a full disk: the temporary
        # file must go all the same, or every failed write leaves one behind
        with contextlib.suppress(OSError):
            self._file.close()
        self._tmp.unlink(missing_ok=True)


class LocalStorage:
    """A :class:`Storage` in a local directory (created with mode 0700 on first write)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"LocalStorage({str(self.root)!r})"

    def _path(self, name: str) -> Path:
        parts = PurePosixPath(name).parts
        if (
            not parts
            or name.startswith("/")
            or any(p in ("..", ".") or p.startswith(".") for p in parts)
        ):
            raise RecorderError(f"invalid storage name {name!r}")
        return self.root.joinpath(*parts)

    def put_bytes(self, name: str, data: bytes) -> None:
        writer = _LocalWriter(self._path(name))
        try:
            writer.write(data)
        except BaseException:
            writer.abort()
            raise
        writer.commit()

    def create(self, name: str) -> BlobWriter:
        return _LocalWriter(self._path(name))

    def open(self, name: str) -> Blob:
        return _LocalBlob(self._path(name))

    def list(self, prefix: str = "") -> list[str]:
        if not self.root.is_dir():
            return []
        names = []
        for dirpath, dirnames, filenames in os.walk(self.root):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            rel = Path(dirpath).relative_to(self.root)
            for f in filenames:
                name = (rel / f).as_posix()
                if not f.startswith(".") and name.startswith(prefix):
                    names.append(name)
        return sorted(names)

    def delete(self, name: str) -> None:
        self._path(name).unlink(missing_ok=True)

    def exists(self, name: str) -> bool:
        return self._path(name).is_file()

    def discard_incomplete(self) -> None:
        if self.root.is_dir():
            for tmp in self.root.rglob(".*.tmp"):
                tmp.unlink(missing_ok=True)

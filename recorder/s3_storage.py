"""A :class:`~recorder.storage.Storage` in an S3-compatible object store (MinIO, Ceph RGW, a cloud store).

Objects are the very bytes :class:`~recorder.storage.LocalStorage` would write
(sealed segments, chunk-encrypted outputs, signed manifests): the store never
sees plaintext or keys. Names map to keys ``<prefix><name>``:

* :meth:`S3Storage.put_bytes` is one ``PutObject`` (with ``Content-MD5``), which
  S3 makes visible all at once;
* :meth:`S3Storage.create` buffers up to :data:`PART_SIZE` and then streams a
  multipart upload, completed on ``commit`` (aborted on ``abort``), so a large
  output is never held in memory and never half-visible;
* ``Blob.read`` is a ranged ``GetObject``, pinned to the ETag seen at open
  (``If-Match``): an object replaced while it is read fails instead of mixing
  two versions;
* :meth:`S3Storage.discard_incomplete` aborts the multipart uploads a crash left.

It speaks the S3 API through a client it is given (a boto3 ``s3`` client, made
by the server, which composes: this leaf package imports no HTTP library).
Blocking: call it from a worker thread. A boto3 client is thread-safe, so one
:class:`S3Storage` (and its children from :meth:`S3Storage.sub`) serves every
thread. Credentials and the region are the client's own (``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``AWS_DEFAULT_REGION``, instance roles...): this
module never sees, logs or stores them. Missing objects raise
``FileNotFoundError``; anything else the store or the network refuses raises
:class:`~recorder.exceptions.StorageUnavailable`.
"""

from __future__ import annotations

import base64
import hashlib
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import PurePosixPath
from typing import Any, TypeVar
from urllib.parse import urlsplit

from .exceptions import IntegrityError, RecorderError, StorageUnavailable
from .storage import Blob, BlobWriter

logger = logging.getLogger(__name__)
_T = TypeVar("_T")

#: multipart part size (S3's minimum is 5 MiB for all parts but the last)
PART_SIZE = 8 << 20
#: keys per DeleteObjects request (the S3 maximum)
_DELETE_BATCH = 1000
_MISSING = {"NoSuchKey", "404", "NotFound", "NoSuchUpload"}


def parse_s3_url(url: str) -> tuple[str, str]:
    """``s3://BUCKET/PREFIX`` as ``(bucket, prefix)``, the prefix empty or ending in ``/``."""
    parts = urlsplit(url)
    if parts.scheme != "s3" or not parts.netloc or parts.query or parts.fragment:
        raise RecorderError(f"not an S3 URL (s3://BUCKET/PREFIX): {url!r}")
    prefix = parts.path.strip("/")
    return parts.netloc, f"{prefix}/" if prefix else ""


def _client_error(exc: BaseException) -> bool:
    """Whether ``exc`` comes from the S3 client library (botocore) or the network below it."""
    return isinstance(exc, OSError) or any(
        cls.__module__.split(".")[0] in ("botocore", "urllib3") for cls in type(exc).__mro__
    )


def _md5(data: bytes | bytearray | memoryview) -> str:
    return base64.b64encode(hashlib.md5(data, usedforsecurity=False).digest()).decode()


def _check_name(name: str) -> str:
    """The same names :class:`~recorder.storage.LocalStorage` accepts (relative, no hidden parts)."""
    parts = PurePosixPath(name).parts
    if (
        not parts
        or name.startswith("/")
        or name.endswith("/")
        or any(p in ("..", ".") or p.startswith(".") for p in parts)
    ):
        raise RecorderError(f"invalid storage name {name!r}")
    return name


class S3Storage:
    """Objects under ``prefix`` in ``bucket``; see the module docstring."""

    def __init__(
        self, client: Any, bucket: str, prefix: str = "", *, label: str | None = None
    ) -> None:
        if prefix and not prefix.endswith("/"):
            prefix += "/"
        self.client = client
        self.bucket = bucket
        self.prefix = prefix
        self._label = label or f"s3://{bucket}/{prefix}"

    @classmethod
    def from_url(cls, url: str, client: Any) -> S3Storage:
        bucket, prefix = parse_s3_url(url)
        return cls(client, bucket, prefix)

    def __repr__(self) -> str:
        return f"S3Storage({self._label!r})"

    def sub(self, name: str) -> S3Storage:
        """The storage under ``name/`` (one recording's, one kind of data's)."""
        return S3Storage(self.client, self.bucket, self.prefix + _check_name(name) + "/")

    def _key(self, name: str) -> str:
        return self.prefix + _check_name(name)

    @contextmanager
    def _errors(self, what: str) -> Iterator[None]:
        """Map the client's errors: a missing object to ``FileNotFoundError``, anything the store
        or the network refused to :class:`StorageUnavailable` (others are bugs: raised as is)."""
        try:
            yield
        except Exception as exc:
            response = getattr(exc, "response", None)
            if isinstance(response, dict) and "Error" in response:  # the API answered no
                error = response["Error"]
                code = str(error.get("Code", ""))
                if code in _MISSING:
                    raise FileNotFoundError(f"{self._label}{what}: no such object") from None
                raise StorageUnavailable(
                    f"{self._label}{what}: {code or 'error'} ({error.get('Message') or exc})"
                ) from None
            if _client_error(exc):  # connection refused, timeouts, credentials...
                raise StorageUnavailable(f"{self._label}{what}: {exc}") from None
            raise

    def _call(self, what: str, fn: Callable[..., _T], **kwargs: Any) -> _T:
        with self._errors(what):
            return fn(**kwargs)

    # -- the Storage protocol ---------------------------------------------------------

    def put_bytes(self, name: str, data: bytes) -> None:
        data = bytes(data)
        self._call(
            name,
            self.client.put_object,
            Bucket=self.bucket,
            Key=self._key(name),
            Body=data,
            ContentMD5=_md5(data),
        )

    def create(self, name: str) -> BlobWriter:
        return _S3Writer(self, self._key(name), name)

    def open(self, name: str) -> _S3Blob:
        key = self._key(name)
        head = self._call(name, self.client.head_object, Bucket=self.bucket, Key=key)
        return _S3Blob(self, key, name, int(head["ContentLength"]), str(head["ETag"]))

    def list(self, prefix: str = "") -> list[str]:
        names = []
        paginator = self.client.get_paginator("list_objects_v2")
        with self._errors(prefix or "(list)"):
            for page in paginator.paginate(Bucket=self.bucket, Prefix=self.prefix + prefix):
                for item in page.get("Contents", []):
                    name = item["Key"][len(self.prefix) :]
                    if name and not any(p.startswith(".") for p in name.split("/")):
                        names.append(name)
        return sorted(names)

    def delete(self, name: str) -> None:
        self._call(name, self.client.delete_object, Bucket=self.bucket, Key=self._key(name))

    def exists(self, name: str) -> bool:
        try:
            self._call(name, self.client.head_object, Bucket=self.bucket, Key=self._key(name))
        except FileNotFoundError:
            return False
        return True

    def discard_incomplete(self) -> None:
        paginator = self.client.get_paginator("list_multipart_uploads")
        with self._errors("(multipart uploads)"):
            for page in paginator.paginate(Bucket=self.bucket, Prefix=self.prefix):
                for upload in page.get("Uploads", []):
                    self.client.abort_multipart_upload(
                        Bucket=self.bucket, Key=upload["Key"], UploadId=upload["UploadId"]
                    )
                    logger.info(
                        "%s: aborted an interrupted upload of %s", self._label, upload["Key"]
                    )

    # -- beyond the protocol ----------------------------------------------------------

    def copy_from(self, name: str, blob: Blob) -> None:
        """Upload an open blob (a local file): one PutObject, or a multipart upload when large."""
        if blob.size <= PART_SIZE:
            self.put_bytes(name, blob.read(0, blob.size))
            return
        writer = self.create(name)
        try:
            offset = 0
            while offset < blob.size:
                block = blob.read(offset, PART_SIZE)
                if not block:
                    raise RecorderError(f"{name}: the local copy ended early")
                writer.write(block)
                offset += len(block)
            writer.commit()
        except BaseException:
            writer.abort()
            raise

    def delete_all(self, prefix: str = "") -> int:
        """Delete every object whose name starts with ``prefix``; returns how many."""
        names = self.list(prefix)
        for start in range(0, len(names), _DELETE_BATCH):
            batch = [{"Key": self._key(n)} for n in names[start : start + _DELETE_BATCH]]
            done = self._call(
                prefix or "(all)",
                self.client.delete_objects,
                Bucket=self.bucket,
                Delete={"Objects": batch, "Quiet": True},
            )
            if done.get("Errors"):
                first = done["Errors"][0]
                raise StorageUnavailable(
                    f"{self._label}{first.get('Key')}: not deleted "
                    f"({first.get('Code')}: {first.get('Message')})"
                )
        return len(names)

    def ping(self) -> None:
        """Raise :class:`StorageUnavailable` unless the bucket answers (exists, credentials work)."""
        try:
            self._call("", self.client.head_bucket, Bucket=self.bucket)
        except FileNotFoundError:
            raise StorageUnavailable(f"{self._label}: no such bucket") from None


class _S3Blob:
    def __init__(self, storage: S3Storage, key: str, name: str, size: int, etag: str) -> None:
        self._storage = storage
        self._key = key
        self._name = name
        self.size = size
        self._etag = etag

    def read(self, offset: int, length: int) -> bytes:
        if offset < 0 or length < 0:
            raise ValueError("negative offset or length")
        end = min(offset + length, self.size)
        if offset >= end:
            return b""
        storage = self._storage
        try:
            response = storage._call(
                self._name,
                storage.client.get_object,
                Bucket=storage.bucket,
                Key=self._key,
                Range=f"bytes={offset}-{end - 1}",
                IfMatch=self._etag,
            )
        except StorageUnavailable as exc:
            if "PreconditionFailed" in str(exc):
                raise IntegrityError(f"{self._name} was replaced while it was being read") from None
            raise
        with storage._errors(self._name):
            data: bytes = response["Body"].read()
        if len(data) != end - offset:
            raise StorageUnavailable(
                f"{self._name}: short read ({len(data)} of {end - offset} bytes)"
            )
        return data

    def close(self) -> None:
        pass


class _S3Writer:
    """One object's streamed upload: a single PutObject if it stays small, else multipart."""

    def __init__(self, storage: S3Storage, key: str, name: str) -> None:
        self._storage = storage
        self._key = key
        self._name = name
        self._buffer = bytearray()
        self._upload_id: str | None = None
        self._parts: list[dict[str, Any]] = []
        self._done = False

    def _send_part(self, data: bytes | bytearray) -> None:
        s = self._storage
        if self._upload_id is None:
            created = s._call(
                self._name, s.client.create_multipart_upload, Bucket=s.bucket, Key=self._key
            )
            self._upload_id = str(created["UploadId"])
        number = len(self._parts) + 1
        part = s._call(
            self._name,
            s.client.upload_part,
            Bucket=s.bucket,
            Key=self._key,
            UploadId=self._upload_id,
            PartNumber=number,
            Body=bytes(data),
            ContentMD5=_md5(data),
        )
        self._parts.append({"PartNumber": number, "ETag": part["ETag"]})

    def write(self, data: bytes) -> None:
        if self._done:
            raise RecorderError(f"{self._name}: write after commit or abort")
        self._buffer += data
        while len(self._buffer) >= 2 * PART_SIZE:  # keep a part back: the last may not be empty
            self._send_part(self._buffer[:PART_SIZE])
            del self._buffer[:PART_SIZE]

    def commit(self) -> None:
        if self._done:
            raise RecorderError(f"{self._name}: already committed or aborted")
        s = self._storage
        try:
            if self._upload_id is None and len(self._buffer) <= PART_SIZE:
                s.put_bytes(self._name, bytes(self._buffer))
            else:
                while len(self._buffer) > PART_SIZE:
                    self._send_part(self._buffer[:PART_SIZE])
                    del self._buffer[:PART_SIZE]
                self._send_part(self._buffer)
                s._call(
                    self._name,
                    s.client.complete_multipart_upload,
                    Bucket=s.bucket,
                    Key=self._key,
                    UploadId=self._upload_id,
                    MultipartUpload={"Parts": self._parts},
                )
        except BaseException:
            self.abort()
            raise
        self._done = True
        self._buffer = bytearray()

    def abort(self) -> None:
        if self._done:
            return
        self._done = True
        self._buffer = bytearray()
        if self._upload_id is not None:
            s = self._storage
            try:
                s._call(
                    self._name,
                    s.client.abort_multipart_upload,
                    Bucket=s.bucket,
                    Key=self._key,
                    UploadId=self._upload_id,
                )
            except (StorageUnavailable, FileNotFoundError) as exc:
                # discard_incomplete() aborts it later
                logger.warning("%s: could not abort the upload of %s: %s", s, self._name, exc)

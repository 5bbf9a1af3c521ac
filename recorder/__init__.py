"""Dual recording (双录): segment writing, integrity, encryption, export.

A leaf package: it takes encoded frames, events, paths and keys, and returns
files and results; it never imports ``server``, ``signaling`` or ``identity``.

* :class:`SessionRecorder` (``segment_writer``) records a live session into
  encrypted, hash-chained segments.
* :func:`finalize` turns them into one encrypted WebM per party and a signed
  manifest; :func:`recover` does the same after a crash.
* :func:`verify` proves a recording unchanged; :func:`open_encrypted` serves
  byte ranges of an encrypted output.

The on-disk layout is described in :mod:`recorder.layout`; where it lives (the
data directory, or an S3-compatible store behind a local spool) in
:mod:`recorder.object_store`.
"""

from .encrypted_file import EncryptedFile, open_encrypted
from .exceptions import IntegrityError, RecorderError, StorageFull, StorageUnavailable, WrongKey
from .finalize import finalize
from .keys import MasterKey, SigningKey
from .layout import read_data_key
from .manifest import Manifest
from .object_store import LocalObjectStore, ObjectStore, S3ObjectStore, open_object_store
from .recovery import find_interrupted, recover
from .s3_storage import S3Storage
from .segment_writer import SessionRecorder
from .storage import LocalStorage, Storage
from .verify import VerifyResult, verify

__all__ = [
    "EncryptedFile",
    "IntegrityError",
    "LocalObjectStore",
    "LocalStorage",
    "Manifest",
    "MasterKey",
    "ObjectStore",
    "RecorderError",
    "S3ObjectStore",
    "S3Storage",
    "SessionRecorder",
    "SigningKey",
    "Storage",
    "StorageFull",
    "StorageUnavailable",
    "VerifyResult",
    "WrongKey",
    "find_interrupted",
    "finalize",
    "open_encrypted",
    "open_object_store",
    "read_data_key",
    "recover",
    "verify",
]

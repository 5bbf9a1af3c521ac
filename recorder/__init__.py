"""Dual recording (双录): segment writing, integrity, encryption, export.

A leaf package: it takes encoded frames, events, paths and keys, and returns
files and results; it never imports ``server``, ``signaling`` or ``identity``.

* :class:`SessionRecorder` (``segment_writer``) records a live session into
  encrypted, hash-chained segments.
* :func:`finalize` turns them into one encrypted WebM per party and a signed
  manifest; :func:`recover` does the same after a crash.
* :func:`verify` proves a recording unchanged; :func:`open_encrypted` serves
  byte ranges of an encrypted output.

The on-disk layout is described in :mod:`recorder.layout`.
"""

from .encrypted_file import EncryptedFile, open_encrypted
from .exceptions import IntegrityError, RecorderError, StorageFull, WrongKey
from .finalize import finalize
from .keys import MasterKey, SigningKey
from .layout import read_data_key
from .manifest import Manifest
from .recovery import find_interrupted, recover
from .segment_writer import SessionRecorder
from .storage import LocalStorage, Storage
from .verify import VerifyResult, verify

__all__ = [
    "EncryptedFile",
    "IntegrityError",
    "LocalStorage",
    "Manifest",
    "MasterKey",
    "RecorderError",
    "SessionRecorder",
    "SigningKey",
    "Storage",
    "StorageFull",
    "VerifyResult",
    "WrongKey",
    "find_interrupted",
    "finalize",
    "open_encrypted",
    "read_data_key",
    "recover",
    "verify",
]

"""Keys: the master key that wraps per-session data keys, and the Ed25519 signing key.

Both live in files outside the data directory, created with mode 0600. Key
material never appears in reprs, logs or exception messages; a master key is
named by its ``key_id`` (a hash prefix that reveals nothing about the key).
"""

from __future__ import annotations

import hashlib
import logging
import os
import stat
from pathlib import Path

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from .exceptions import IntegrityError, RecorderError, WrongKey

logger = logging.getLogger(__name__)

KEY_SIZE = 32
#: wrapped data key: magic | master key id (8) | nonce (12) | AES-GCM(data key) (32 + 16)
_WRAP_MAGIC = b"VCK1"
_WRAP_SIZE = 4 + 8 + 12 + KEY_SIZE + 16


def new_data_key() -> bytes:
    """A fresh random 256-bit data key (one per session)."""
    return os.urandom(KEY_SIZE)


def _write_secret(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise RecorderError(f"{path} already exists; refusing to overwrite a key") from None
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _read_secret(path: Path) -> bytes:
    try:
        mode = path.stat().st_mode
        data = path.read_bytes()
    except FileNotFoundError:
        raise RecorderError(f"key file {path} not found") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        logger.warning("key file %s is accessible by group or others (chmod 600 it)", path)
    return data


class MasterKey:
    """A 256-bit key kept outside the data directory; wraps each session's data key."""

    __slots__ = ("_aead", "key_id")

    def __init__(self, key: bytes) -> None:
        if len(key) != KEY_SIZE:
            raise RecorderError(f"a master key is {KEY_SIZE} bytes, got {len(key)}")
        self._aead = AESGCM(key)
        #: public name of the key: 16 hex digits of a domain-separated hash
        self.key_id = hashlib.sha256(b"vcounter master key id\0" + key).hexdigest()[:16]

    def __repr__(self) -> str:
        return f"MasterKey(key_id={self.key_id})"

    @classmethod
    def generate(cls) -> MasterKey:
        return cls(os.urandom(KEY_SIZE))

    @classmethod
    def create(cls, path: str | Path) -> MasterKey:
        """Create a new random key file (mode 0600); never overwrites an existing one."""
        key = os.urandom(KEY_SIZE)
        _write_secret(Path(path), key)
        return cls(key)

    @classmethod
    def load(cls, path: str | Path) -> MasterKey:
        key = _read_secret(Path(path))
        if len(key) != KEY_SIZE:
            raise RecorderError(f"{path} is not a master key (expected {KEY_SIZE} bytes)")
        return cls(key)

    def wrap(self, data_key: bytes) -> bytes:
        if len(data_key) != KEY_SIZE:
            raise RecorderError(f"a data key is {KEY_SIZE} bytes")
        head = _WRAP_MAGIC + bytes.fromhex(self.key_id)
        nonce = os.urandom(12)
        return head + nonce + self._aead.encrypt(nonce, data_key, head)

    def unwrap(self, blob: bytes) -> bytes:
        if len(blob) != _WRAP_SIZE or not blob.startswith(_WRAP_MAGIC):
            raise IntegrityError("wrapped data key is malformed")
        head, nonce, sealed = blob[:12], blob[12:24], blob[24:]
        if head[4:].hex() != self.key_id:
            raise WrongKey(
                f"recording was encrypted under master key {head[4:].hex()}, "
                f"not this one ({self.key_id})"
            )
        try:
            return self._aead.decrypt(nonce, sealed, head)
        except InvalidTag:
            raise IntegrityError("wrapped data key fails authentication (corrupted)") from None


class SigningKey:
    """The server's Ed25519 key that signs recording manifests."""

    __slots__ = ("_private",)

    def __init__(self, private: Ed25519PrivateKey) -> None:
        self._private = private

    def __repr__(self) -> str:
        return f"SigningKey(fingerprint={self.fingerprint()[:16]})"

    @classmethod
    def generate(cls) -> SigningKey:
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def create(cls, path: str | Path) -> SigningKey:
        """Create a new key file (PKCS#8 PEM, mode 0600); never overwrites an existing one."""
        key = cls.generate()
        pem = key._private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        _write_secret(Path(path), pem)
        return key

    @classmethod
    def load(cls, path: str | Path) -> SigningKey:
        try:
            private = serialization.load_pem_private_key(_read_secret(Path(path)), None)
        except ValueError:
            raise RecorderError(f"{path} is not a PEM private key") from None
        if not isinstance(private, Ed25519PrivateKey):
            raise RecorderError(f"{path} is not an Ed25519 key")
        return cls(private)

    def public_pem(self) -> bytes:
        return self._private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def fingerprint(self) -> str:
        return fingerprint(self.public_pem())

    def sign(self, data: bytes) -> bytes:
        return self._private.sign(data)

    @staticmethod
    def verify(public_pem: bytes, signature: bytes, data: bytes) -> bool:
        """Whether ``signature`` is a valid Ed25519 signature of ``data`` by that key."""
        try:
            _load_public(public_pem).verify(signature, data)
        except InvalidSignature:
            return False
        return True


def _load_public(public_pem: bytes) -> Ed25519PublicKey:
    try:
        key = serialization.load_pem_public_key(public_pem)
    except ValueError:
        raise RecorderError("not a PEM public key") from None
    if not isinstance(key, Ed25519PublicKey):
        raise RecorderError("not an Ed25519 public key")
    return key


def fingerprint(public_pem: bytes) -> str:
    """SHA-256 (hex) of the raw 32-byte Ed25519 public key."""
    raw = _load_public(public_pem).public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    return hashlib.sha256(raw).hexdigest()

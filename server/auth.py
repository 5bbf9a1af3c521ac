"""Passwords (scrypt, memory-hard), login tokens and role checks.

Tokens are random 256-bit strings handed to the client once; the database
keeps only their SHA-256. Nothing here logs a password or a token.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import secrets
from datetime import timedelta

from sqlalchemy import delete
from sqlmodel import Session, col

from business.catalogue import BUSINESS_TYPES
from signaling.state import SharedState

from .db import ROLES, AuthToken, Database, User, get_user, utcnow
from .exceptions import BadRequest, Conflict, TooManyRequests, Unauthorized

# scrypt with N=2**14, r=8 uses 16 MiB per hash: memory-hard, ~50 ms here
SCRYPT_N = 2**14
SCRYPT_R = 8
SCRYPT_P = 1


def hash_password(password: str) -> str:
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(
        password.encode(),
        salt=salt,
        n=SCRYPT_N,
        r=SCRYPT_R,
        p=SCRYPT_P,
        maxmem=64 * 1024 * 1024,
        dklen=32,
    )
    b64 = base64.b64encode
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${b64(salt).decode()}${b64(digest).decode()}"


def verify_password(password: str, encoded: str) -> bool:
    try:
        scheme, n, r, p, salt_b64, digest_b64 = encoded.split("$")
        if scheme != "scrypt":
            return False
        salt = base64.b64decode(salt_b64)
        expected = base64.b64decode(digest_b64)
        digest = hashlib.scrypt(
            password.encode(),
            salt=salt,
            n=int(n),
            r=int(r),
            p=int(p),
            maxmem=64 * 1024 * 1024,
            dklen=len(expected),
        )
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(digest, expected)


# a real hash to compare against when the user does not exist (same timing)
_DUMMY_HASH = hash_password(secrets.token_urlsafe(16))


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def validate_new_user(role: str, username: str, password: str, skills: list[str]) -> None:
    if role not in ROLES:
        raise BadRequest(f"role must be one of {', '.join(ROLES)}")
    if not (1 <= len(username) <= 64) or not all(c.isalnum() or c in "._-@" for c in username):
        raise BadRequest("username: 1-64 letters, digits or . _ - @")
    if len(password) < 8:
        raise BadRequest("password must have at least 8 characters")
    unknown = [s for s in skills if s not in BUSINESS_TYPES]
    if unknown:
        raise BadRequest(
            f"unknown skill(s) {', '.join(unknown)}; known: {', '.join(BUSINESS_TYPES)}"
        )
    if role == "agent" and not skills:
        raise BadRequest("an agent needs at least one skill")


def add_user(
    s: Session,
    *,
    role: str,
    username: str,
    password: str,
    skills: list[str] | None = None,
    display_name: str | None = None,
) -> User:
    skills = skills or []
    validate_new_user(role, username, password, skills)
    if get_user(s, username) is not None:
        raise Conflict(f"user {username!r} already exists")
    user = User(
        username=username,
        display_name=display_name or username,
        role=role,
        skills=",".join(skills),
        password_hash=hash_password(password),
    )
    s.add(user)
    s.flush()
    return user


class LoginThrottle:
    """Limits on password guessing, counted in the counter's shared state (every node sees them).

    - ``limit`` login attempts per username *and address* within ``window_s``: an attempt is
      counted before the password is checked, so concurrent guesses cannot slip past the limit;
      a successful login clears that count. The username is locked out from that address only:
      nobody can lock an agent out from elsewhere.
    - ``address_limit`` failed logins per address within ``window_s``, whatever the username
      (a password spray over many usernames from one address).
    """

    def __init__(
        self,
        state: SharedState,
        *,
        limit: int = 5,
        address_limit: int = 30,
        window_s: float = 300.0,
    ) -> None:
        self.state = state
        self.limit = limit
        self.address_limit = address_limit
        self.window_s = window_s

    @staticmethod
    def _user_key(username: str, address: str) -> str:
        digest = hashlib.sha256(f"{username}\n{address}".encode()).hexdigest()[:32]
        return f"login:user:{digest}"

    @staticmethod
    def _address_key(address: str) -> str:
        return f"login:addr:{hashlib.sha256(address.encode()).hexdigest()[:32]}"

    async def attempt(self, username: str, address: str) -> None:
        """Count one attempt; :class:`TooManyRequests` past a limit."""
        refused = TooManyRequests("too many failed logins: try again in a few minutes")
        if await self.state.count(self._address_key(address)) >= self.address_limit:
            raise refused
        if await self.state.hit(self._user_key(username, address), self.window_s) > self.limit:
            raise refused

    async def failed(self, username: str, address: str) -> None:
        await self.state.hit(self._address_key(address), self.window_s)

    async def succeeded(self, username: str, address: str) -> None:
        await self.state.reset(self._user_key(username, address))

    async def unlock(self, username: str, address: str) -> None:
        """Lift a lock-out: ``username`` may try again from ``address``, whose failures are
        forgotten too (an administrator's decision)."""
        await self.state.reset(self._user_key(username, address))
        await self.state.reset(self._address_key(address))


async def login(db: Database, username: str, password: str, ttl_s: int) -> tuple[str, User]:
    """Check credentials; return a new token and the user. Raises :class:`Unauthorized`.

    The password hash is checked in a worker thread, not on the database's one thread: scrypt
    takes tens of milliseconds and guesses must not hold up everyone's queries."""

    def find(s: Session) -> tuple[int, str] | None:
        user = get_user(s, username)
        if user is None or user.disabled or user.id is None:
            return None
        return user.id, user.password_hash

    found = await db.run(find)
    stored = found[1] if found is not None else _DUMMY_HASH  # the same work for unknown names
    if not await asyncio.to_thread(verify_password, password, stored) or found is None:
        raise Unauthorized("wrong username or password", code="bad_credentials")
    user_id = found[0]

    def issue(s: Session) -> tuple[str, User] | None:
        user = s.get(User, user_id)
        if user is None or user.disabled or user.password_hash != stored:
            return None  # disabled or its password changed meanwhile
        purge_expired_tokens(s)
        token = secrets.token_urlsafe(32)
        s.add(
            AuthToken(
                token_hash=token_hash(token),
                user_id=user_id,
                expires_at=utcnow() + timedelta(seconds=ttl_s),
            )
        )
        return token, user

    result = await db.run(issue)
    if result is None:
        raise Unauthorized("wrong username or password", code="bad_credentials")
    return result


async def user_for_token(db: Database, token: str | None) -> User | None:
    if not token or len(token) > 256:
        return None

    def work(s: Session) -> User | None:
        row = s.get(AuthToken, token_hash(token))
        if row is None or row.expires_at < utcnow():
            return None
        user = s.get(User, row.user_id)
        return None if user is None or user.disabled else user

    return await db.run(work)


async def logout(db: Database, token: str) -> None:
    def work(s: Session) -> None:
        row = s.get(AuthToken, token_hash(token))
        if row is not None:
            s.delete(row)

    await db.run(work)


def purge_expired_tokens(s: Session) -> int:
    """Delete every expired login token (each login does this, so the table holds live ones only)."""
    result = s.exec(delete(AuthToken).where(col(AuthToken.expires_at) < utcnow()))
    return int(result.rowcount or 0)

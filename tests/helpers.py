"""Helpers shared by the tests: test data, waiting for a condition, logins, session timelines.

Fixtures live in ``conftest.py``; browser, recording and child-process helpers
in ``browser.py``, ``recordings.py`` and ``server_process.py``. Test modules
import from these, never from each other.
"""

from __future__ import annotations

import asyncio
import inspect
import io
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import av
import pytest
from sqlmodel import select

from server.db import SessionEvent

REPO = Path(__file__).resolve().parent.parent

#: the password of every user the ``make_counter`` fixture creates
PASSWORD = "correct horse battery"
#: the frame of ``videos/d13.mp4`` used as the customer's ID photo: the same man, but outside
#: the 8 s that cameras and clips made from d13 play
ID_PHOTO_FRAME = 320


def _find_shared_data() -> Path:
    """``$VCOUNTER_TEST_DATA``, else ``../shared/data`` beside the checkout, else the workplace copy."""
    if "VCOUNTER_TEST_DATA" in os.environ:
        return Path(os.environ["VCOUNTER_TEST_DATA"])
    for candidate in (REPO.parent / "shared" / "data", Path("/work/shared/data")):
        if candidate.is_dir():
            return candidate
    return REPO.parent / "shared" / "data"


SHARED_DATA = _find_shared_data()


def shared_data(relative: str) -> Path:
    """A file of the shared test data (photos, videos); the test is skipped without it."""
    path = SHARED_DATA / relative
    if not path.exists():
        pytest.skip(
            f"test data {path} not found (set VCOUNTER_TEST_DATA to the shared data folder)"
        )
    return path


def frame_jpeg(video: Path, index: int) -> bytes:
    """Frame ``index`` of ``video`` as a JPEG, as a customer would photograph it."""
    with av.open(str(video)) as container:
        for i, frame in enumerate(container.decode(video=0)):
            if i == index:
                out = io.BytesIO()
                frame.to_image().save(out, format="JPEG", quality=92)
                return out.getvalue()
    raise AssertionError(f"{video} has no frame {index}")


# -- waiting for a condition -------------------------------------------------------------


def _describe(predicate: Callable[[], object]) -> str:
    name = getattr(predicate, "__qualname__", repr(predicate))
    if name.endswith("<lambda>"):
        try:
            return " ".join(inspect.getsource(predicate).split())
        except (OSError, TypeError):
            pass
    return name


async def eventually(
    predicate: Callable[[], object],
    timeout: float = 10.0,
    interval: float = 0.05,
    *,
    message: str | Callable[[], str | Awaitable[str]] | None = None,
) -> Any:
    """Wait until ``predicate()`` is truthy and return that value.

    ``predicate`` is called every ``interval`` seconds; if it returns an
    awaitable (an ``async def`` function, a lambda returning a coroutine), that
    is awaited. An exception it raises fails at once: only a falsy result is
    retried. After ``timeout`` seconds: ``AssertionError`` naming the predicate
    and its last result, followed by ``message`` (a string, or a function giving
    one, called only then: e.g. the session's timeline).
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = predicate()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if loop.time() >= deadline:
            break
        await asyncio.sleep(interval)
    detail = message() if callable(message) else message
    if inspect.isawaitable(detail):
        detail = await detail
    text = f"not true within {timeout:g} s: {_describe(predicate)} (last result: {value!r})"
    raise AssertionError(f"{text}; {detail}" if detail else text)


# -- the server's HTTP API ----------------------------------------------------------------


async def login(counter: Any, username: str, password: str = PASSWORD) -> str:
    """A bearer token for ``username`` from ``POST /api/login``."""
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            f"{counter.url}/api/login", json={"username": username, "password": password}
        ) as r,
    ):
        assert r.status == 200, f"login as {username}: {r.status} {await r.text()}"
        return (await r.json())["token"]


async def audited_session(counter: Any, session_id: str) -> dict[str, Any]:
    """``GET /api/audit/sessions/<id>`` as the auditor: the session, its events, recordings, flow."""
    token = await login(counter, "auditor")
    async with (
        aiohttp.ClientSession() as http,
        http.get(
            f"{counter.url}/api/audit/sessions/{session_id}",
            headers={"Authorization": f"Bearer {token}"},
        ) as r,
    ):
        assert r.status == 200, await r.text()
        return await r.json()


# -- a session's timeline in the database ----------------------------------------------------


@dataclass(frozen=True)
class Event:
    """One row of a session's timeline (``SessionEvent``)."""

    kind: str
    data: dict[str, Any]
    offset_ms: int


async def session_events(counter: Any, session_id: str) -> list[Event]:
    """The session's timeline, oldest first."""

    def work(s: Any) -> list[Event]:
        rows = s.exec(
            select(SessionEvent)
            .where(SessionEvent.session_id == session_id)
            .order_by(SessionEvent.id)
        ).all()
        return [Event(r.kind, r.payload, r.offset_ms) for r in rows]

    return await counter.db.run(work)


async def wait_event(
    counter: Any, session_id: str, kinds: set[str], timeout: float = 30.0
) -> Event:
    """The first event of the session whose kind is one of ``kinds``, once there is one."""

    async def first() -> Event | None:
        return next((e for e in await session_events(counter, session_id) if e.kind in kinds), None)

    async def timeline() -> str:
        return f"no {sorted(kinds)} event; timeline: {[e.kind for e in await session_events(counter, session_id)]}"

    return await eventually(first, timeout=timeout, interval=0.2, message=timeline)


class FastTime:
    """``time`` for the recorder, its monotonic clock ``factor`` times fast: a long outage in a
    short test (wall-clock time is left as it is)."""

    def __init__(self, factor: float) -> None:
        self.factor = factor
        self._start = time.monotonic()

    def time(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return self._start + (time.monotonic() - self._start) * self.factor


async def upload_reference(
    counter: Any, session_id: str, token: str | None, body: bytes, **headers: str
) -> tuple[int, dict[str, Any]]:
    """POST an ID photo as the customer's page does, with the session's rejoin token (None:
    without one); ``headers`` add to or replace the JPEG content type."""
    headers = {"Content-Type": "image/jpeg", **headers}
    if token is not None:
        headers["X-Session-Token"] = token
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            f"{counter.url}/api/identity/{session_id}/reference", data=body, headers=headers
        ) as r,
    ):
        return r.status, await r.json()

"""Shared fixtures: a real server on a real SQLite file, headless participants, codec spies."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from pathlib import Path

import pytest
from aiohttp.test_utils import TestServer
from sqlmodel import select

from server import auth
from server.app import create_app
from server.appkeys import BROKER, DB, HUB
from server.config import Config
from server.db import Database
from server.migrations import create_all
from signaling.contrib.encoded_source import EncodedClip, encode_audio, encode_video
from signaling.contrib.fake_media import make_y4m
from signaling.contrib.headless import HeadlessParticipant

from .helpers import ID_PHOTO_FRAME, PASSWORD, frame_jpeg, shared_data

pytest_plugins = ["tests.services", "tests.redis_server", "tests.s3_server"]

AGENTS = {
    # username: skills
    "alice": ["account_opening", "loan_signing", "wealth_product"],
    "bob": ["account_opening"],
    "carol": ["loan_signing"],
}


_clips: dict[str, EncodedClip] = {}


@pytest.fixture(scope="session")
def video_clip() -> EncodedClip:
    if "video" not in _clips:
        _clips["video"] = encode_video(seconds=2.0)
    return _clips["video"]


@pytest.fixture(scope="session")
def audio_clip() -> EncodedClip:
    if "audio" not in _clips:
        _clips["audio"] = encode_audio(seconds=2.0)
    return _clips["audio"]


@pytest.fixture(scope="session")
def face_clip() -> EncodedClip:
    """8 s of d13 (one man talking, blinking) at 640x480, as a customer's camera sends it."""
    return encode_video(make_y4m(shared_data("videos/d13.mp4"), seconds=8.0), seconds=8.0)


@pytest.fixture(scope="session")
def same_person_photo() -> bytes:
    """An ID photo of the man in :func:`face_clip`, from a frame the clip does not play."""
    return frame_jpeg(shared_data("videos/d13.mp4"), ID_PHOTO_FRAME)


class Counter:
    """A running server for one test, with helpers to make participants."""

    def __init__(self, server: TestServer, video: EncodedClip, audio: EncodedClip) -> None:
        self.server = server
        self.app = server.app
        self.url = str(server.make_url("")).rstrip("/")
        self.video = video
        self.audio = audio
        self._participants: list[HeadlessParticipant] = []

    @property
    def broker(self):
        return self.app[BROKER]

    @property
    def hub(self):
        return self.app[HUB]

    @property
    def db(self) -> Database:
        return self.app[DB]

    def participant(self, name: str = "p", *, media: bool = True, **kwargs) -> HeadlessParticipant:
        kwargs.setdefault("video", self.video if media else None)
        kwargs.setdefault("audio", self.audio if media else None)
        p = HeadlessParticipant(self.url, name=name, **kwargs)
        self._participants.append(p)
        return p

    async def customer(
        self, business: str = "account_opening", name: str = "Customer", **kw
    ) -> HeadlessParticipant:
        c = self.participant(f"customer-{name}", **kw)
        await c.join(business, name)
        return c

    async def agent(
        self, username: str = "alice", *, ready: bool = True, **kw
    ) -> HeadlessParticipant:
        a = self.participant(f"agent-{username}", **kw)
        await a.login(username, PASSWORD)
        if ready:
            await a.set_ready()
        return a

    async def aclose(self) -> None:
        for p in self._participants:
            await p.aclose()


@pytest.fixture
def config_factory(tmp_path: Path) -> Callable[..., Config]:
    def make(**changes) -> Config:
        base = Config(
            data_dir=tmp_path / "data",
            tls=False,
            host="127.0.0.1",
            port=0,
            rejoin_window_s=30.0,
            offer_timeout_s=20.0,
            node_id="test-node",
            master_key_file=tmp_path / "keys" / "master.key",
            signing_key_file=tmp_path / "keys" / "signing.pem",
            # face checks decode video and start worker processes: only where tested
            identity=False,
        )
        return replace(base, **changes)

    return make


@pytest.fixture
def backend(request: pytest.FixtureRequest) -> dict[str, object]:
    """What the counters of a test share: nothing but a SQLite file (``local``, the default), or a
    throwaway PostgreSQL database and Redis (``shared``, as several nodes do). A test runs on both
    with ``@pytest.mark.parametrize("backend", ["local", "shared"], indirect=True)``."""
    kind = getattr(request, "param", "local")
    if kind == "local":
        return {}
    assert kind == "shared", kind
    return {
        "database_url": request.getfixturevalue("postgres_url"),
        "redis_url": request.getfixturevalue("redis_url"),
        "redis_prefix": f"t{secrets.token_hex(4)}:",
    }


@pytest.fixture
async def make_counter(config_factory, backend) -> AsyncIterator[Callable[..., object]]:
    counters: list[Counter] = []

    async def make(
        video: EncodedClip | None = None, audio: EncodedClip | None = None, **changes
    ) -> Counter:
        config = config_factory(**{**backend, **changes})
        config.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)  # as the server makes it
        db = Database(config.db_url)
        create_all(db)
        with db.session() as s:
            for username, skills in AGENTS.items():
                if not s.exec(select(auth.User).where(auth.User.username == username)).first():
                    auth.add_user(
                        s,
                        role="agent",
                        username=username,
                        password=PASSWORD,
                        skills=skills,
                        display_name=username.title(),
                    )
            for role in ("auditor", "admin", "integration"):
                if not s.exec(select(auth.User).where(auth.User.username == role)).first():
                    auth.add_user(s, role=role, username=role, password=PASSWORD)
            s.commit()
        db.close()
        server = TestServer(create_app(config), host="127.0.0.1")
        await server.start_server()
        counter = Counter(
            server,
            video or _clips.get("video") or encode_video(seconds=2.0),
            audio or _clips.get("audio") or encode_audio(seconds=2.0),
        )
        counters.append(counter)
        return counter

    yield make
    for counter in counters:
        await counter.aclose()
        await counter.server.close()


@pytest.fixture
async def counter(make_counter, video_clip, audio_clip) -> Counter:
    return await make_counter(video_clip, audio_clip)


class CodecSpy:
    """Counts real encoder/decoder invocations in this process (aiortc's VP8 and Opus codecs)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        from aiortc.codecs import opus, vpx

        self.calls = {"encode": 0, "decode": 0}
        for cls, method, key in (
            (vpx.Vp8Encoder, "encode", "encode"),
            (opus.OpusEncoder, "encode", "encode"),
            (vpx.Vp8Decoder, "decode", "decode"),
            (opus.OpusDecoder, "decode", "decode"),
        ):
            original = getattr(cls, method)

            def spy(self_, *args, __original=original, __key=key, **kwargs):
                self.calls[__key] += 1
                return __original(self_, *args, **kwargs)

            monkeypatch.setattr(cls, method, spy)


@pytest.fixture
def codec_spy(monkeypatch: pytest.MonkeyPatch) -> CodecSpy:
    return CodecSpy(monkeypatch)

"""A headless customer or agent that speaks the vcounter protocol.

Tests and benchmarks use it in place of a browser::

    async with HeadlessParticipant(url, video=clip, audio=tone) as customer:
        await customer.join("account_opening", "Ms Chen")
        await customer.wait_for("call_started")    # media negotiates itself
        await customer.wait_media(frames=30)

It sends pre-encoded media (:mod:`signaling.contrib.encoded_source`) so that dozens of
participants fit on one machine, and counts what it receives through the same
encoded tap the server uses (decoding only when :meth:`decoded_video` is asked).

By default media goes through aiortc's own sender and receiver, as any aiortc
peer would. ``lean=True`` does at the client what the hub does at the server
(:mod:`signaling.rtp_forward`): the clips are sent as ready-made RTP packets
from one pacer per event loop (:class:`~signaling.contrib.encoded_source.ClipSender`),
and received packets are taken off the socket in its datagram callback by a
:class:`CountingLane`: decrypted and reassembled into frames only while a
consumer wants frames, otherwise counted from their clear-text RTP headers.
It costs a fraction of the CPU, so that a benchmark can drive 40 calls from
the same 2-core machine as the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import ssl as ssl_module
import time
from collections.abc import Callable
from typing import Any

import aiohttp
from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection, RTCSessionDescription

from ..passthrough import (
    count_received,
    mark_source_active,
    on_keyframe_request,
    request_keyframe,
    tap_receiver,
)
from ..rtp_forward import HoldingTrack, Ingress, Lane, Source
from ..track_tap import DecodedSubscription, TrackTap
from .encoded_source import ClipSender, EncodedClip, EncodedLoopTrack

logger = logging.getLogger(__name__)

#: seconds at least between two media restarts (``media_restart`` or our own failed connection)
RESTART_MIN_INTERVAL_S = 3.0


class CountingLane(Lane):
    """A lean participant's receiving lane.

    While a consumer wants frames (:meth:`HeadlessParticipant.decoded_video`, a
    tap sink) it is the hub's lane: packets are decrypted and frames
    reassembled. Otherwise media packets are only counted from their RTP
    header, which SRTP leaves in clear text: sequence numbers for the receiver
    reports, marker bits for frames, timestamps for ``observe(timestamp,
    clock_rate, arrival)`` (called once per frame; benchmarks measure delay
    with it). Nothing is authenticated or decrypted on that path, and video
    keyframes are not told apart: a load generator's shortcut, never the hub's.
    """

    def __init__(self, tap: TrackTap) -> None:
        super().__init__(tap)
        self.observe: Callable[[int, int, float], None] | None = None

    def take(self, source: Source, srtp: bytes) -> bool:
        tap = self.tap
        if tap.wants_frames or source.rtx or self.outbound is not None:
            return super().take(source, srtp)
        now = asyncio.get_running_loop().time()
        second = srtp[1]
        timestamp = int.from_bytes(srtp[4:8], "big")
        count_received(
            source.receiver, source.ssrc, source.clock_rate, (srtp[2] << 8) | srtp[3], timestamp
        )
        if now - source.active_at > 1.0:
            source.active_at = now
            mark_source_active(source.receiver, source.ssrc)
        marker = second >> 7
        tap.note_packet(now, len(srtp) - 12, marker, False)
        self.packets_in += 1
        if (marker or self.kind == "audio") and self.observe is not None:
            self.observe(timestamp, source.clock_rate, now)
        return True


class ProtocolError(Exception):
    """The server sent an ``error`` the caller did not expect, or closed the socket."""


class HeadlessParticipant:
    def __init__(
        self,
        base_url: str,
        *,
        video: EncodedClip | None = None,
        audio: EncodedClip | None = None,
        #: negotiate media by itself: on call_started, on media_restart, when its connection fails
        auto_media: bool = True,
        ssl: ssl_module.SSLContext | bool | None = None,
        name: str = "participant",
        #: media at packet level, as the hub does it (see the module docstring): for benchmarks
        lean: bool = False,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.video_clip = video
        self.audio_clip = audio
        self.auto_media = auto_media
        self.lean = lean
        self.name = name
        #: aiohttp: True verifies certificates, False does not, a context is used as given
        self._ssl: ssl_module.SSLContext | bool = True if ssl is None else ssl
        self._http: aiohttp.ClientSession | None = None
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self.role: str | None = None
        self.messages: list[dict[str, Any]] = []
        self._new_message = asyncio.Event()
        self._reader: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        #: held while a peer connection is made and offered, or closed (see :meth:`stop_media`)
        self._media_lock = asyncio.Lock()
        #: aclose() has begun: no new peer connection
        self._closing = False
        self.pc: RTCPeerConnection | None = None
        self.taps: dict[str, TrackTap] = {"audio": TrackTap("audio"), "video": TrackTap("video")}
        self.tracks: dict[str, EncodedLoopTrack | ClipSender] = {}
        #: lean mode: received packets taken off the socket, one lane per kind
        self._ingress: Ingress | None = None
        self.lanes: dict[str, CountingLane] = {}
        #: lean mode: ``observe(timestamp, clock_rate, arrival)`` per received frame, by kind
        #: (only while no consumer wants frames: see :class:`CountingLane`)
        self.frame_observers: dict[str, Callable[[int, int, float], None]] = {}
        self.session_id: str | None = None
        self.rejoin_token: str | None = None
        self.token: str | None = None
        #: seconds from call_started to the first received video frame, per call
        self.setup_times: list[float] = []
        self.closed_code: int | None = None
        self._offers_seen: set[int] = set()
        #: ICE servers of the current call (None: not in a call)
        self._ice_servers: list[dict[str, Any]] | None = None
        #: why each media restart of this participant happened: "media_restart" or "failed"
        self.media_restarts: list[str] = []
        self._last_restart = float("-inf")

    # -- lifecycle -----------------------------------------------------------------

    async def __aenter__(self) -> HeadlessParticipant:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def _session(self) -> aiohttp.ClientSession:
        if self._http is None:
            self._http = aiohttp.ClientSession()
        return self._http

    async def _open(self, path: str) -> None:
        ws_url = self.base_url.replace("http", "ws", 1) + path
        self.ws = await self._session().ws_connect(
            ws_url, ssl=self._ssl, heartbeat=None, max_msg_size=0
        )
        self._reader = asyncio.get_running_loop().create_task(
            self._read(self.ws), name=f"read-{self.name}"
        )

    async def _read(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        async for msg in ws:
            if msg.type == aiohttp.WSMsgType.TEXT:
                data = json.loads(msg.data)
                self.messages.append(data)
                self._new_message.set()
                await self._handle(data)
        self.closed_code = ws.close_code
        self._new_message.set()

    async def _handle(self, data: dict[str, Any]) -> None:
        kind = data.get("type")
        if kind == "joined":
            self.session_id = data["session_id"]
            self.rejoin_token = data["rejoin_token"]
        elif kind == "call_started":
            self.session_id = data["session_id"]
            self._ice_servers = data.get("ice_servers", [])
            if self.auto_media:
                self._spawn(self.start_media(self._ice_servers))
        elif kind == "answer" and self.pc is not None:
            if self.pc.signalingState != "have-local-offer":
                logger.info("%s: answer ignored (no offer pending)", self.name)
                return
            try:
                await self.pc.setRemoteDescription(
                    RTCSessionDescription(sdp=data["sdp"], type="answer")
                )
            except Exception as exc:  # an answer to an offer a restart replaced
                logger.info("%s: answer not applied: %r", self.name, exc)
        elif kind == "media_restart":
            self.restart_media("media_restart")
        elif kind in ("call_ended", "requeued"):
            self._ice_servers = None
            self._spawn(self.stop_media())

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def aclose(self) -> None:
        """Close the media and the socket; idempotent.

        A negotiation under way finishes before the media is closed (see
        :meth:`stop_media`), and none starts after.
        """
        self._closing = True
        await self.stop_media()
        if self.ws is not None and not self.ws.closed:
            await self.ws.close()
        if self._reader is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(self._reader, 2)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for tap in self.taps.values():
            await tap.aclose()
        if self._http is not None:
            await self._http.close()
            self._http = None

    async def drop(self) -> None:
        """Simulate a dropped network: the socket and media go away without a hangup."""
        await self.stop_media()
        if self.ws is not None:
            await self.ws.close()
        if self._reader is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._reader, 2)

    # -- messages ------------------------------------------------------------------

    async def send(self, message: dict[str, Any]) -> None:
        assert self.ws is not None, "not connected"
        await self.ws.send_str(json.dumps(message))

    async def send_raw(self, text: str) -> None:
        assert self.ws is not None, "not connected"
        await self.ws.send_str(text)

    async def wait_for(
        self,
        kind: str,
        timeout: float = 10.0,
        *,
        since: int = 0,
        allow_errors: bool = False,
        where: Any = None,
        **match: Any,
    ) -> dict[str, Any]:
        """The first message of ``type`` kind (from index ``since``) matching ``match`` and ``where``."""
        deadline = time.monotonic() + timeout
        while True:
            for data in self.messages[since:]:
                if (
                    data.get("type") == kind
                    and all(data.get(k) == v for k, v in match.items())
                    and (where is None or where(data))
                ):
                    return data
                if data.get("type") == "error" and kind != "error" and not allow_errors:
                    raise ProtocolError(
                        f"{self.name}: server error {data.get('code')}: {data.get('message')}"
                    )
            if (
                self.ws is None
                or self.ws.closed
                and self._reader is not None
                and self._reader.done()
            ):
                raise ProtocolError(
                    f"{self.name}: socket closed ({self.closed_code}) waiting for {kind}"
                )
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(
                    f"{self.name}: no {kind!r} within {timeout}s; got "
                    f"{[d.get('type') for d in self.messages[-8:]]}"
                )
            self._new_message.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._new_message.wait(), remaining)

    def count(self, kind: str) -> int:
        return sum(1 for d in self.messages if d.get("type") == kind)

    # -- roles ---------------------------------------------------------------------

    async def join(
        self,
        business: str,
        display_name: str = "Headless customer",
        *,
        face_consent: bool = False,
        appointment: str | None = None,
    ) -> dict[str, Any]:
        """Join the queue (with the token of an appointment the bank booked, if any)."""
        self.role = "customer"
        await self._open("/ws/customer")
        message = {
            "type": "join",
            "business": business,
            "display_name": display_name,
            "recording_consent": True,
            "face_consent": face_consent,
        }
        if appointment is not None:
            message["appointment"] = appointment
        await self.send(message)
        return await self.wait_for("joined")

    async def rejoin(
        self, session_id: str | None = None, token: str | None = None
    ) -> dict[str, Any]:
        self.role = "customer"
        since = len(self.messages)
        await self._open("/ws/customer")
        await self.send(
            {
                "type": "rejoin",
                "session_id": session_id or self.session_id,
                "rejoin_token": token or self.rejoin_token,
            }
        )
        return await self.wait_for("rejoined", since=since)

    async def login(self, username: str, password: str) -> dict[str, Any]:
        self.role = "agent"
        async with self._session().post(
            f"{self.base_url}/api/login",
            ssl=self._ssl,
            json={"username": username, "password": password},
        ) as resp:
            body = await resp.json()
            if resp.status != 200:
                raise ProtocolError(f"login failed: {resp.status} {body}")
        self.token = body["token"]
        # authenticate by message, not by cookie, to exercise the path headless clients use
        self._session().cookie_jar.clear()
        await self._open("/ws/agent")
        await self.send({"type": "auth", "token": self.token})
        return await self.wait_for("authenticated")

    async def set_ready(self, ready: bool = True) -> None:
        since = len(self.messages)
        await self.send({"type": "set_status", "status": "ready" if ready else "away"})
        await self.wait_for("status", since=since, status="ready" if ready else "away")

    async def next_offer(self, timeout: float = 10.0) -> dict[str, Any]:
        """The next ``customer_offer`` not returned before."""
        offer = await self.wait_for(
            "customer_offer", timeout, where=lambda d: id(d) not in self._offers_seen
        )
        self._offers_seen.add(id(offer))
        return offer

    async def accept_next(self, timeout: float = 10.0) -> dict[str, Any]:
        offer = await self.next_offer(timeout)
        await self.send({"type": "accept", "session_id": offer["session_id"]})
        return offer

    async def hangup(self) -> None:
        await self.send({"type": "hangup"})

    # -- media ---------------------------------------------------------------------

    async def start_media(
        self, ice_servers: list[dict[str, Any]] | None = None, *, measure_setup: bool = True
    ) -> None:
        """Create a peer connection, send our media, offer it to the server."""
        async with self._media_lock:
            if self._closing:
                return
            await self._close_media()
            await self._offer(ice_servers, measure_setup)

    async def _offer(self, ice_servers: list[dict[str, Any]] | None, measure_setup: bool) -> None:
        config = RTCConfiguration(iceServers=[RTCIceServer(**s) for s in ice_servers or []])
        pc = RTCPeerConnection(config)
        self.pc = pc
        started = time.monotonic()

        @pc.on("connectionstatechange")
        def on_state() -> None:
            if pc.connectionState == "failed" and self.pc is pc:
                self.restart_media("failed")

        @pc.on("track")
        def on_track(track: Any) -> None:
            receiver = next(t.receiver for t in pc.getTransceivers() if t.receiver.track is track)
            tap = self.taps[track.kind]
            tap.attach(functools.partial(request_keyframe, receiver))
            if self.lean:
                dtls = receiver.transport
                if self._ingress is None or self._ingress.dtls is not dtls:
                    self._ingress = Ingress(dtls)
                lane = self.lanes[track.kind] = CountingLane(tap)
                lane.observe = self.frame_observers.get(track.kind)
                lane.attach_receiver(receiver, dtls)
                self._ingress.add(receiver, lane)
            else:
                tap_receiver(receiver, tap.push)
            if track.kind == "video" and measure_setup:
                self._spawn(self._measure_setup(started, tap))

        for kind, clip in (("audio", self.audio_clip), ("video", self.video_clip)):
            if clip is not None and self.lean:
                holding = HoldingTrack(kind)
                sender = pc.addTrack(holding)
                player = self.tracks[kind] = ClipSender(clip, sender, holding)
                if kind == "video":
                    on_keyframe_request(sender, player.request_keyframe)
            elif clip is not None:
                track = EncodedLoopTrack(clip)
                self.tracks[kind] = track
                sender = pc.addTrack(track)
                if kind == "video":
                    on_keyframe_request(sender, track.request_keyframe)
            else:
                pc.addTransceiver(kind, direction="recvonly")
        await pc.setLocalDescription(await pc.createOffer())
        await self.send({"type": "offer", "sdp": pc.localDescription.sdp})

    def restart_media(self, reason: str) -> bool:
        """A new peer connection and offer during a call (the server asked, or ours failed).

        At most one per ``RESTART_MIN_INTERVAL_S``; returns whether one was started.
        Each is recorded in :attr:`media_restarts`.
        """
        now = time.monotonic()
        if (
            not self.auto_media
            or self._ice_servers is None
            or now - self._last_restart < RESTART_MIN_INTERVAL_S
        ):
            return False
        self._last_restart = now
        self.media_restarts.append(reason)
        logger.info("%s: restarting media (%s)", self.name, reason)
        self._spawn(self.start_media(self._ice_servers, measure_setup=False))
        return True

    async def _measure_setup(self, started: float, tap: TrackTap) -> None:
        before = tap.frames_in
        while tap.frames_in == before:
            await asyncio.sleep(0.01)
        self.setup_times.append(time.monotonic() - started)

    async def stop_media(self) -> None:
        """Close our peer connection and tracks, once a negotiation under way has finished.

        Closing a peer connection while its ICE candidates are gathered leaves
        the sockets aioice opens afterwards open (and cancelling the gathering
        leaks those it opened): the negotiation is short, so it is waited for.
        """
        async with self._media_lock:
            await self._close_media()

    async def _close_media(self) -> None:
        pc, self.pc = self.pc, None
        for track in self.tracks.values():
            track.stop()
        self.tracks = {}
        if self._ingress is not None:
            self._ingress.close()
            self._ingress = None
        self.lanes = {}
        if pc is not None:
            await pc.close()

    async def wait_media(
        self, frames: int = 30, timeout: float = 15.0, kinds: tuple[str, ...] = ("audio", "video")
    ) -> None:
        """Wait until ``frames`` more frames of each kind have arrived."""
        targets = {k: self.taps[k].frames_in + frames for k in kinds}
        deadline = time.monotonic() + timeout
        while any(self.taps[k].frames_in < n for k, n in targets.items()):
            if time.monotonic() > deadline:
                got = {k: self.taps[k].frames_in for k in kinds}
                raise TimeoutError(f"{self.name}: media stalled: {got}, wanted {targets}")
            await asyncio.sleep(0.05)

    def request_keyframe(self) -> None:
        """Send an RTCP PLI for the video we receive, as a browser does after loss."""
        self.taps["video"].request_keyframe()

    def decoded_video(self, backlog: int = 4) -> DecodedSubscription:
        """Subscribe to decoded video (decodes only while the subscription is open)."""
        return self.taps["video"].subscribe_decoded(backlog)

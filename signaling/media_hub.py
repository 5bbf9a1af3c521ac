"""The media hub: one RTCPeerConnection per participant, media forwarded SFU style.

For each call the hub keeps a :class:`CallMedia` with one
:class:`~signaling.track_tap.TrackTap` per (participant, kind). A
participant's incoming audio and video feed its taps as encoded frames; the
other participant's peer connection sends them back out packet by packet
(:mod:`signaling.rtp_forward`), without reassembling, decoding or encoding.
Keyframe requests from a receiving browser reach the sending browser as PLI.

Other consumers use the taps: ``hub.call(call_id).tap("customer", "video")``,
then ``.add_sink()`` for encoded frames (the recorder) or
``.subscribe_decoded()`` for decoded ones (identity checks).

``media_mode="transcode"`` relays decoded frames and re-encodes them (what the
aiortc examples do with ``MediaRelay``). It exists to measure what passthrough
saves (``bench/calls.py``); taps carry no frames in that mode.

The remote ICE candidates of an offer name the addresses the hub sends
connectivity checks to: a client could name any. :class:`CandidatePolicy`
keeps what a browser can legitimately offer (UDP, an IP address, a public
unicast one or one of the configured networks, a port from 1024) and at most
``max_candidates`` of them; the rest are taken out of the SDP before aiortc
and aioice see it (:func:`filter_candidates`), so they are never probed. A
peer whose candidates are all dropped is still reached: the hub answers the
checks it sends (a peer-reflexive candidate is where its packets come from).
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Literal, TypeGuard

from aiortc import (
    MediaStreamTrack,
    RTCConfiguration,
    RTCIceServer,
    RTCPeerConnection,
    RTCRtpReceiver,
    RTCRtpSender,
    RTCSessionDescription,
)
from aiortc.contrib.media import MediaRelay
from aiortc.mediastreams import MediaStreamError
from av.frame import Frame
from av.packet import Packet

from .exceptions import BadSdp, MediaError
from .passthrough import check_compatible, on_keyframe_request, request_keyframe, tap_receiver
from .rtp_forward import HoldingTrack, Ingress, Lane, Outbound
from .track_tap import TrackTap

logger = logging.getLogger(__name__)

Role = Literal["customer", "agent"]
MediaMode = Literal["passthrough", "transcode"]
KINDS = ("audio", "video")
#: codecs the hub answers with: the same on every leg, so packets fit every receiver
FORWARDED_MIME_TYPES = {"audio": ("audio/opus",), "video": ("video/vp8", "video/rtx")}

StateCallback = Callable[[str, str, str], Awaitable[None] | None]


def other(role: str) -> Role:
    return "agent" if role == "customer" else "customer"


def is_role(role: str) -> TypeGuard[Role]:
    return role in ("customer", "agent")


@dataclass(frozen=True)
class IceServerConfig:
    urls: list[str]
    username: str | None = None
    credential: str | None = field(default=None, repr=False)


Network = ipaddress.IPv4Network | ipaddress.IPv6Network
#: the lowest port a remote candidate may name (browsers and TURN relays use ephemeral ports;
#: below are the services a reflector would aim at: DNS, NTP, SNMP...)
MIN_CANDIDATE_PORT = 1024


@dataclass(frozen=True)
class CandidatePolicy:
    """Which remote ICE candidates of an offer the hub may send connectivity checks to."""

    #: networks allowed besides public unicast addresses (a counter serving its own LAN lists it)
    networks: tuple[Network, ...] = ()
    #: candidates of one offer checked at most; those after are dropped
    max_candidates: int = 16

    def allows(self, address: str) -> bool:
        """Whether ``address`` (an IP literal) may be probed."""
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:  # a host name (mDNS ``.local``, DNS): the hub resolves none for a client
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        if any(ip in network for network in self.networks):
            return True
        return ip.is_global and not (
            ip.is_multicast
            or ip.is_unspecified
            or ip.is_loopback
            or ip.is_link_local
            or ip.is_private
            or ip.is_reserved
        )


def _candidate_target(line: str) -> tuple[str, str, int] | None:
    """``(component, address, port)`` of an ``a=candidate:`` line that names a UDP target, else None.

    ``a=candidate:<foundation> <component> <transport> <priority> <address> <port> typ <type> ...``
    """
    parts = line[len("a=candidate:") :].split()
    if len(parts) < 8 or parts[6] != "typ" or parts[2].lower() != "udp":
        return None  # malformed, or TCP (the hub checks UDP candidates only)
    try:
        port = int(parts[5])
    except ValueError:
        return None
    if not MIN_CANDIDATE_PORT <= port <= 65535:
        return None
    return parts[1], parts[4], port


def filter_candidates(sdp: str, policy: CandidatePolicy) -> tuple[str, list[str]]:
    """``sdp`` with only the remote candidates ``policy`` allows (at most its ``max_candidates``,
    in the offer's order), and the addresses dropped (for the log).

    A media section left with no candidate loses its ``a=end-of-candidates`` too: the hub then
    waits for the peer's own checks (peer-reflexive candidates) instead of failing at once.
    """
    newline = "\r\n" if "\r\n" in sdp else "\n"
    sections: list[list[str]] = [[]]
    for line in sdp.split(newline):
        if line.startswith("m="):
            sections.append([])
        sections[-1].append(line)
    kept_total = 0
    seen: set[tuple[str, str, int]] = set()
    dropped: list[str] = []
    out: list[str] = []
    for section in sections:
        kept_here = 0
        candidates = False
        lines: list[str] = []
        for line in section:
            if not line.startswith("a=candidate:"):
                lines.append(line)
                continue
            candidates = True
            target = _candidate_target(line)
            if target is not None and target in seen:
                lines.append(line)  # the same target again (another m-section): nothing new probed
                kept_here += 1
                continue
            if (
                target is None
                or not policy.allows(target[1])
                or kept_total >= policy.max_candidates
            ):
                parts = line.split()
                dropped.append(f"{parts[4]}:{parts[5]}" if len(parts) > 5 else "?")
                continue
            seen.add(target)
            kept_total += 1
            kept_here += 1
            lines.append(line)
        if candidates and not kept_here:
            lines = [line for line in lines if line != "a=end-of-candidates"]
        out.extend(lines)
    return newline.join(out), dropped


class _TranscodeSource(MediaStreamTrack):
    """Transcode mode: relays the other participant's decoded track once it exists."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind
        self._source: asyncio.Future[MediaStreamTrack] = asyncio.get_running_loop().create_future()

    def set_source(self, track: MediaStreamTrack) -> None:
        if self._source.done():
            self._source = asyncio.get_running_loop().create_future()
        self._source.set_result(track)

    async def recv(self) -> Frame | Packet:
        while True:
            source = await self._source
            try:
                return await source.recv()
            except MediaStreamError:
                if self.readyState != "live":
                    raise
                # the source participant is reconnecting: wait for the next one
                if self._source.done() and self._source.result() is source:
                    self._source = asyncio.get_running_loop().create_future()


class ParticipantMedia:
    """One participant's peer connection with the hub."""

    def __init__(self, role: Role, pc: RTCPeerConnection) -> None:
        self.role = role
        self.pc = pc
        self.holding_tracks: list[HoldingTrack] = []
        self.outbounds: list[Outbound] = []
        self.ingresses: dict[object, Ingress] = {}
        self.transcode_sources: dict[str, _TranscodeSource] = {}
        #: loop time the connection last became "connected" (None: not yet)
        self.connected_at: float | None = None
        #: loop time the connection closed or failed without the hub closing it (the far side
        #: closed it, or ICE consent expired: aiortc then reports "closed", not "failed")
        self.ended_at: float | None = None
        #: the participant offered to send audio or video (a receive-only one sends nothing)
        self.sends_media = False

    async def aclose(self) -> None:
        for outbound in self.outbounds:
            outbound.close()
            lane = outbound.lane
            if isinstance(lane, Lane) and lane.outbound is outbound:
                lane.outbound = None
        for ingress in self.ingresses.values():
            ingress.close()
        for track in self.holding_tracks:
            track.stop()
        await self.pc.close()


class CallMedia:
    """The media of one call: taps and peer connections of both participants."""

    def __init__(self, call_id: str, mode: MediaMode) -> None:
        self.call_id = call_id
        self.mode = mode
        self.taps: dict[tuple[str, str], TrackTap] = {
            (role, kind): TrackTap(kind, name=f"{call_id[:8]}/{role}/{kind}")
            for role in ("customer", "agent")
            for kind in KINDS
        }
        #: passthrough: where each participant's packets go (see signaling/rtp_forward.py)
        self.lanes: dict[tuple[str, str], Lane] = {key: Lane(tap) for key, tap in self.taps.items()}
        self.participants: dict[str, ParticipantMedia] = {}
        self._relay = MediaRelay() if mode == "transcode" else None
        self._remote_tracks: dict[tuple[str, str], MediaStreamTrack] = {}
        self._closed = False

    def tap(self, role: str, kind: str) -> TrackTap:
        """The tap carrying ``role``'s ``kind`` media, for the recorder and identity checks."""
        return self.taps[(role, kind)]

    @property
    def closed(self) -> bool:
        return self._closed

    def last_frame_at(self, role: str) -> float | None:
        """Loop time of the newest audio or video frame from ``role`` (None: none yet)."""
        times = [
            tap.last_frame_at
            for (r, _), tap in self.taps.items()
            if r == role and tap.last_frame_at is not None
        ]
        return max(times, default=None)

    def silence(self, role: str, now: float) -> float | None:
        """Seconds ``role``'s current connection has carried no media.

        Counted from its newest frame (or from when it connected). Where frames
        are not counted (a receive-only participant, transcode mode), counted
        from when the connection ended without the hub closing it. None when
        there is nothing to count: no connection, or not connected yet.
        """
        participant = self.participants.get(role)
        if participant is None:
            return None
        if (
            self.mode == "passthrough"
            and participant.sends_media
            and participant.connected_at is not None
        ):
            return now - max(participant.connected_at, self.last_frame_at(role) or 0.0)
        if participant.ended_at is not None:
            return now - participant.ended_at
        return None

    def media_back(self, role: str, since: float) -> bool:
        """Media from ``role`` arrived after ``since`` (loop time).

        Where frames are not counted (see :meth:`silence`), a connection that
        became "connected" after ``since`` counts as media back.
        """
        participant = self.participants.get(role)
        if participant is None:
            return False
        if self.mode == "passthrough" and participant.sends_media:
            return (self.last_frame_at(role) or float("-inf")) > since
        return participant.connected_at is not None and participant.connected_at > since

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        participants = list(self.participants.values())
        self.participants.clear()
        for participant in participants:
            await participant.aclose()
        for tap in self.taps.values():
            await tap.aclose()


class MediaHub:
    """Creates and tears down the peer connections of every call on this node."""

    def __init__(
        self,
        *,
        ice_servers: list[IceServerConfig] | None = None,
        media_mode: MediaMode = "passthrough",
        on_state: StateCallback | None = None,
        candidates: CandidatePolicy | None = None,
    ) -> None:
        if media_mode not in ("passthrough", "transcode"):
            raise ValueError(f"unknown media mode {media_mode!r}")
        if media_mode == "passthrough":
            check_compatible()
        self.media_mode: MediaMode = media_mode
        self.ice_servers = list(ice_servers or [])
        #: which remote candidates of an offer are checked (see :func:`filter_candidates`)
        self.candidates = candidates or CandidatePolicy()
        self._on_state = on_state
        self._calls: dict[str, CallMedia] = {}
        self._closed = False

    # -- calls ---------------------------------------------------------------------

    def call(self, call_id: str) -> CallMedia:
        """The call's media, created on first use."""
        if self._closed:
            raise MediaError("media hub is shut down")
        media = self._calls.get(call_id)
        if media is None:
            media = self._calls[call_id] = CallMedia(call_id, self.media_mode)
        return media

    def find(self, call_id: str) -> CallMedia | None:
        return self._calls.get(call_id)

    @property
    def call_count(self) -> int:
        return len(self._calls)

    async def end_call(self, call_id: str) -> None:
        media = self._calls.pop(call_id, None)
        if media is not None:
            await media.aclose()

    async def disconnect(self, call_id: str, role: str) -> None:
        """Close one participant's peer connection (it dropped); the taps stay."""
        media = self._calls.get(call_id)
        if media is None:
            return
        participant = media.participants.pop(role, None)
        if participant is not None:
            await participant.aclose()

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        calls = list(self._calls)
        for call_id in calls:
            await self.end_call(call_id)

    # -- negotiation ---------------------------------------------------------------

    def _configuration(self) -> RTCConfiguration:
        # an explicit empty list: aiortc falls back to a public STUN server on None
        return RTCConfiguration(
            iceServers=[
                RTCIceServer(urls=s.urls, username=s.username, credential=s.credential)
                for s in self.ice_servers
            ]
        )

    async def connect(self, call_id: str, role: Role, offer_sdp: str) -> str:
        """Answer a participant's offer; replaces the participant's previous connection.

        Returns the answer SDP. Raises :class:`BadSdp` if the offer is unusable.
        """
        media = self.call(call_id)
        pc = RTCPeerConnection(self._configuration())
        participant = ParticipantMedia(role, pc)
        log_id = f"{call_id[:8]}/{role}"
        tapped: list[tuple[RTCRtpReceiver, str]] = []

        @pc.on("track")
        def on_track(track: MediaStreamTrack) -> None:
            if track.kind not in KINDS:
                return
            participant.sends_media = True
            receiver = next(
                (t.receiver for t in pc.getTransceivers() if t.receiver.track is track), None
            )
            if receiver is None:
                return
            if media.mode == "passthrough":
                tap = media.tap(role, track.kind)
                tap_receiver(receiver, tap.push)
                tap.attach(functools.partial(request_keyframe, receiver))
                tapped.append((receiver, track.kind))
            else:
                assert media._relay is not None  # transcode mode always has one
                relayed = media._relay.subscribe(track, buffered=False)
                media._remote_tracks[(role, track.kind)] = relayed
                peer = media.participants.get(other(role))
                if peer is not None and track.kind in peer.transcode_sources:
                    peer.transcode_sources[track.kind].set_source(relayed)

        @pc.on("connectionstatechange")
        async def on_state() -> None:
            state = pc.connectionState
            logger.info("call %s: %s media %s", call_id[:8], role, state)
            if state == "connected":
                participant.connected_at = asyncio.get_running_loop().time()
            elif state in ("closed", "failed") and media.participants.get(role) is participant:
                participant.ended_at = asyncio.get_running_loop().time()
            if self._on_state is not None and media.participants.get(role) is participant:
                result = self._on_state(call_id, role, state)
                if asyncio.iscoroutine(result):
                    await result

        offer_sdp, dropped = filter_candidates(offer_sdp, self.candidates)
        if dropped:
            logger.info(
                "call %s: %d remote ICE candidate(s) not checked (not allowed, or over %d): %s",
                log_id,
                len(dropped),
                self.candidates.max_candidates,
                ", ".join(dropped[:8]) + (" ..." if len(dropped) > 8 else ""),
            )
        try:
            offer = RTCSessionDescription(sdp=offer_sdp, type="offer")
            await pc.setRemoteDescription(offer)
        except Exception as exc:  # aiortc raises ValueError, KeyError, IndexError... on garbage
            await pc.close()
            logger.info("call %s: unusable offer: %s", log_id, exc.__class__.__name__)
            raise BadSdp(f"the SDP offer could not be used ({exc.__class__.__name__})") from None
        if not any(t.kind in KINDS for t in pc.getTransceivers()):
            await pc.close()
            raise BadSdp("the offer has neither audio nor video")

        # the new offer is usable: it replaces the participant's previous connection
        previous = media.participants.pop(role, None)
        if previous is not None:
            await previous.aclose()
        if media.closed:
            await pc.close()
            raise MediaError("the call ended during negotiation")
        media.participants[role] = participant

        kinds_offered = set()
        for transceiver in pc.getTransceivers():
            kind = transceiver.kind
            if kind not in KINDS or kind in kinds_offered:
                continue
            kinds_offered.add(kind)
            wanted = FORWARDED_MIME_TYPES[kind]
            codecs = [
                c for c in RTCRtpSender.getCapabilities(kind).codecs if c.mimeType.lower() in wanted
            ]
            transceiver.setCodecPreferences(codecs)
            source = media.tap(other(role), kind)
            if media.mode == "passthrough":
                holding = HoldingTrack(kind)
                participant.holding_tracks.append(holding)
                sender = pc.addTrack(holding)
                lane = media.lanes[(other(role), kind)]
                outbound = Outbound(lane, sender)
                participant.outbounds.append(outbound)
                if lane.outbound is not None:
                    lane.outbound.close()
                lane.outbound = outbound
                if kind == "video":
                    on_keyframe_request(sender, source.request_keyframe)
            else:
                transcode = _TranscodeSource(kind)
                participant.transcode_sources[kind] = transcode
                remote = media._remote_tracks.get((other(role), kind))
                if remote is not None:
                    transcode.set_source(remote)
                pc.addTrack(transcode)
        try:
            answer = await pc.createAnswer()
            await pc.setLocalDescription(answer)
        except Exception as exc:
            media.participants.pop(role, None)
            await participant.aclose()
            raise BadSdp(f"no answer possible for this offer ({exc.__class__.__name__})") from None
        # transports are final once the answer is set (BUNDLE merged them): take the packets
        for receiver, kind in tapped:
            dtls = receiver.transport
            ingress = participant.ingresses.get(dtls)
            if ingress is None:
                ingress = participant.ingresses[dtls] = Ingress(dtls)
            lane = media.lanes[(role, kind)]
            lane.attach_receiver(receiver, dtls)
            ingress.add(receiver, lane)
        return pc.localDescription.sdp

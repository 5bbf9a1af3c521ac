"""The one place that reaches into aiortc's internals, for encoded passthrough.

aiortc has no public API to receive encoded frames or to learn that a remote
receiver asked for a keyframe. The media hub needs both to forward media
without decoding and re-encoding it, so this module adapts exactly two things:

* **Receiving.** ``RTCRtpReceiver`` depayloads RTP, reassembles frames in its
  jitter buffer and puts ``(codec, JitterFrame)`` on a private
  ``queue.Queue`` that a decoder thread drains. :func:`tap_receiver` swaps that
  queue, before the receiver starts, for a sink that hands each reassembled
  frame to a callback on the event loop. aiortc's decoder thread then idles
  until the receiver stops; nothing is decoded.
* **Keyframe requests.** ``RTCRtpSender`` handles RTCP PLI/FIR by calling its
  ``_send_keyframe()``, which only matters to its encoder. :func:`on_keyframe_request`
  wraps that method on one sender instance so the hub can pass the request
  upstream to the browser that encodes the media.

* **Forwarding RTP packets.** The hub forwards media packet by packet
  (``signaling/rtp_forward.py``), not frame by frame: the DTLS transport's
  ``_handle_rtp_data`` is replaced on the instance by :func:`hook_rtp_data`, and
  the forwarding sender writes packets under its own SSRCs (:func:`sender_ssrcs`),
  keeps the RTCP bookkeeping aiortc would have kept
  (:func:`note_sent`, :func:`count_received`, :func:`mark_source_active`), answers
  NACKs from its own history (:func:`on_retransmit`), and lets the hub see RTCP
  feedback (:func:`on_sender_rtcp`). Its own ``_run_rtp`` loop idles on a track
  that never yields. Packets of known streams are even taken straight off the
  ICE connection's socket callback (:func:`hook_datagrams`), decrypted, rewritten,
  encrypted and sent (:func:`send_rtp_now`) without waiting for aiortc's receive
  task: no queue and no task switch per packet. Where that is not possible
  (a TURN relay), :func:`send_rtp` sends as aiortc's own sender does.

Sending encoded frames needs no adaptation: a track whose ``recv()`` returns an
``av.Packet`` is packetised by the sender's codec without encoding (public
behaviour of ``RTCRtpSender``; ``signaling.contrib.encoded_source`` uses it).

The aiortc version is pinned in ``pyproject.toml``; :func:`check_compatible`
verifies the private names at import time of the hub and
``tests/test_passthrough_compat.py`` fails loudly if an upgrade moves them.
"""

from __future__ import annotations

import asyncio
import queue
import socket
import threading
from asyncio.selector_events import _SelectorDatagramTransport  # type: ignore[attr-defined]  # private: not in typeshed
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, cast

import aiortc
import pylibsrtp
from aioice.ice import StunProtocol
from aiortc import RTCRtpReceiver, RTCRtpSender, clock
from aiortc.codecs import is_rtx
from aiortc.jitterbuffer import JitterFrame
from aiortc.rtcdtlstransport import RTCDtlsTransport
from aiortc.rtcdtlstransport import State as _DtlsState
from aiortc.rtcrtpparameters import RTCRtpCodecParameters, RTCRtpSendParameters
from aiortc.rtcrtpreceiver import StreamStatistics
from aiortc.rtp import AnyRtcpPacket, RtpPacket
from pylibsrtp._binding import ffi as _srtp_ffi
from pylibsrtp._binding import lib as _srtp_lib

from .exceptions import MediaError
from .frames import EncodedFrame, is_keyframe

#: The aiortc release this module was written against.
SUPPORTED_AIORTC = "1.16.0"
#: The pylibsrtp release whose Session internals :class:`_Srtp` uses (pinned in pyproject.toml).
SUPPORTED_PYLIBSRTP = "1.0.0"

_QUEUE_ATTR = "_RTCRtpReceiver__decoder_queue"
#: aiortc's audio jitter buffer holds ``prefetch=4`` packets (20 ms each) before it
#: releases the first: audio frames complete ~60 ms after they arrived. Arrival
#: times are corrected by this so audio and video stay in sync on a timeline.
RECEIVE_DELAY_S = {"audio": 0.06, "video": 0.0}
_THREAD_ATTR = "_RTCRtpReceiver__decoder_thread"
_DTLS_CONNECTED = _DtlsState.CONNECTED
#: private names of aiortc 1.16.0 the RTP forwarding path reads or writes
_RECEIVER_NAMES = (
    "_RTCRtpReceiver__remote_streams",
    "_RTCRtpReceiver__active_ssrc",
    "_RTCRtpReceiver__codecs",
    "_RTCRtpReceiver__rtx_ssrc",
    "_RTCRtpReceiver__rtcp_ssrc",
)
_SENDER_NAMES = (
    "_RTCRtpSender__ntp_timestamp",
    "_RTCRtpSender__rtp_timestamp",
    "_RTCRtpSender__packet_count",
    "_RTCRtpSender__octet_count",
    "_ssrc",
    "_rtx_ssrc",
)


def _pylibsrtp_version() -> str:
    from importlib.metadata import version

    return version("pylibsrtp")


def check_compatible() -> None:
    """Raise :class:`MediaError` if aiortc's internals differ from what this module expects."""
    probe_receiver = RTCRtpReceiver.__init__.__code__.co_names
    problems = []
    if aiortc.__version__ != SUPPORTED_AIORTC:
        problems.append(
            f"aiortc {aiortc.__version__} is installed, {SUPPORTED_AIORTC} is supported"
        )
    if "_RTCRtpReceiver__decoder_queue" not in probe_receiver:
        problems.append("RTCRtpReceiver no longer has __decoder_queue")
    if not callable(getattr(RTCRtpSender, "_send_keyframe", None)):
        problems.append("RTCRtpSender no longer has _send_keyframe()")
    from aiortc import rtcrtpreceiver

    if not callable(getattr(rtcrtpreceiver, "decoder_worker", None)):
        problems.append("aiortc.rtcrtpreceiver.decoder_worker is gone")
    for name in _RECEIVER_NAMES:
        if name not in probe_receiver:
            problems.append(f"RTCRtpReceiver no longer has {name}")
    probe_sender = RTCRtpSender.__init__.__code__.co_names
    for name in _SENDER_NAMES:
        if name not in probe_sender:
            problems.append(f"RTCRtpSender no longer has {name}")
    for cls, method in (
        (RTCDtlsTransport, "_handle_rtp_data"),
        (RTCDtlsTransport, "_send_rtp"),
        (RTCRtpSender, "_retransmit"),
        (RTCRtpSender, "_handle_rtcp_packet"),
        (RTCRtpReceiver, "_send_rtcp"),
        (RTCRtpReceiver, "_handle_rtp_packet"),
    ):
        if not callable(getattr(cls, method, None)):
            problems.append(f"{cls.__name__}.{method}() is gone")
    from aioice import Connection

    if (
        not callable(getattr(Connection, "data_received", None))
        or "_nominated" not in Connection.__init__.__code__.co_names
    ):
        problems.append("aioice.Connection no longer has data_received() / _nominated")
    if "_rx_srtp" not in RTCDtlsTransport.__init__.__code__.co_names:
        problems.append("RTCDtlsTransport no longer has _rx_srtp/_tx_srtp")
    if "_handle_rtp_data" not in RTCDtlsTransport._recv_next.__code__.co_names:
        problems.append("RTCDtlsTransport._recv_next no longer calls _handle_rtp_data")
    if "_protocols" not in Connection.__init__.__code__.co_names:
        problems.append("aioice.Connection no longer has _protocols")
    if not callable(getattr(StunProtocol, "datagram_received", None)):
        problems.append("aioice.StunProtocol.datagram_received() is gone")
    if _pylibsrtp_version() != SUPPORTED_PYLIBSRTP:
        problems.append(
            f"pylibsrtp {_pylibsrtp_version()} is installed, {SUPPORTED_PYLIBSRTP} is supported"
        )
    session_names = pylibsrtp.Session.__init__.__code__.co_names
    for name in ("_srtp", "_cdata", "_buffer"):
        if name not in session_names:
            problems.append(f"pylibsrtp.Session no longer has {name}")
    for name in ("srtp_protect", "srtp_unprotect"):
        if not hasattr(_srtp_lib, name):
            problems.append(f"pylibsrtp's binding no longer has {name}()")
    if problems:
        raise MediaError("encoded passthrough cannot work: " + "; ".join(problems))


class _EncodedSink:
    """Stands in for the receiver's decoder queue.

    ``put()`` is called on the event loop by ``RTCRtpReceiver._handle_rtp_packet``
    with ``(codec, JitterFrame)``, and with ``None`` when the receiver stops.
    ``get()`` is called by aiortc's decoder thread: it blocks until the stop and
    then returns ``None``, which ends that thread (and the receiver's track).
    """

    def __init__(self, callback: Callable[[EncodedFrame], None], kind: str) -> None:
        self._callback = callback
        self._delay = RECEIVE_DELAY_S.get(kind, 0.0)
        self._stopped = threading.Event()
        self._loop = asyncio.get_running_loop()

    def put(self, item: tuple[RTCRtpCodecParameters, JitterFrame] | None) -> None:
        if item is None:
            self._stopped.set()
            return
        codec, jitter_frame = item
        data = jitter_frame.data
        self._callback(
            EncodedFrame(
                data=data,
                timestamp=jitter_frame.timestamp,
                codec=codec,
                keyframe=is_keyframe(codec.mimeType, data),
                arrival=self._loop.time() - self._delay,
            )
        )

    def get(self) -> None:
        self._stopped.wait()
        return None

    def put_nowait(
        self, item: tuple[RTCRtpCodecParameters, JitterFrame] | None
    ) -> None:  # queue.Queue compatibility
        self.put(item)


def tap_receiver(receiver: RTCRtpReceiver, callback: Callable[[EncodedFrame], None]) -> None:
    """Route a receiver's reassembled encoded frames to ``callback`` instead of its decoder.

    Must be called before the receiver starts (in the peer connection's
    ``track`` event, or right after ``setRemoteDescription``).
    """
    if getattr(receiver, _THREAD_ATTR, None) is not None:
        raise MediaError("receiver already started: tap it from the 'track' event")
    current = getattr(receiver, _QUEUE_ATTR, None)
    if not isinstance(current, queue.Queue | _EncodedSink):
        raise MediaError("aiortc receiver internals changed: no decoder queue to tap")
    kind = receiver.track.kind if receiver.track is not None else "video"
    setattr(receiver, _QUEUE_ATTR, _EncodedSink(callback, kind))


def is_tapped(receiver: RTCRtpReceiver) -> bool:
    return isinstance(getattr(receiver, _QUEUE_ATTR, None), _EncodedSink)


def on_keyframe_request(sender: RTCRtpSender, callback: Callable[[], None]) -> None:
    """Call ``callback`` whenever the remote peer of ``sender`` sends PLI or FIR."""
    original = sender._send_keyframe

    def _send_keyframe() -> None:
        original()
        callback()

    sender._send_keyframe = _send_keyframe  # type: ignore[method-assign]  # hooks aiortc on this instance


async def request_keyframe(receiver: RTCRtpReceiver) -> bool:
    """Send a PLI to the remote sender of ``receiver``; False if no SSRC is known yet."""
    sources = receiver.getSynchronizationSources()
    if not sources:
        return False
    for source in sources:
        await receiver._send_rtcp_pli(source.source)
    return True


# -- RTP-level forwarding (signaling/rtp_forward.py) ----------------------------------

RtpHandler = Callable[[bytes, int], Awaitable[None]]


def hook_rtp_data(
    dtls: RTCDtlsTransport, handler: Callable[[bytes, int, RtpHandler], Awaitable[None]]
) -> None:
    """Route every decrypted RTP packet of ``dtls`` through ``handler(data, arrival_ms, original)``.

    ``original`` is aiortc's own handling (parse, route to the receiver); the
    handler calls it for packets it does not take. Hooking twice is a no-op.
    """
    if getattr(dtls, "_vcounter_rtp_hook", False):
        return
    original = dtls._handle_rtp_data

    async def _handle_rtp_data(data: bytes, arrival_time_ms: int) -> None:
        await handler(data, arrival_time_ms, original)

    dtls._handle_rtp_data = _handle_rtp_data  # type: ignore[method-assign]  # hooks aiortc on this instance
    dtls._vcounter_rtp_hook = True  # type: ignore[attr-defined]  # our attribute on aiortc's object


def route_rtp(dtls: RTCDtlsTransport, data: bytes) -> RTCRtpReceiver | None:
    """The receiver aiortc would route ``data`` to (None: not yet known, or garbage)."""
    try:
        packet = RtpPacket.parse(data, dtls._rtp_header_extensions_map)
    except ValueError:
        return None
    # aiortc types its routes as an RtpReceiver protocol: every one is an RTCRtpReceiver
    return cast("RTCRtpReceiver | None", dtls._rtp_router.route_rtp(packet))


def receiver_codecs(receiver: RTCRtpReceiver) -> dict[int, RTCRtpCodecParameters]:
    return receiver._RTCRtpReceiver__codecs  # type: ignore[attr-defined]  # aiortc private


def rtx_original_ssrc(receiver: RTCRtpReceiver, rtx_ssrc: int) -> int | None:
    return receiver._RTCRtpReceiver__rtx_ssrc.get(rtx_ssrc)  # type: ignore[attr-defined]  # aiortc private


def is_rtx_codec(codec: RTCRtpCodecParameters) -> bool:
    return bool(is_rtx(codec))


class _Seen:
    """The two fields of an RTP packet that ``StreamStatistics.add`` reads."""

    __slots__ = ("sequence_number", "timestamp")

    def __init__(self) -> None:
        self.sequence_number = 0
        self.timestamp = 0


_seen = _Seen()


def count_received(
    receiver: RTCRtpReceiver, ssrc: int, clock_rate: int, seq: int, timestamp: int
) -> None:
    """Feed the receiver's RTCP receiver-report statistics, as its own path would."""
    streams = receiver._RTCRtpReceiver__remote_streams  # type: ignore[attr-defined]  # aiortc private
    stats = streams.get(ssrc)
    if stats is None:
        stats = streams[ssrc] = StreamStatistics(clock_rate)
    _seen.sequence_number = seq
    _seen.timestamp = timestamp
    stats.add(_seen)


def mark_source_active(receiver: RTCRtpReceiver, ssrc: int) -> None:
    """What ``getSynchronizationSources()`` reports (used to address keyframe requests)."""
    receiver._RTCRtpReceiver__active_ssrc[ssrc] = clock.current_datetime()  # type: ignore[attr-defined]  # aiortc private


def note_sent(
    sender: RTCRtpSender, ntp_time: int, rtp_timestamp: int, packets: int, octets: int
) -> None:
    """What the sender's RTCP sender reports announce (its own send loop is idle)."""
    sender._RTCRtpSender__ntp_timestamp = ntp_time  # type: ignore[attr-defined]  # aiortc private
    sender._RTCRtpSender__rtp_timestamp = rtp_timestamp  # type: ignore[attr-defined]  # aiortc private
    sender._RTCRtpSender__packet_count = packets  # type: ignore[attr-defined]  # aiortc private
    sender._RTCRtpSender__octet_count = octets  # type: ignore[attr-defined]  # aiortc private


def sender_ssrcs(sender: RTCRtpSender) -> tuple[int, int]:
    """The SSRCs ``sender`` announces in its SDP: ``(media, rtx)``."""
    return sender._ssrc, sender._rtx_ssrc


def on_send_parameters(
    sender: RTCRtpSender, callback: Callable[[RTCRtpSendParameters], None]
) -> None:
    """Call ``callback(parameters)`` when the peer connection starts ``sender``."""
    original = sender.send

    async def send(parameters: RTCRtpSendParameters) -> None:
        await original(parameters)
        callback(parameters)

    sender.send = send  # type: ignore[method-assign]  # hooks aiortc on this instance


def on_retransmit(sender: RTCRtpSender, callback: Callable[[int], Awaitable[None]]) -> None:
    """NACKed sequence numbers of ``sender`` go to ``callback`` instead of aiortc's history."""

    async def _retransmit(sequence_number: int) -> None:
        await callback(sequence_number)

    sender._retransmit = _retransmit  # type: ignore[method-assign]  # hooks aiortc on this instance


def on_sender_rtcp(
    sender: RTCRtpSender, callback: Callable[[AnyRtcpPacket], Awaitable[None]]
) -> None:
    """Show every RTCP packet routed to ``sender`` to ``callback`` first."""
    original = sender._handle_rtcp_packet

    async def _handle_rtcp_packet(packet: AnyRtcpPacket) -> None:
        await callback(packet)
        await original(packet)

    sender._handle_rtcp_packet = _handle_rtcp_packet  # type: ignore[method-assign]  # hooks aiortc on this instance


async def send_receiver_rtcp(
    receiver: RTCRtpReceiver, make: Callable[[int], AnyRtcpPacket]
) -> None:
    """Send ``make(rtcp_ssrc)`` from ``receiver`` to its remote sender (no-op before it has an SSRC)."""
    rtcp_ssrc = receiver._RTCRtpReceiver__rtcp_ssrc  # type: ignore[attr-defined]  # aiortc private
    if rtcp_ssrc is not None:
        await receiver._send_rtcp(make(rtcp_ssrc))


def _is_media_rtp(data: bytes) -> bool:
    """RTP version 2 and not RTCP (RFC 5761 demultiplexing: RTCP types 192-223)."""
    return len(data) >= 12 and 127 < data[0] < 192 and not 191 < data[1] < 224


def hook_datagrams(dtls: RTCDtlsTransport, take: Callable[[bytes], bool]) -> bool:
    """Offer every SRTP packet arriving on ``dtls``'s ICE connection to ``take(data)`` first.

    Runs in the socket's datagram callback, before aiortc's receive queue;
    ``take`` returns True if it consumed the packet, False to leave it to
    aiortc (DTLS, RTCP, STUN and packets it does not know go there anyway).
    On the connection's plain UDP sockets the packet is offered before aioice
    tries (and fails) to parse it as STUN; packets arriving any other way (a
    TURN relay) are offered when aioice hands them to the connection.
    Returns False (nothing hooked) if the transport has no aioice connection.
    """
    connection = getattr(dtls.transport, "_connection", None)
    if connection is None or not callable(getattr(connection, "data_received", None)):
        return False
    if getattr(connection, "_vcounter_datagram_hook", False):
        return True
    original = connection.data_received

    def data_received(data: bytes, component: int) -> None:
        if _is_media_rtp(data) and take(data):
            return
        original(data, component)

    connection.data_received = data_received
    connection._vcounter_datagram_hook = True
    for protocol in getattr(connection, "_protocols", ()):
        if type(protocol) is StunProtocol:
            _hook_protocol(protocol, take)
    return True


def _hook_protocol(protocol: StunProtocol, take: Callable[[bytes], bool]) -> None:
    original = protocol.datagram_received

    def datagram_received(data: bytes | str, addr: tuple[Any, ...]) -> None:
        # STUN starts with 0b00: a media packet (0b10) can skip aioice's parse attempt
        packet = cast(bytes, data)  # aioice's type is too wide: a UDP socket delivers bytes
        if _is_media_rtp(packet) and take(packet):
            return
        original(data, addr)

    protocol.datagram_received = datagram_received  # type: ignore[method-assign]  # hooks aioice on this instance
    _read_in_batches(protocol)


#: datagrams read from one socket per readiness callback (asyncio reads one)
READ_BATCH = 16


class _SelectorLoop(Protocol):
    """The private reader registry of asyncio's selector event loop."""

    def _add_reader(self, fd: int, callback: Callable[[], None]) -> None: ...
    def _remove_reader(self, fd: int) -> bool: ...


class _SelectorDatagram(Protocol):
    """What :func:`_read_in_batches` uses of asyncio's private ``_SelectorDatagramTransport``."""

    _loop: _SelectorLoop
    _sock: socket.socket
    _sock_fd: int
    _conn_lost: int
    _protocol: asyncio.DatagramProtocol
    max_size: int

    def _fatal_error(self, exc: BaseException, message: str) -> None: ...


def _read_in_batches(protocol: StunProtocol) -> bool:
    """Let the socket's reader drain up to :data:`READ_BATCH` datagrams per wake-up.

    asyncio's datagram transport reads one datagram per callback and goes back
    to ``epoll_wait`` for the next; media arrives in bursts (a video frame is
    several packets), so reading on until the socket is empty saves a trip
    through the event loop per packet. Errors are handled as asyncio does.
    Only for the selector event loop's own datagram transport (returns False
    and changes nothing for any other).
    """
    if type(protocol.transport) is not _SelectorDatagramTransport:
        return False
    # typeshed knows it only as a DatagramTransport: these are its private parts
    transport = cast(_SelectorDatagram, protocol.transport)
    loop, sock, fd = transport._loop, transport._sock, transport._sock_fd
    if not (
        callable(getattr(loop, "_add_reader", None))
        and callable(getattr(loop, "_remove_reader", None))
    ):
        return False
    max_size = transport.max_size

    def read_ready() -> None:
        for _ in range(READ_BATCH):
            if transport._conn_lost:
                return
            try:
                data, addr = sock.recvfrom(max_size)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                transport._protocol.error_received(exc)
                return
            except (SystemExit, KeyboardInterrupt):
                raise
            except BaseException as exc:
                transport._fatal_error(exc, "Fatal read error on datagram transport")
                return
            transport._protocol.datagram_received(data, addr)

    if transport._conn_lost or not loop._remove_reader(fd):
        return False
    loop._add_reader(fd, read_ready)
    return True


class _Srtp:
    """pylibsrtp's protect/unprotect without its per-call allocation and checks.

    The same C calls on the session's own buffer (``Session.__process``), with
    the length cell allocated once: this runs for every forwarded packet.
    """

    __slots__ = ("session", "_srtp", "_cdata", "_buffer", "_length", "_room")

    def __init__(self, session: pylibsrtp.Session) -> None:
        self.session = session  # keeps the C session alive
        self._srtp = session._srtp[0]
        self._cdata = session._cdata
        self._buffer = session._buffer
        self._length = _srtp_ffi.new("int *")
        self._room = len(self._buffer)

    def protect(self, packet: bytes) -> bytes:
        n = len(packet)
        if n > self._room - pylibsrtp.SRTP_MAX_TRAILER_LEN:
            raise ValueError("packet is too long")
        self._length[0] = n
        self._buffer[0:n] = packet
        if _srtp_lib.srtp_protect(self._srtp, self._cdata, self._length):
            raise pylibsrtp.Error("srtp_protect failed")
        return self._buffer[0 : self._length[0]]

    def unprotect(self, packet: bytes) -> bytes | None:
        n = len(packet)
        if n > self._room:
            return None
        self._length[0] = n
        self._buffer[0:n] = packet
        if _srtp_lib.srtp_unprotect(self._srtp, self._cdata, self._length):
            return None
        return self._buffer[0 : self._length[0]]


def _srtp(dtls: RTCDtlsTransport, attr: str, session: pylibsrtp.Session) -> _Srtp:
    fast = getattr(dtls, attr, None)
    if fast is None or fast.session is not session:
        fast = _Srtp(session)
        setattr(dtls, attr, fast)
    return fast


def unprotect_rtp(dtls: RTCDtlsTransport, data: bytes) -> bytes | None:
    """Decrypt an SRTP packet with ``dtls``'s keys (None: no keys yet, or it failed to authenticate)."""
    session = dtls._rx_srtp
    if session is None:
        return None
    return _srtp(dtls, "_vcounter_rx", session).unprotect(data)


class _SendPath:
    """Where a connected transport's packets go: its SRTP session and its UDP socket."""

    __slots__ = ("protect", "sendto", "addr", "transport")

    def __init__(
        self,
        protect: Callable[[bytes], bytes],
        transport: asyncio.DatagramTransport,
        addr: tuple[str, int],
    ) -> None:
        self.protect = protect
        self.transport = transport
        self.sendto = transport.sendto
        self.addr = addr


def _send_path(dtls: RTCDtlsTransport) -> _SendPath | None:
    """The cached send path of ``dtls``, found again after any change of its state or pair.

    Two checks per packet keep a closing connection from using it (aiortc
    drops the transport's listeners before its state says closed, and aioice
    closes the socket without telling anyone).
    """
    path = getattr(dtls, "_vcounter_send", None)
    if path is not None:
        if dtls._state is _DTLS_CONNECTED and not path.transport.is_closing():
            return path
        dtls._vcounter_send = None  # type: ignore[attr-defined]  # our attribute on aiortc's object
    if dtls._tx_srtp is None or dtls._state is not _DTLS_CONNECTED:
        return None
    connection = getattr(dtls.transport, "_connection", None)
    if connection is None:
        return None
    pair = connection._nominated.get(1)
    if pair is None or type(pair.protocol) is not StunProtocol or pair.protocol.transport is None:
        return None
    path = _SendPath(
        _srtp(dtls, "_vcounter_tx", dtls._tx_srtp).protect,
        pair.protocol.transport,
        pair.remote_addr,
    )
    dtls._vcounter_send = path  # type: ignore[attr-defined]  # our attribute on aiortc's object
    if not getattr(dtls, "_vcounter_send_watch", False):
        dtls._vcounter_send_watch = True  # type: ignore[attr-defined]  # our attribute on aiortc's object

        def forget() -> None:
            dtls._vcounter_send = None  # type: ignore[attr-defined]  # our attribute on aiortc's object

        dtls.on("statechange", forget)
        # aioice may nominate another pair later: the path is looked up again then
        if type(connection._nominated) is dict:
            connection._nominated = _NominatedPairs(connection._nominated, forget)
    return path


class _NominatedPairs(dict[int, object]):
    """aioice's nominated pairs by component, telling ``changed()`` when one is (re)set."""

    def __init__(self, pairs: dict[int, object], changed: Callable[[], None]) -> None:
        super().__init__(pairs)
        self._changed = changed

    def __setitem__(self, component: int, pair: object) -> None:
        super().__setitem__(component, pair)
        self._changed()


async def send_rtp(dtls: RTCDtlsTransport, packet: bytes) -> None:
    """Encrypt and send ``packet`` the way aiortc's own sender does (any ICE pair, TURN included)."""
    await dtls._send_rtp(packet)


def can_send_now(dtls: RTCDtlsTransport) -> bool:
    """Whether :func:`send_rtp_now` can send on ``dtls`` (connected, plain UDP pair)."""
    return _send_path(dtls) is not None


def send_rtp_now(dtls: RTCDtlsTransport, packet: bytes) -> bool:
    """Encrypt and send ``packet`` synchronously; False if that is not possible right now.

    Possible on a connected transport whose selected ICE pair is a plain UDP
    socket; through a TURN relay (or before connecting) use :func:`send_rtp`.
    """
    path = _send_path(dtls)
    if path is None:
        return False
    path.sendto(path.protect(packet), path.addr)
    return True

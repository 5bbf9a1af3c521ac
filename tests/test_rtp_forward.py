"""Packet-level forwarding (signaling/rtp_forward.py): header parsing, keyframes, loss and
bandwidth feedback, on real calls between headless aiortc participants."""

from __future__ import annotations

import asyncio
import struct

import pytest
from aiortc.codecs import get_encoder
from aiortc.rtcrtpparameters import RTCRtpCodecParameters

from signaling.frames import is_keyframe
from signaling.rtp_forward import parse_rtp, vp8_starts_keyframe

from .helpers import eventually

VP8 = RTCRtpCodecParameters(mimeType="video/VP8", clockRate=90000, payloadType=96)


def _rtp(
    payload: bytes,
    *,
    seq: int = 7,
    ts: int = 1234,
    ssrc: int = 99,
    pt: int = 96,
    marker: int = 1,
    csrcs: int = 0,
    ext: bytes | None = None,
    padding: int = 0,
) -> bytes:
    first = 0x80 | csrcs | (0x10 if ext is not None else 0) | (0x20 if padding else 0)
    data = (
        struct.pack("!BBHII", first, (marker << 7) | pt, seq, ts, ssrc)
        + b"\x00\x00\x00\x01" * csrcs
    )
    if ext is not None:
        data += b"\xbe\xde" + (len(ext) // 4).to_bytes(2, "big") + ext
    data += payload
    if padding:
        data += b"\x00" * (padding - 1) + bytes([padding])
    return data


def test_parse_rtp_strips_csrcs_extensions_and_padding():
    assert parse_rtp(_rtp(b"hello")) == (1, 96, 7, 1234, b"hello")
    assert parse_rtp(_rtp(b"hello", csrcs=2, ext=b"\x22\x01\x02\x03", padding=3, marker=0)) == (
        0,
        96,
        7,
        1234,
        b"hello",
    )
    # a padding-only packet (a browser probing bandwidth) has an empty payload
    assert parse_rtp(_rtp(b"", padding=8)) == (1, 96, 7, 1234, b"")


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x80" * 11,  # shorter than a header
        b"\x40" + b"\x00" * 20,  # RTP version 1
        _rtp(b"x", ext=b"\x00" * 4)[:14],  # extension header cut off
        _rtp(b"", ext=b"\x00" * 4)[:12]
        + b"\xbe\xde\x00\x09\x00\x00\x00\x00",  # extension longer than the packet
    ],
)
def test_parse_rtp_refuses_malformed_packets(data):
    assert parse_rtp(data) is None


def test_parse_rtp_refuses_padding_longer_than_the_packet():
    data = bytearray(_rtp(b"abc", padding=2))
    data[-1] = 200
    assert parse_rtp(bytes(data)) is None


def test_vp8_keyframe_start_matches_a_real_encoder(video_clip):
    """The first packet of every keyframe, and no other packet, starts a keyframe."""
    encoder = get_encoder(VP8)
    import av

    seen = {"key": 0, "delta": 0}
    for data, keyframe in zip(video_clip.packets[:40], video_clip.keyframes[:40], strict=True):
        packet = av.Packet(data)
        packet.pts = 0
        packet.time_base = __import__("fractions").Fraction(1, 90000)
        payloads, _ = encoder.pack(packet)
        assert vp8_starts_keyframe(payloads[0]) is keyframe
        assert not any(vp8_starts_keyframe(p) for p in payloads[1:])
        seen["key" if keyframe else "delta"] += 1
    assert seen["key"] >= 1 and seen["delta"] >= 10
    assert not vp8_starts_keyframe(b"") and not vp8_starts_keyframe(b"\x90")


def test_vp8_keyframe_detection():
    # VP8 frame tag: bit 0 clear = key frame (RFC 6386 9.1)
    assert is_keyframe("video/VP8", bytes([0x10, 0x02, 0x00, 0x9D, 0x01, 0x2A]))
    assert not is_keyframe("video/VP8", bytes([0x11, 0x02, 0x00]))
    assert not is_keyframe("video/VP8", b"")
    assert is_keyframe("audio/opus", b"\x00")


def test_encoded_vp8_clip_keyframes_match_detection(video_clip):
    detected = [is_keyframe("video/VP8", p) for p in video_clip.packets]
    assert detected == video_clip.keyframes
    assert detected[0] and sum(detected) >= 2


async def _call(make_counter, video_clip, audio_clip, *, recording: bool):
    counter = await make_counter(video_clip, audio_clip, recording=recording)
    customer = await counter.customer("account_opening", "Packets")
    agent = await counter.agent("alice")
    await agent.accept_next()
    await agent.wait_media(frames=20)
    await customer.wait_media(frames=20)
    media = counter.hub.find(customer.session_id)
    return counter, customer, agent, media


def _video_receiver(participant):
    return next(t.receiver for t in participant.pc.getTransceivers() if t.kind == "video")


def _video_sender(participant):
    return next(t.sender for t in participant.pc.getTransceivers() if t.kind == "video")


@pytest.mark.parametrize("recording", [False, True], ids=["no-frame-consumer", "recording"])
async def test_nack_is_answered_from_history_or_asked_upstream(
    make_counter, video_clip, audio_clip, recording
):
    counter, customer, agent, media = await _call(
        make_counter, video_clip, audio_clip, recording=recording
    )
    lane = media.lanes[("customer", "video")]
    outbound = lane.outbound
    assert lane.tap.wants_frames is recording
    # packets go from the socket callback straight out, recorded or not
    ingress = next(iter(media.participants["customer"].ingresses.values()))
    assert ingress.taken > 0 and ingress.unrouted < 10
    asked_upstream: list[int] = []
    customer_sender = _video_sender(customer)
    original = customer_sender._retransmit

    async def spy(seq: int) -> None:
        asked_upstream.append(seq)
        await original(seq)

    customer_sender._retransmit = spy
    receiver = _video_receiver(agent)
    # a packet the agent "lost" that the hub still holds: resent, as RTX (negotiated)
    recent = outbound._last_seq
    await receiver._send_rtcp_nack(outbound._ssrc, [recent])
    await eventually(lambda: outbound.retransmitted >= 1)
    # a packet the hub never had: mapped back to the customer's numbering and asked for there
    missing = (outbound._last_seq + 1000) & 0xFFFF
    await receiver._send_rtcp_nack(outbound._ssrc, [missing])
    await eventually(lambda: outbound.nack_misses >= 1)
    await eventually(lambda: (missing - outbound._seq_offset) & 0xFFFF in asked_upstream)
    # the call carries on
    frames = agent.taps["video"].frames_in
    await eventually(lambda: agent.taps["video"].frames_in > frames + 10)


async def test_receiver_bandwidth_estimate_reaches_the_sender(make_counter, video_clip, audio_clip):
    counter, customer, agent, media = await _call(
        make_counter, video_clip, audio_clip, recording=False
    )
    from aiortc.rtp import RTCP_PSFB_APP, RtcpPsfbPacket, unpack_remb_fci

    seen: list[tuple[int, list[int]]] = []
    sender = _video_sender(customer)
    original = sender._handle_rtcp_packet

    async def spy(packet) -> None:
        if isinstance(packet, RtcpPsfbPacket) and packet.fmt == RTCP_PSFB_APP:
            seen.append(unpack_remb_fci(packet.fci))
        await original(packet)

    sender._handle_rtcp_packet = spy
    # the agent's receiver estimates from the abs-send-time the hub writes; the hub relays it
    await eventually(lambda: any(sender._ssrc in ssrcs for _, ssrcs in seen), timeout=15)
    assert all(bitrate > 0 for bitrate, _ in seen)


async def test_without_frame_consumers_nothing_is_reassembled(make_counter, video_clip, audio_clip):
    """No recorder, no identity check: the hub counts packets and never runs aiortc's jitter buffer."""
    counter, customer, agent, media = await _call(
        make_counter, video_clip, audio_clip, recording=False
    )
    tap = media.tap("customer", "video")
    assert not tap.wants_frames
    server_receiver = media.lanes[("customer", "video")].receiver
    buffer = server_receiver._RTCRtpReceiver__jitter_buffer
    assert all(packet is None for packet in buffer._packets)
    assert tap.frames_in >= 20 and tap.keyframes_in >= 1
    # a consumer arriving later (a recorder's sink) gets whole frames, reassembled for it
    frames: list = []
    remove = tap.add_sink(frames.append)
    assert tap.wants_frames
    await eventually(lambda: any(f.keyframe for f in frames), timeout=5)
    assert all(f.data and f.codec.mimeType.lower() == "video/vp8" for f in frames)
    remove()
    assert not tap.wants_frames


def _vp8_packets(video_clip, count: int):
    """RTP (seq, ts, marker, payload) of the clip's first ``count`` frames, as a browser sends them."""
    import fractions

    import av

    encoder = get_encoder(VP8)
    packets, frames = [], []
    seq = 65530  # wraps during the clip
    for index, data in enumerate(video_clip.packets[:count]):
        packet = av.Packet(data)
        packet.pts = index * 3000
        packet.time_base = fractions.Fraction(1, 90000)
        payloads, _ = encoder.pack(packet)
        ts = (0xFFFFF000 + index * 3000) & 0xFFFFFFFF  # wraps too
        for i, payload in enumerate(payloads):
            packets.append((seq & 0xFFFF, ts, int(i == len(payloads) - 1), payload))
            seq += 1
        frames.append(data)
    return packets, frames


def test_frame_assembler_rebuilds_the_encoder_frames_across_reordering_and_late_repairs(video_clip):
    from signaling.rtp_forward import FrameAssembler

    packets, frames = _vp8_packets(video_clip, 30)
    assert len(packets) > len(frames), "the clip's frames span several packets"
    out, losses = [], []
    assembler = FrameAssembler(VP8, out.append, lambda: losses.append(1))
    order = list(packets)
    # swap two packets of one frame, and hold one packet back by two packets (a quick retransmission)
    multi = next(i for i in range(len(order) - 1) if order[i][1] == order[i + 1][1])
    order[multi], order[multi + 1] = order[multi + 1], order[multi]
    late = order.pop(multi + 5)
    order.insert(multi + 5 + 2, late)
    for seq, ts, marker, payload in order:
        assembler.add(seq, ts, marker, payload, now=1.0)
    assert [f.data for f in out] == frames
    assert [f.timestamp for f in out] == [i * 3000 for i in range(len(frames))]
    assert [f.keyframe for f in out] == video_clip.keyframes[: len(frames)]
    assert losses == [] and assembler.lost == 0


def test_frame_assembler_gives_up_on_a_lost_packet_after_100_ms(video_clip):
    from signaling.rtp_forward import FrameAssembler

    packets, frames = _vp8_packets(video_clip, 30)
    lost_frame_ts = packets[len(packets) // 2][1]
    dropped = next(p for p in packets if p[1] == lost_frame_ts)
    out, losses = [], []
    assembler = FrameAssembler(VP8, out.append, lambda: losses.append(1))
    for packet in packets:
        if packet is not dropped:
            assembler.add(*packet, now=1.0)
    assert assembler.lost == 1 and losses == [1]
    assert len(out) == len(frames) - 1
    assert all(f.timestamp != (lost_frame_ts - packets[0][1]) & 0xFFFFFFFF for f in out)
    # the packet turning up after its frame was given up changes nothing
    assembler.add(*dropped, now=1.0)
    assert len(out) == len(frames) - 1


async def test_socket_reader_drains_bursts_in_order_and_goes_away_on_close():
    """passthrough._read_in_batches: every datagram of a burst arrives, in order; closing
    the transport removes the batched reader like asyncio's own."""
    import socket

    from signaling import passthrough

    loop = asyncio.get_running_loop()
    received: list[bytes] = []

    class Protocol(asyncio.DatagramProtocol):
        transport = None

        def connection_made(self, transport):
            self.transport = transport

        def datagram_received(self, data, addr):
            received.append(data)

    transport, protocol = await loop.create_datagram_endpoint(Protocol, local_addr=("127.0.0.1", 0))
    await asyncio.sleep(0)  # asyncio adds its reader one callback after connection_made
    assert passthrough._read_in_batches(protocol)
    port = transport.get_extra_info("sockname")[1]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
        for i in range(3 * passthrough.READ_BATCH + 5):  # more than one batch
            sender.sendto(i.to_bytes(2, "big"), ("127.0.0.1", port))
        await eventually(
            lambda: len(received) == 3 * passthrough.READ_BATCH + 5, timeout=1, interval=0.01
        )
    assert [int.from_bytes(d, "big") for d in received] == list(
        range(3 * passthrough.READ_BATCH + 5)
    )
    fd = transport.get_extra_info("socket").fileno()
    transport.close()
    await asyncio.sleep(0)
    assert fd not in loop._selector.get_map()

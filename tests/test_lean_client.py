"""The lean headless participant (``lean=True``): ready-made RTP out, packets counted in.

Benchmarks drive dozens of calls with it, so it must be a faithful peer: the
hub and aiortc's own receiver must take its packets for real VP8 and Opus, and
it must take theirs.
"""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from signaling import passthrough
from signaling.contrib.encoded_source import ClipSender, packetize
from signaling.rtp_forward import vp8_descriptor_size, vp8_starts_keyframe

from .helpers import eventually


def test_packetize_splits_vp8_frames_and_keeps_opus_whole(video_clip, audio_clip):
    frames = packetize(video_clip)
    assert len(frames) == len(video_clip.packets)
    for payloads, original in zip(frames, video_clip.packets, strict=True):
        assert b"".join(payloads) == original
        assert all(0 < len(p) <= 1196 for p in payloads)
    assert any(len(p) > 1 for p in frames)  # a 640x480 keyframe takes several packets
    assert packetize(audio_clip) == [[p] for p in audio_clip.packets]


async def _call(counter, *, customer_lean: bool, agent_lean: bool, observe=None):
    customer = await counter.customer("account_opening", "Ms Lean", lean=customer_lean)
    agent = await counter.agent("alice", lean=agent_lean)
    if observe is not None:
        agent.frame_observers["video"] = observe
    await agent.accept_next()
    await customer.wait_for("call_started")
    await customer.wait_media(frames=40, timeout=20)
    await agent.wait_media(frames=40, timeout=20)
    return customer, agent


async def _decoded_picture(participant) -> np.ndarray:
    sub = participant.decoded_video()
    try:
        frame = await asyncio.wait_for(sub.recv(), 15)
    finally:
        sub.close()
    return frame.to_ndarray(format="rgb24")


@pytest.mark.parametrize("recording", [True, False], ids=["recording", "no-recording"])
async def test_lean_customer_and_aiortc_agent_see_each_other(
    make_counter, video_clip, audio_clip, recording
):
    """aiortc's receiver (jitter buffer, depayloader, VP8 decoder) takes the lean sender's
    packets, and the lean receiver reassembles frames aiortc's sender packetised."""
    counter = await make_counter(video_clip, audio_clip, recording=recording)
    customer, agent = await _call(counter, customer_lean=True, agent_lean=False)
    assert isinstance(customer.tracks["video"], ClipSender)
    assert customer.lanes and not agent.lanes

    for who in (agent, customer):
        picture = await _decoded_picture(who)
        assert picture.shape == (480, 640, 3)
        assert picture.std() > 20, f"{who.name} decoded a blank picture"
    assert agent.taps["video"].keyframes_in >= 1 and customer.taps["video"].keyframes_in >= 1

    # the lean sender keeps pace: about as many frames arrive as it sent
    sent = customer.tracks["video"].frames_sent
    received = agent.taps["video"].frames_in
    assert sent >= 40 and received >= 0.8 * sent - 5, (sent, received)

    # a keyframe request from the aiortc side reaches the clip through the hub (after the
    # decoders' own requests above have left the taps' coalescing window)
    await asyncio.sleep(1.0)
    before = customer.tracks["video"].keyframe_requests
    keyframes_before = agent.taps["video"].keyframes_in
    agent.request_keyframe()
    await eventually(lambda: customer.tracks["video"].keyframe_requests > before)
    await eventually(lambda: agent.taps["video"].keyframes_in > keyframes_before)

    await customer.hangup()
    await agent.wait_for("call_ended")
    await customer.wait_for("call_ended")
    assert customer.pc is None or customer.pc.connectionState in ("closed", "new")


async def test_two_lean_participants_count_every_frame(counter):
    headers: list[tuple[int, int]] = []
    customer, agent = await _call(
        counter,
        customer_lean=True,
        agent_lean=True,
        observe=lambda ts, rate, arrival: headers.append((ts, rate)),
    )
    seen: list[tuple[int, bool]] = []
    customer.taps["video"].add_sink(lambda f: seen.append((f.timestamp, f.keyframe)))
    await asyncio.sleep(1.5)  # what arrives in 1.5 s is counted
    # frames reassembled for a consumer are whole VP8 frames, in order, ~30 per second
    assert 30 <= len(seen) <= 60, len(seen)
    stamps = [t for t, _ in seen]
    assert stamps == sorted(stamps) and len(set(stamps)) == len(stamps)
    assert all(b - a == 3000 for a, b in zip(stamps, stamps[1:], strict=False)), (
        "a frame went missing on loopback"
    )
    # without a consumer the lane only counts packets from their headers: the marker bit ends a
    # frame, whose RTP timestamp goes to the observer (one per frame, 3000 ticks apart)
    assert agent.taps["video"].frames_in >= 40 and agent.taps["audio"].frames_in >= 40
    assert agent.lanes["video"].packets_in > agent.taps["video"].frames_in  # keyframes span packets
    assert len(headers) >= 40 and {rate for _, rate in headers} == {90000}
    steps = {(b - a) % (1 << 32) for (a, _), (b, _) in zip(headers, headers[1:], strict=False)}
    assert steps == {3000}, steps
    # not decrypted, so keyframes are not told apart (only the first packet, which resolved the
    # stream through aiortc's receive path, was); the clip has one every 30 frames
    assert agent.taps["video"].keyframes_in <= 1 < agent.taps["video"].frames_in // 30

    # the send path is cached per transport, and looked up again when aioice nominates a pair
    pc = customer.pc
    dtls = pc.getTransceivers()[0].sender.transport
    path = passthrough._send_path(dtls)
    assert path is not None and passthrough._send_path(dtls) is path
    connection = dtls.transport._connection
    connection._nominated[1] = connection._nominated[1]
    assert dtls._vcounter_send is None
    assert passthrough._send_path(dtls) is not path and passthrough.can_send_now(dtls)

    await agent.hangup()
    await customer.wait_for("call_ended")
    # the participant closes its peer connection on call_ended
    await eventually(lambda: pc.connectionState == "closed")
    assert not passthrough.can_send_now(dtls)  # closed: nothing cached survives


def test_lean_vp8_descriptor_is_what_the_hub_parses(video_clip):
    """The 4-byte descriptor ClipSender writes: start bit, 15-bit picture id."""
    first = packetize(video_clip)[0][0]
    payload = bytes((0x90, 0x80, 0x80 | 0x12, 0x34)) + first
    assert vp8_descriptor_size(payload) == 4
    assert vp8_starts_keyframe(payload) is video_clip.keyframes[0]

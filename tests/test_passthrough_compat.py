"""Fails loudly if an aiortc upgrade moves the internals signaling/passthrough.py adapts."""

from __future__ import annotations

import aiortc
import pytest
from aiortc import RTCPeerConnection

from signaling import passthrough
from signaling.exceptions import MediaError


def test_pinned_aiortc_version_is_installed():
    assert aiortc.__version__ == passthrough.SUPPORTED_AIORTC, (
        "aiortc was upgraded: re-check signaling/passthrough.py against its receiver/sender, "
        "then update SUPPORTED_AIORTC and the pin in pyproject.toml"
    )


def test_internals_are_where_the_adapter_expects():
    passthrough.check_compatible()


def test_a_moved_internal_of_the_forwarding_path_is_named(monkeypatch):
    from aiortc.rtcdtlstransport import RTCDtlsTransport

    monkeypatch.delattr(RTCDtlsTransport, "_handle_rtp_data")
    with pytest.raises(MediaError, match=r"RTCDtlsTransport._handle_rtp_data\(\) is gone"):
        passthrough.check_compatible()


async def test_tap_refuses_a_started_receiver_and_taps_a_fresh_one():
    pc = RTCPeerConnection()
    try:
        transceiver = pc.addTransceiver("video")
        receiver = transceiver.receiver
        assert not passthrough.is_tapped(receiver)
        passthrough.tap_receiver(receiver, lambda frame: None)
        assert passthrough.is_tapped(receiver)
        receiver._RTCRtpReceiver__decoder_thread = object()
        with pytest.raises(MediaError, match="already started"):
            passthrough.tap_receiver(receiver, lambda frame: None)
        receiver._RTCRtpReceiver__decoder_thread = None
    finally:
        await pc.close()


def test_vp8_keyframe_detection():
    # VP8 frame tag: bit 0 clear = key frame (RFC 6386 9.1)
    assert passthrough.is_keyframe("video/VP8", bytes([0x10, 0x02, 0x00, 0x9D, 0x01, 0x2A]))
    assert not passthrough.is_keyframe("video/VP8", bytes([0x11, 0x02, 0x00]))
    assert not passthrough.is_keyframe("video/VP8", b"")
    assert passthrough.is_keyframe("audio/opus", b"\x00")


def test_encoded_vp8_clip_keyframes_match_detection(video_clip):
    detected = [passthrough.is_keyframe("video/VP8", p) for p in video_clip.packets]
    assert detected == video_clip.keyframes
    assert detected[0] and sum(detected) >= 2


def test_audio_jitter_buffer_prefetch_matches_the_receive_delay_correction():
    """RECEIVE_DELAY_S assumes aiortc's audio jitter buffer prefetches 4 packets of 20 ms."""
    import inspect

    from aiortc import rtcrtpreceiver

    source = inspect.getsource(rtcrtpreceiver.RTCRtpReceiver.__init__)
    assert "JitterBuffer(capacity=16, prefetch=4)" in source
    assert passthrough.RECEIVE_DELAY_S["audio"] == pytest.approx(3 * 0.020)

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


def test_a_moved_srtp_internal_is_named(monkeypatch):
    import pylibsrtp

    original = pylibsrtp.Session.__init__

    def renamed(self, policy=None):  # a release that renamed the buffer
        original(self, policy)

    monkeypatch.setattr(pylibsrtp.Session, "__init__", renamed)
    with pytest.raises(MediaError, match="pylibsrtp.Session no longer has _cdata"):
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


def test_audio_jitter_buffer_prefetch_matches_the_receive_delay_correction():
    """RECEIVE_DELAY_S assumes aiortc's audio jitter buffer prefetches 4 packets of 20 ms."""
    import inspect

    from aiortc import rtcrtpreceiver

    source = inspect.getsource(rtcrtpreceiver.RTCRtpReceiver.__init__)
    assert "JitterBuffer(capacity=16, prefetch=4)" in source
    assert passthrough.RECEIVE_DELAY_S["audio"] == pytest.approx(3 * 0.020)


def test_fast_srtp_matches_pylibsrtp_and_rejects_tampering():
    """The allocation-free protect/unprotect produce what pylibsrtp's own methods do."""
    import os

    import pylibsrtp

    key = os.urandom(30)

    def session(direction: int) -> pylibsrtp.Session:
        return pylibsrtp.Session(policy=pylibsrtp.Policy(key=key, ssrc_type=direction))

    ours, theirs = (
        passthrough._Srtp(session(pylibsrtp.Policy.SSRC_ANY_OUTBOUND)),
        session(pylibsrtp.Policy.SSRC_ANY_OUTBOUND),
    )
    receiver = passthrough._Srtp(session(pylibsrtp.Policy.SSRC_ANY_INBOUND))
    for seq in range(5):
        packet = (
            bytes([0x80, 0x60])
            + seq.to_bytes(2, "big")
            + b"\x00\x00\x10\x00"
            + b"\x12\x34\x56\x78"
            + os.urandom(200)
        )
        protected = ours.protect(packet)
        assert protected == theirs.protect(packet) and protected != packet
        assert receiver.unprotect(protected) == packet
    tampered = bytearray(ours.protect(packet[:2] + b"\x00\x09" + packet[4:]))
    tampered[20] ^= 1
    assert receiver.unprotect(bytes(tampered)) is None  # fails authentication
    assert receiver.unprotect(b"\x80" * 2000) is None  # larger than any datagram we accept
    with pytest.raises(ValueError):
        ours.protect(b"\x80" * 1500)

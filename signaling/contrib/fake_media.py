"""Files for fake capture devices: a camera clip from a real video, a tone for a microphone.

Chromium plays a ``.y4m`` file as its camera and a ``.wav`` as its microphone
(``--use-file-for-fake-video-capture``/``--use-file-for-fake-audio-capture``);
:func:`~signaling.contrib.encoded_source.encode_video` turns the same ``.y4m``
into a headless participant's clip. Both are written once and cached in
``$VCOUNTER_TEST_CACHE`` (default ``/tmp/vcounter-test-media``). The flags a
headless Chromium needs for them (and for a closed network) are
:data:`CHROMIUM_ARGS`, used by the browser tests and the benchmarks.
"""

from __future__ import annotations

import math
import os
import wave
from pathlib import Path

import av
import numpy as np

CACHE = Path(os.environ.get("VCOUNTER_TEST_CACHE", "/tmp/vcounter-test-media"))

#: Debian's Chromium (``VCOUNTER_CHROMIUM`` to use another)
CHROMIUM = os.environ.get("VCOUNTER_CHROMIUM", "/usr/bin/chromium")

#: a headless Chromium on a closed network with fake capture devices (add the two
#: ``--use-file-for-fake-*-capture`` flags with :func:`make_y4m` and :func:`make_tone_wav` files)
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
    "--no-first-run",
    "--autoplay-policy=no-user-gesture-required",
    "--use-fake-device-for-media-stream",
    "--use-fake-ui-for-media-stream",
]


def make_y4m(
    source: Path, *, seconds: float = 6.0, width: int = 640, height: int = 480, fps: int = 30
) -> Path:
    """Centre-crop ``source`` to 4:3, scale to ``width``x``height``, write ``seconds`` of y4m."""
    CACHE.mkdir(parents=True, exist_ok=True)
    out = CACHE / f"{source.stem}-{width}x{height}-{fps}-{seconds:g}.y4m"
    if out.exists():
        return out
    frames: list[list[np.ndarray]] = []
    with av.open(str(source)) as container:
        stream = container.streams.video[0]
        src_fps = float(stream.average_rate or fps)
        for i, frame in enumerate(container.decode(stream)):
            if len(frames) >= int(seconds * fps):
                break
            # resample the clip's frame rate to ``fps`` by picking the nearest frame
            while len(frames) < int((i + 1) * fps / src_fps) and len(frames) < int(seconds * fps):
                frames.append(_crop_scale(frame, width, height))
    tmp = out.with_suffix(".tmp")
    with open(tmp, "wb") as f:
        f.write(f"YUV4MPEG2 W{width} H{height} F{fps}:1 Ip A1:1 C420jpeg\n".encode())
        for planes in frames:
            f.write(b"FRAME\n")
            for plane in planes:
                f.write(plane.tobytes())
    tmp.rename(out)
    return out


def _crop_scale(frame: av.VideoFrame, width: int, height: int) -> list[np.ndarray]:
    rgb = frame.to_ndarray(format="rgb24")
    h, w = rgb.shape[:2]
    target = width / height
    if w / h > target:
        cw = int(h * target)
        rgb = rgb[:, (w - cw) // 2 : (w - cw) // 2 + cw]
    else:
        ch = int(w / target)
        rgb = rgb[(h - ch) // 2 : (h - ch) // 2 + ch]
    img = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb, dtype=np.uint8), format="rgb24")
    yuv = img.reformat(width=width, height=height, format="yuv420p")
    return [
        np.frombuffer(bytes(p), dtype=np.uint8)[: p.line_size * p.height].reshape(
            p.height, p.line_size
        )[:, : p.width]
        for p in yuv.planes
    ]


def make_tone_wav(frequency: float, *, seconds: float = 6.0, rate: int = 48000) -> Path:
    """``seconds`` of a sine tone, mono 16-bit wav."""
    CACHE.mkdir(parents=True, exist_ok=True)
    out = CACHE / f"tone-{frequency:g}hz-{seconds:g}s.wav"
    if out.exists():
        return out
    t = np.arange(int(seconds * rate)) / rate
    pcm = (0.5 * np.sin(2 * math.pi * frequency * t) * 32767).astype(np.int16)
    with wave.open(str(out), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm.tobytes())
    return out

"""Real Chromium for end-to-end tests: fake cameras playing real face clips.

Chromium plays a ``.y4m`` file as its camera and a ``.wav`` as its microphone
(``--use-file-for-fake-video-capture``/``--use-file-for-fake-audio-capture``).
Each participant needs its own browser process, since the fake devices are
per process. Helpers here convert the shared face clips, launch Chromium with
Playwright (``executable_path=/usr/bin/chromium``, never a downloaded browser),
and read back what a page's ``<video>`` shows and what its audio carries.
"""

from __future__ import annotations

import base64
import io
import math
import os
import shutil
import wave
from pathlib import Path

import av
import numpy as np
import pytest

CHROMIUM = os.environ.get("VCOUNTER_CHROMIUM", "/usr/bin/chromium")
CACHE = Path(os.environ.get("VCOUNTER_TEST_CACHE", "/tmp/vcounter-test-media"))

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


def require_chromium() -> str:
    if not Path(CHROMIUM).exists() and not shutil.which("chromium"):
        pytest.skip("Debian chromium is not installed (make test installs it)")
    return CHROMIUM if Path(CHROMIUM).exists() else shutil.which("chromium")  # type: ignore[return-value]


def make_y4m(source: Path, *, seconds: float = 6.0, width: int = 640, height: int = 480, fps: int = 30) -> Path:
    """Centre-crop ``source`` to 4:3, scale to ``width``x``height``, write ``seconds`` of y4m."""
    CACHE.mkdir(parents=True, exist_ok=True)
    out = CACHE / f"{source.stem}-{width}x{height}-{fps}-{seconds:g}.y4m"
    if out.exists():
        return out
    frames = []
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
    img = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
    yuv = img.reformat(width=width, height=height, format="yuv420p")
    return [np.frombuffer(bytes(p), dtype=np.uint8)[: p.line_size * p.height]
            .reshape(p.height, p.line_size)[:, : p.width] for p in yuv.planes]


def make_tone_wav(frequency: float, *, seconds: float = 6.0, rate: int = 48000) -> Path:
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


async def launch(playwright, video: Path, audio: Path):
    """A Chromium whose camera plays ``video`` and microphone plays ``audio``."""
    return await playwright.chromium.launch(
        executable_path=require_chromium(),
        headless=True,
        args=[*CHROMIUM_ARGS, f"--use-file-for-fake-video-capture={video}",
              f"--use-file-for-fake-audio-capture={audio}"],
    )


GRAB_FRAME_JS = """(testid) => {
  const v = document.querySelector(`[data-testid="${testid}"]`);
  if (!v || !v.videoWidth) return null;
  const c = document.createElement('canvas');
  c.width = v.videoWidth; c.height = v.videoHeight;
  c.getContext('2d').drawImage(v, 0, 0);
  return c.toDataURL('image/png');
}"""

# dominant frequency of a <video>'s audio, over ~1 s of analysis
AUDIO_PEAK_JS = """async (testid) => {
  const v = document.querySelector(`[data-testid="${testid}"]`);
  const stream = v && v.srcObject;
  if (!stream || !stream.getAudioTracks().length) return null;
  const ctx = new AudioContext();
  await ctx.resume();
  const src = ctx.createMediaStreamSource(new MediaStream(stream.getAudioTracks()));
  const an = ctx.createAnalyser();
  an.fftSize = 8192;
  src.connect(an);
  const data = new Float32Array(an.frequencyBinCount);
  const peaks = [];
  for (let i = 0; i < 10; i++) {
    await new Promise(r => setTimeout(r, 100));
    an.getFloatFrequencyData(data);
    let best = 0;
    for (let k = 1; k < data.length; k++) if (data[k] > data[best]) best = k;
    peaks.push({hz: best * ctx.sampleRate / an.fftSize, db: data[best]});
  }
  ctx.close();
  return peaks;
}"""


async def grab_frame(page, testid: str) -> np.ndarray | None:
    """The frame a ``<video data-testid=testid>`` shows now, as RGB."""
    url = await page.evaluate(GRAB_FRAME_JS, testid)
    if not url:
        return None
    png = base64.b64decode(url.split(",", 1)[1])
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


async def audio_peaks(page, testid: str) -> list[dict]:
    return await page.evaluate(AUDIO_PEAK_JS, testid) or []


def is_blank(rgb: np.ndarray) -> bool:
    return float(rgb.std()) < 8.0


def face_encoding(rgb: np.ndarray) -> np.ndarray | None:
    import face_recognition

    locations = face_recognition.face_locations(rgb, number_of_times_to_upsample=1)
    if not locations:
        return None
    encodings = face_recognition.face_encodings(rgb, locations[:1])
    return encodings[0] if encodings else None


def source_encoding(video: Path, frame_index: int = 15) -> np.ndarray:
    with av.open(str(video)) as container:
        for i, frame in enumerate(container.decode(video=0)):
            if i == frame_index:
                enc = face_encoding(frame.to_ndarray(format="rgb24"))
                assert enc is not None, f"no face in {video} frame {frame_index}"
                return enc
    raise AssertionError(f"{video} has fewer than {frame_index} frames")



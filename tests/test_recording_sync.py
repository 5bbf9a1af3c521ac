"""Audio and video stay in sync in the recording (within 100 ms), also across a reconnect.

The customer sends a clip with a white flash at 1.0 s of every 2 s loop and an
audio beep starting at the same instant. In the recorded WebM every flash must
have a beep within 100 ms.
"""

from __future__ import annotations

import asyncio
import json

import av
import numpy as np
import pytest

from server.appkeys import CONFIG
from signaling.contrib.encoded_source import encode_audio, encode_video

from .recordings import decrypt_output, wait_recordings

pytestmark = pytest.mark.slow

LOOP_S = 2.0
FLASH_AT_S = 1.0


@pytest.fixture(scope="module")
def sync_clips(tmp_path_factory):
    fps, w, h = 30, 320, 240
    path = tmp_path_factory.mktemp("sync") / "flash.y4m"
    with open(path, "wb") as f:
        f.write(f"YUV4MPEG2 W{w} H{h} F{fps}:1 Ip A1:1 C420jpeg\n".encode())
        for i in range(int(LOOP_S * fps)):
            luma = 235 if int(FLASH_AT_S * fps) <= i < int(FLASH_AT_S * fps) + 2 else 40
            f.write(b"FRAME\n" + bytes([luma]) * (w * h) + bytes([128]) * (w * h // 2))
    video = encode_video(path, width=w, height=h, fps=fps, seconds=LOOP_S, keyframe_interval=30)
    audio = encode_audio(LOOP_S, frequency=1000.0, pulses=(FLASH_AT_S,))
    return video, audio


def _flashes(webm: bytes) -> list[float]:
    import io

    times, previous = [], 0.0
    with av.open(io.BytesIO(webm)) as c:
        for frame in c.decode(video=0):
            luma = float(frame.to_ndarray(format="gray").mean())
            if luma > 150 and previous <= 150:
                times.append(float(frame.pts * frame.time_base))
            previous = luma
    return times


def _beeps(webm: bytes) -> list[float]:
    import io

    with av.open(io.BytesIO(webm)) as c:
        rate = c.streams.audio[0].codec_context.sample_rate
        chunks, starts = [], []
        for frame in c.decode(audio=0):
            raw = frame.to_ndarray()
            data = raw.astype(np.float64) * (
                32767.0 if np.issubdtype(raw.dtype, np.floating) else 1.0
            )
            if frame.format.is_planar:
                mono = data.mean(axis=0)
            else:
                mono = data.reshape(-1, frame.layout.nb_channels).mean(axis=1)
            starts.append(float(frame.pts * frame.time_base))
            chunks.append(mono)
    times = []
    window = rate // 200  # 5 ms
    loud = False
    for start, chunk in zip(starts, chunks, strict=True):
        for k in range(0, len(chunk) - window + 1, window):
            rms = float(np.sqrt(np.mean(chunk[k : k + window] ** 2)))
            if rms > 2000 and not loud:
                times.append(start + k / rate)
            loud = rms > 600 if loud else rms > 2000
    return times


def _offsets(webm: bytes) -> list[float]:
    flashes, beeps = _flashes(webm), _beeps(webm)
    assert len(flashes) >= 3 and len(beeps) >= 3, (flashes, beeps)
    return [min((b - f for b in beeps), key=abs) for f in flashes]


async def test_audio_video_sync_in_recording_across_reconnect(make_counter, sync_clips):
    video, audio = sync_clips
    counter = await make_counter(video, audio)
    config = counter.app[CONFIG]
    customer = await counter.customer("wealth_product", "Sync")
    agent = await counter.agent("alice")
    await agent.accept_next()
    await agent.wait_media(frames=30)
    await asyncio.sleep(4.5)  # two flashes before the reconnect
    await customer.drop()
    await asyncio.sleep(1.0)  # the customer is away for a second: a gap in the recording
    back = counter.participant("back")
    await back.rejoin(customer.session_id, customer.rejoin_token)
    await agent.wait_for("peer_reconnected")
    await agent.wait_media(frames=30, kinds=("video",))
    await asyncio.sleep(4.5)  # two flashes after it
    await agent.hangup()
    [row] = await wait_recordings(counter.db, customer.session_id)
    webm = decrypt_output(config.recordings_dir / row.id, config.master_key_file, "customer")
    offsets = _offsets(webm)
    # every flash has its beep within 100 ms, before and after the reconnect
    assert max(abs(o) for o in offsets) < 0.1, [round(o * 1000) for o in offsets]
    # and the flashes checked lie on both sides of the reconnect
    manifest = json.loads((config.recordings_dir / row.id / "manifest.json").read_text())
    [rejoined_ms] = [
        e["offset_ms"] for e in manifest["timeline"]["events"] if e["kind"] == "customer_rejoined"
    ]
    flashes = _flashes(webm)
    assert sum(f < rejoined_ms / 1000 for f in flashes) >= 2, (flashes, rejoined_ms)
    assert sum(f > rejoined_ms / 1000 for f in flashes) >= 2, (flashes, rejoined_ms)
    print("flash->beep offsets (ms):", [round(o * 1000) for o in offsets])

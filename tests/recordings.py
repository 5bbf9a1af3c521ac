"""Recorded calls, and reading recordings back the way an auditor's tools would: decrypt, demux."""

from __future__ import annotations

import asyncio
import io
from pathlib import Path

import av

from recorder import LocalStorage, MasterKey, open_encrypted, read_data_key

from .helpers import eventually


def decrypt_output(directory: Path, master_key: MasterKey | Path, party: str) -> bytes:
    """The plaintext WebM of one party of the recording in ``directory``."""
    master = master_key if isinstance(master_key, MasterKey) else MasterKey.load(master_key)
    data_key = read_data_key(LocalStorage(directory), master)
    encrypted = open_encrypted(directory / f"{party}.webm.enc", data_key)
    try:
        return b"".join(encrypted.iter_plaintext())
    finally:
        encrypted.close()


def demux(webm: bytes) -> dict[str, list[tuple[float, bytes]]]:
    """Packets per stream kind: (pts seconds, payload)."""
    out: dict[str, list[tuple[float, bytes]]] = {"video": [], "audio": []}
    with av.open(io.BytesIO(webm)) as container:
        for packet in container.demux():
            if packet.size == 0 or packet.pts is None:
                continue
            out[packet.stream.type].append((float(packet.pts * packet.time_base), bytes(packet)))
    return out


def stream_info(webm: bytes) -> dict[str, str]:
    with av.open(io.BytesIO(webm)) as container:
        return {s.type: s.codec_context.name for s in container.streams}


def first_video_frame(webm: bytes):
    with av.open(io.BytesIO(webm)) as container:
        for frame in container.decode(video=0):
            return frame
    return None


async def wait_recordings(
    db, session_id: str, states=("finalized", "recovered"), timeout: float = 30.0
):
    """The session's recordings (by leg) once each is finished (one of ``states``, or failed)."""
    from sqlmodel import select

    from server.db import Recording

    async def load():
        return await db.run(
            lambda s: s.exec(
                select(Recording).where(Recording.session_id == session_id).order_by(Recording.leg)
            ).all()
        )

    async def finished():
        rows = await load()
        return (
            rows if rows and all(r.state in states or r.state == "failed" for r in rows) else None
        )

    async def unfinished() -> str:
        return f"recordings of {session_id} not finished: {[(r.id, r.state) for r in await load()]}"

    return await eventually(finished, timeout=timeout, interval=0.2, message=unfinished)


async def recorded_call(counter, seconds: float = 2.5) -> tuple[str, str]:
    """A finished call of ``seconds`` with media both ways, recorded: ``(session id, recording id)``."""
    customer = await counter.customer("loan_signing", "张三 Audit")
    agent = await counter.agent("carol")
    await agent.accept_next()
    await agent.wait_media(frames=10)
    await asyncio.sleep(seconds)  # the call goes on for this long
    await agent.hangup()
    [row] = await wait_recordings(counter.db, customer.session_id)
    assert row.state == "finalized"
    return customer.session_id, row.id


def recorded_frames(webm: bytes, count: int = 10):
    """``count`` RGB frames spread over the recording's video."""
    import numpy as np

    with av.open(io.BytesIO(webm)) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    if not frames:
        return []
    picks = np.linspace(0, len(frames) - 1, num=min(count, len(frames))).astype(int)
    return [frames[i] for i in picks]


def dominant_tone(webm: bytes) -> float:
    """The strongest frequency (Hz) of the recording's audio, decoded with PyAV."""
    import numpy as np

    with av.open(io.BytesIO(webm)) as container:
        chunks = [
            f.to_ndarray()
            .astype(np.float64)
            .reshape(-1, f.layout.nb_channels if f.format.is_packed else 1)
            .mean(axis=1)
            if f.format.is_packed
            else f.to_ndarray()[0].astype(np.float64)
            for f in container.decode(audio=0)
        ]
        rate = container.streams.audio[0].codec_context.sample_rate
    samples = np.concatenate(chunks)
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    spectrum[:20] = 0  # ignore DC and rumble
    return float(np.argmax(spectrum) * rate / len(samples))

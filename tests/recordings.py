"""Read recordings back the way an auditor's tools would: decrypt, demux with PyAV."""

from __future__ import annotations

import asyncio
import io
from pathlib import Path

import av

from recorder import LocalStorage, MasterKey, open_encrypted, read_data_key


def decrypt_output(directory: Path, master_key_file: Path, party: str) -> bytes:
    master = MasterKey.load(master_key_file)
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


async def wait_recordings(db, session_id: str, states=("finalized", "recovered"), timeout: float = 30.0):
    from sqlmodel import select

    from server.db import Recording

    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        rows = await db.run(lambda s: s.exec(select(Recording).where(Recording.session_id == session_id)
                                             .order_by(Recording.leg)).all())
        if rows and all(r.state in states or r.state == "failed" for r in rows):
            return rows
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError(f"recordings of {session_id} not finished: {[(r.id, r.state) for r in rows]}")
        await asyncio.sleep(0.2)

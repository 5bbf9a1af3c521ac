"""A seekable scratch file for the muxer that never holds plaintext on disk.

The Matroska muxer streams clusters forward but seeks back at the end to fill
in the header (sizes, duration, cue position), so it needs a seekable output.
A recording can be larger than we want in memory, so :class:`Spool` keeps one
64 KiB page in memory and writes the others to an anonymous temporary file
(unlinked: nothing is left behind after a crash), each page sealed with
AES-GCM under a throwaway key and a fresh random nonce (a page rewritten after
a seek is appended again, never encrypted twice under one nonce).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

PAGE = 64 << 10


class Spool:
    def __init__(self, directory: str | Path | None = None) -> None:
        if directory is not None:
            Path(directory).mkdir(parents=True, exist_ok=True, mode=0o700)
        self._file = tempfile.TemporaryFile(dir=directory)
        self._aead = AESGCM(AESGCM.generate_key(bit_length=256))
        self._pages: dict[int, tuple[int, int]] = {}  # page -> (file offset, sealed length)
        self._end = 0  # end of the spool file
        self._page_no = 0
        self._page = bytearray(PAGE)
        self._dirty = False
        self._pos = 0
        self.size = 0

    def _switch(self, page_no: int) -> None:
        if page_no == self._page_no:
            return
        if self._dirty:
            nonce = os.urandom(12)
            sealed = nonce + self._aead.encrypt(
                nonce, bytes(self._page), self._page_no.to_bytes(8, "big")
            )
            self._file.seek(self._end)
            self._file.write(sealed)
            self._pages[self._page_no] = (self._end, len(sealed))
            self._end += len(sealed)
        self._page_no, self._page, self._dirty = page_no, self._load(page_no), False

    def _load(self, page_no: int) -> bytearray:
        if page_no not in self._pages:
            return bytearray(PAGE)
        offset, length = self._pages[page_no]
        self._file.seek(offset)
        sealed = self._file.read(length)
        return bytearray(self._aead.decrypt(sealed[:12], sealed[12:], page_no.to_bytes(8, "big")))

    # -- the file-like interface PyAV writes through --------------------------------

    def write(self, data: bytes) -> int:
        view = memoryview(data)
        while view:
            page_no, start = divmod(self._pos, PAGE)
            self._switch(page_no)
            n = min(len(view), PAGE - start)
            self._page[start : start + n] = view[:n]
            self._dirty = True
            view = view[n:]
            self._pos += n
        self.size = max(self.size, self._pos)
        return len(data)

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self._pos, os.SEEK_END: self.size}[whence]
        if base + offset < 0:
            raise ValueError("negative seek position")
        self._pos = base + offset
        return self._pos

    def tell(self) -> int:
        return self._pos

    def seekable(self) -> bool:
        return True

    # -------------------------------------------------------------------------------

    def iter_plaintext(self) -> Iterator[bytes]:
        """The spooled bytes, page by page."""
        for page_no in range(-(-self.size // PAGE)):
            self._switch(page_no)
            yield bytes(self._page[: min(PAGE, self.size - page_no * PAGE)])

    def close(self) -> None:
        self._file.close()
        self._pages.clear()

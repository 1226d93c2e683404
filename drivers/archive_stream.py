"""A read-only binary file whose bytes come from a generator (a tar being written)."""
from __future__ import annotations

import io
from typing import Callable, Iterator


class GeneratorStream(io.RawIOBase):
    """``read(n)`` pulls chunks from ``chunks`` on demand; nothing is produced ahead.

    ``read(n)`` returns exactly ``n`` bytes until the end (like a buffered file),
    so callers that expect full reads work. ``on_close`` runs exactly once, when
    the stream is closed or garbage collected, even if the generator failed.
    """

    def __init__(self, chunks: Iterator[bytes], on_close: Callable[[], None] | None = None):
        super().__init__()
        self._chunks = chunks
        self._buf = bytearray()
        self._eof = False
        self._on_close = on_close

    def readable(self) -> bool:
        return True

    def _fill(self, want: int) -> None:
        while len(self._buf) < want and not self._eof:
            try:
                chunk = next(self._chunks)
            except StopIteration:
                self._eof = True
                return
            self._buf += chunk

    def read(self, size: int | None = -1) -> bytes:
        if self.closed:
            raise ValueError("read of a closed stream")
        if size is None or size < 0:
            return self.readall()
        if not self._buf and not self._eof:
            # fast path: hand over a whole chunk when it is exactly what was asked
            try:
                chunk = next(self._chunks)
            except StopIteration:
                self._eof = True
                return b""
            if len(chunk) == size:
                return bytes(chunk)
            self._buf += chunk
        self._fill(size)
        with memoryview(self._buf) as view:
            out = bytes(view[:size])
        del self._buf[:size]
        return out

    def readinto(self, buffer) -> int:
        data = self.read(len(buffer))
        buffer[:len(data)] = data
        return len(data)

    def readall(self) -> bytes:
        parts = [bytes(self._buf)]
        self._buf.clear()
        if not self._eof:
            parts.extend(self._chunks)
            self._eof = True
        return b"".join(parts)

    def read1(self, size: int = -1) -> bytes:
        return self.read(size)

    def close(self) -> None:
        if self.closed:
            return
        try:
            close = getattr(self._chunks, "close", None)
            if close is not None:
                close()
        finally:
            self._buf = bytearray()
            super().close()
            on_close, self._on_close = self._on_close, None
            if on_close is not None:
                on_close()

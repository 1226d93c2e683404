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
        self._cur: bytes | bytearray = b""     # the chunk being handed out
        self._off = 0
        self._eof = False
        self._on_close = on_close

    def readable(self) -> bool:
        return True

    def _next(self) -> bool:
        """Load the next non-empty chunk; False at the end."""
        while not self._eof:
            try:
                chunk = next(self._chunks)
            except StopIteration:
                self._eof = True
                break
            if chunk:
                self._cur, self._off = chunk, 0
                return True
        self._cur, self._off = b"", 0
        return False

    def read(self, size: int | None = -1) -> bytes:
        if self.closed:
            raise ValueError("read of a closed stream")
        if size is None or size < 0:
            return self.readall()
        if self._off >= len(self._cur) and not self._next():
            return b""
        cur, off = self._cur, self._off
        if len(cur) - off >= size:            # the common case: one slice, one copy
            self._off = off + size
            if off == 0 and size == len(cur) and isinstance(cur, bytes):
                return cur
            with memoryview(cur) as view:
                return bytes(view[off:off + size])
        parts = [memoryview(cur)[off:]]
        have = len(cur) - off
        while have < size and self._next():
            take = min(size - have, len(self._cur))
            parts.append(memoryview(self._cur)[:take])
            self._off = take
            have += take
        if have < size:
            self._cur, self._off = b"", 0
        out = b"".join(parts)
        for part in parts:
            part.release()
        return out

    def readinto(self, buffer) -> int:
        data = self.read(len(buffer))
        buffer[:len(data)] = data
        return len(data)

    def readall(self) -> bytes:
        parts = [bytes(memoryview(self._cur)[self._off:])]
        self._cur, self._off = b"", 0
        if not self._eof:
            parts.extend(bytes(c) for c in self._chunks)
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
            self._cur = b""
            super().close()
            on_close, self._on_close = self._on_close, None
            if on_close is not None:
                on_close()

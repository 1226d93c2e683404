"""Reading a tar stream: one reusable 1 MiB buffer, data written straight from it."""
from __future__ import annotations

import os
from typing import BinaryIO

from graphdrivers.errors import DriverError

BUFSIZE = 1 << 20


class Truncated(Exception):
    """The stream ended before the bytes the tar promised."""


class TarInput:
    """Buffered reader over the tar stream with one reusable 1 MiB buffer."""

    def __init__(self, stream: BinaryIO):
        self.stream = stream
        self.buf = bytearray(BUFSIZE)
        self.view = memoryview(self.buf)
        self.pos = self.end = 0
        self._readinto = getattr(stream, "readinto", None)

    def _read_more(self) -> int:
        """Read into buf[end:]; return bytes added (0 at end of stream)."""
        if self._readinto is not None:
            n = self._readinto(self.view[self.end:])
            if n is None:
                raise DriverError("the tar stream is non-blocking and had no data")
        else:
            data = self.stream.read(len(self.buf) - self.end)
            n = len(data)
            self.buf[self.end:self.end + n] = data
        self.end += n
        return n

    def take(self, n: int) -> bytes:
        """Exactly ``n`` bytes (n <= MAX_META)."""
        if self.end - self.pos >= n:
            out = bytes(self.view[self.pos:self.pos + n])
            self.pos += n
            return out
        parts = [bytes(self.view[self.pos:self.end])]
        have = self.end - self.pos
        self.pos = self.end = 0
        while have < n:
            if not self._read_more():
                raise Truncated(f"stream ended {n - have} bytes early")
            k = min(n - have, self.end - self.pos)
            parts.append(bytes(self.view[self.pos:self.pos + k]))
            self.pos += k
            have += k
        return b"".join(parts)

    def at_eof(self) -> bool:
        if self.pos < self.end:
            return False
        self.pos = self.end = 0
        return self._read_more() == 0

    def copy(self, fd: int, n: int) -> None:
        """Write the next ``n`` bytes of the stream to ``fd``."""
        while n:
            if self.pos == self.end:
                self.pos = self.end = 0
                if not self._read_more():
                    raise Truncated(f"stream ended {n} bytes early inside file data")
            k = min(n, self.end - self.pos)
            chunk = self.view[self.pos:self.pos + k]
            while chunk:
                written = os.write(fd, chunk)
                chunk = chunk[written:]
            self.pos += k
            n -= k

    def skip(self, n: int) -> None:
        while n:
            if self.pos == self.end:
                self.pos = self.end = 0
                if not self._read_more():
                    raise Truncated(f"stream ended {n} bytes early")
            k = min(n, self.end - self.pos)
            self.pos += k
            n -= k

    def drain(self) -> None:
        """Read the rest (padding after the end marker) so a sender is not cut off."""
        self.pos = self.end = 0
        while self._read_more():
            self.pos = self.end = 0

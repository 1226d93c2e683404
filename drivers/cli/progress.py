"""Progress display for long CLI work: shown on a terminal, silent in a pipe.

One line on stderr, redrawn in place at most ten times a second, so a
multi-gigabyte apply costs a few hundred writes, not one per block. Output
that goes to a pipe or a file (scripts, CI logs) gets nothing at all.
"""
from __future__ import annotations

import io
import sys
import time
from typing import BinaryIO, TextIO

from graphdrivers.options import format_size

_INTERVAL = 0.1   # seconds between redraws


def format_duration(seconds: float) -> str:
    """``42s``, ``3m05s``, ``2h10m``: time left, as an operator reads it."""
    seconds = int(seconds + 0.5)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02}m"


class Progress:
    """A byte counter drawn as ``label  12.3 MB / 200 MB  6%  45 MB/s  4s left``; the
    label may change between updates (``layer 3/20``)."""

    def __init__(self, label: str, total: int | None = None, *,
                 stream: TextIO | None = None, enabled: bool | None = None):
        self.label = label
        self.total = total
        self.done = 0
        self.stream = stream if stream is not None else sys.stderr
        if enabled is None:
            enabled = _isatty(self.stream)
        self.enabled = enabled
        self._start = time.monotonic()
        self._last = 0.0
        self._width = 0

    def update(self, count: int) -> None:
        """Add ``count`` bytes; redraw when the interval has passed."""
        self.done += count
        if not self.enabled:
            return
        now = time.monotonic()
        if now - self._last >= _INTERVAL:
            self._last = now
            self._draw(now)

    def close(self, message: str | None = None) -> None:
        """Erase the line (or replace it with ``message``); safe to call twice."""
        if not self.enabled:
            return
        self.enabled = False
        line = message or ""
        self.stream.write("\r" + line.ljust(self._width) + ("\n" if message else "\r"))
        self.stream.flush()

    def _draw(self, now: float) -> None:
        elapsed = max(now - self._start, 1e-6)
        parts = [self.label, format_size(self.done)]
        if self.total:
            parts[-1] += f" / {format_size(self.total)}"
            parts.append(f"{min(100, self.done * 100 // self.total)}%")
        rate = self.done / elapsed
        parts.append(f"{format_size(rate)}/s")
        if self.total and rate > 0 and self.done < self.total:
            parts.append(f"{format_duration((self.total - self.done) / rate)} left")
        line = "  ".join(parts)
        self._width = max(self._width, len(line))
        self.stream.write("\r" + line.ljust(self._width))
        self.stream.flush()

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class ProgressReader(io.RawIOBase):
    """A read-only stream that reports every byte read from ``source`` to ``progress``."""

    def __init__(self, source: BinaryIO, progress: Progress):
        self._source = source
        self._progress = progress

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        data = self._source.read(len(buffer))
        count = len(data)
        buffer[:count] = data
        self._progress.update(count)
        return count

    def read(self, size: int = -1) -> bytes:
        data = self._source.read(size)
        self._progress.update(len(data))
        return data


def _isatty(stream: object) -> bool:
    try:
        return bool(stream.isatty())  # type: ignore[attr-defined]
    except (AttributeError, ValueError):
        return False

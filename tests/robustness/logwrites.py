"""Power cuts replayed from a write log (dm-log-writes), for the reliability tests.

A ``log-writes`` device-mapper target passes every I/O to a disk and appends each
write that completed, in completion order, to a log device, with the flags that
matter for a power cut: FLUSH (every write before it is on stable storage) and FUA
(this write is). Replaying a prefix of the log onto a blank disk gives the disk as
a power cut at that point could have left it; xfstests' generic/455 and /482 check
filesystems this way. Here the point is the driver's own guarantees: its records,
its transactions and the data of every operation that had returned.

Log format (the kernel's drivers/md/dm-log-writes.c): one sector of superblock
(magic, version, entry count, sector size), then per entry one sector holding the
entry header (sector, sector count, flags, data length; a mark's label follows the
header) and the written data (sector count x sector size; none for a discard).
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import random
import struct
from typing import Iterator

from .diskstack import settle

_SUPER = struct.Struct("<QQQI")
_ENTRY = struct.Struct("<QQQQ")
MAGIC = 0x6A736677736872
VERSION = 1
FLUSH, FUA, DISCARD, MARK, METADATA = 1, 2, 4, 8, 16


@dataclasses.dataclass(frozen=True)
class Entry:
    index: int
    sector: int          # in units of the log's sector size
    sectors: int
    flags: int
    data_at: int         # byte offset of the written data in the log device
    mark: str | None

    @property
    def durable_point(self) -> bool:
        """A cut just after this entry is a point a disk promises to keep."""
        return bool(self.flags & (FLUSH | FUA | MARK))


@dataclasses.dataclass
class Log:
    path: str
    sector_size: int
    entries: list[Entry]

    def mark_index(self, label: str) -> int:
        for entry in self.entries:
            if entry.mark == label:
                return entry.index
        raise KeyError(f"no mark {label!r} in the log {self.path}")

    def cut_points(self, start: int, *, between: int = 0, seed: int = 0) -> list[int]:
        """Indices after which to cut: every flush, FUA and mark from ``start`` on, and
        ``between`` others drawn at random (a cut between flushes: what the disk had
        written back by then, in the order the log saw it complete)."""
        durable = [e.index for e in self.entries[start:] if e.durable_point]
        others = [e.index for e in self.entries[start:] if not e.durable_point]
        sample = random.Random(seed).sample(others, min(between, len(others)))
        return sorted(set(durable) | set(sample))


def read_log(path: str) -> Log:
    """Parse the log device (or a copy of it)."""
    with open(path, "rb") as f:
        magic, version, count, sector_size = _SUPER.unpack(f.read(_SUPER.size))
        if magic != MAGIC or version != VERSION:
            raise ValueError(f"{path} is not a dm-log-writes log (magic {magic:#x}, "
                             f"version {version})")
        entries = []
        pos = sector_size
        for index in range(count):
            f.seek(pos)
            block = f.read(sector_size)
            sector, sectors, flags, data_len = _ENTRY.unpack_from(block)
            mark = None
            if flags & MARK:
                mark = block[_ENTRY.size:_ENTRY.size + data_len].decode(errors="replace")
            pos += sector_size
            entries.append(Entry(index, sector, sectors, flags, pos, mark))
            if not flags & (DISCARD | MARK):
                pos += sectors * sector_size
    return Log(path, sector_size, entries)


class Replay:
    """A blank image file, brought forward entry by entry to any point of the log."""

    def __init__(self, log: Log, image: str, size: int):
        self.log = log
        self.image = image
        self.done = -1           # index of the last entry applied
        with open(image, "wb") as f:
            f.truncate(size)
        self._log_fd = os.open(log.path, os.O_RDONLY)
        self._fd = os.open(image, os.O_RDWR)

    def to(self, index: int) -> None:
        """Apply every entry up to and including ``index`` (forward only)."""
        if index < self.done:
            raise ValueError(f"replay is at entry {self.done}; it cannot go back to {index}")
        size = self.log.sector_size
        for entry in self.log.entries[self.done + 1:index + 1]:
            offset, length = entry.sector * size, entry.sectors * size
            if entry.flags & MARK or not length:
                pass
            elif entry.flags & DISCARD:
                os.pwrite(self._fd, bytes(length), offset)    # a discarded range reads zeros
            else:
                os.pwrite(self._fd, os.pread(self._log_fd, length, entry.data_at), offset)
            self.done = entry.index

    def close(self) -> None:
        os.close(self._fd)
        os.close(self._log_fd)


@contextlib.contextmanager
def logging_device(name: str, device: str, log_device: str) -> Iterator[str]:
    """``/dev/mapper/<name>``: ``device`` with every write logged to ``log_device``
    (zeroed first: the target starts its log at the beginning)."""
    from graphdrivers.devmapper import blockdev, dm
    with open(log_device, "r+b") as f:
        f.write(bytes(1 << 20))
        os.fsync(f.fileno())
    sectors = blockdev.size_bytes(device) // 512
    dm.create(name, [(0, sectors, "log-writes", f"{device} {log_device}")])
    settle()
    try:
        yield dm.device_path(name)
    finally:
        dm.remove(name)


def mark(name: str, label: str) -> None:
    """Put a mark in the log of ``name`` (after every write completed before it)."""
    from graphdrivers.devmapper import dm
    dm.message(name, f"mark {label}")


@contextlib.contextmanager
def scratch_view(name: str, image_device: str, cow_device: str) -> Iterator[str]:
    """``/dev/mapper/<name>``: a writable view of ``image_device`` whose writes (a
    journal replay, a driver's recovery) go to ``cow_device`` and vanish after, so the
    replay can go on from the unchanged image (a non-persistent dm snapshot)."""
    from graphdrivers.devmapper import blockdev, dm
    sectors = blockdev.size_bytes(image_device) // 512
    dm.create(name, [(0, sectors, "snapshot", f"{image_device} {cow_device} N 8")])
    settle()
    try:
        yield dm.device_path(name)
    finally:
        dm.remove(name)

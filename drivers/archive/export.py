"""Writing layer tars: a whole tree, or the listed changes of a tree.

The tar is produced lazily by a generator behind a file object, in chunks of
about 1 MiB, so memory stays flat whatever the layer size. Entries: PAX
format, numeric owners, mtime in whole seconds, hard links within the tar as
links to the first path written, xattrs as SCHILY.xattr records.
"""
from __future__ import annotations

import errno
import os
import stat
import time
from typing import BinaryIO, Callable, Iterable, Iterator

from graphdrivers.archive.format import (BLK, CHR, DIR, FIFO, LNK, REG, SYM, ZERO_BLOCK, Entry, encode,
                             padding)
from graphdrivers.archive.stream import GeneratorStream
from graphdrivers.archive.whiteout import PLAIN, WH_OPAQUE, WH_PREFIX, WhiteoutFormat
from graphdrivers.driver import Change, ChangeKind
from graphdrivers.errors import DriverError

CHUNK = 1 << 20
DIRECT = 64 << 10          # files this big go out as their own chunks, not copied into a batch
READ = 256 << 10           # read size for big files: bigger buffers cost page faults, not speed
_TYPES = {stat.S_IFREG: REG, stat.S_IFDIR: DIR, stat.S_IFLNK: SYM, stat.S_IFCHR: CHR,
          stat.S_IFBLK: BLK, stat.S_IFIFO: FIFO}
_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
_NOATIME = getattr(os, "O_NOATIME", 0)


class _Writer:
    """State of one tar being written: the output batch and the hard link table."""

    def __init__(self, fmt: WhiteoutFormat):
        self.fmt = fmt
        # PLAIN's hooks never say yes: skip calling them (and decoding every path)
        self.whiteouts = type(fmt).export_whiteout is not WhiteoutFormat.export_whiteout
        self.opaques = type(fmt).export_opaque is not WhiteoutFormat.export_opaque
        self.out = bytearray()
        self.links: dict[tuple[int, int], bytes] = {}
        self.open_flags = _OPEN_FLAGS | _NOATIME

    def xattrs(self, path: bytes) -> dict[str, bytes]:
        try:
            names = os.listxattr(path, follow_symlinks=False)
        except OSError as exc:
            if exc.errno in (errno.ENOTSUP, errno.ENOENT):
                return {}
            raise
        result = {}
        for name in names:
            if self.fmt.export_xattr(name):
                try:
                    result[name] = os.getxattr(path, name, follow_symlinks=False)
                except OSError as exc:
                    if exc.errno not in (errno.ENODATA, errno.ENOTSUP):
                        raise
        return result

    def whiteout(self, rel: bytes, mtime: int) -> None:
        head, _, base = rel.rpartition(b"/")
        name = (head + b"/" if head else b"") + WH_PREFIX + base
        self.out += encode(Entry(name=name, type=REG, mode=0, mtime=mtime))

    def add(self, path: bytes, rel: bytes, st: os.stat_result) -> Iterator[bytes] | None:
        """Append the entry for ``path`` to the batch, data included.

        A big regular file is not read here: the iterator returned streams it
        (the caller exhausts it at once). The caller flushes full batches.
        """
        fmt = st.st_mode
        typ = _TYPES.get(stat.S_IFMT(fmt))
        if typ is None:                      # sockets and doors are not carried by tar
            return None
        if self.whiteouts and self.fmt.export_whiteout(os.fsdecode(path), st):
            self.whiteout(rel, st.st_mtime_ns // 1_000_000_000)
            return None
        entry = Entry(rel, typ, fmt & 0o7777, st.st_uid, st.st_gid, 0,
                      st.st_mtime_ns // 1_000_000_000, b"", 0, 0, self.xattrs(path))
        if typ != DIR and st.st_nlink > 1:
            key = (st.st_dev, st.st_ino)
            first = self.links.get(key)
            if first is not None:
                entry.type, entry.linkname = LNK, first
                self.out += encode(entry)
                return None
            self.links[key] = rel
        if typ == REG:
            if st.st_size >= DIRECT:
                return self._big_file(path, entry, st.st_size)
            self._small_file(path, entry, st.st_size)
            return None
        if typ == SYM:
            entry.linkname = os.readlink(path)
        elif typ == CHR or typ == BLK:
            entry.devmajor, entry.devminor = os.major(st.st_rdev), os.minor(st.st_rdev)
        self.out += encode(entry)
        if typ == DIR and self.opaques and self.fmt.export_opaque(os.fsdecode(path)):
            self.out += encode(Entry(name=rel + b"/" + WH_OPAQUE, type=REG, mode=0,
                                     uid=entry.uid, gid=entry.gid, mtime=entry.mtime))
        return None

    # A file that changes size while we read it is cut or zero-padded to the
    # size lstat saw, so the tar stays valid.
    def _open(self, path: bytes) -> int:
        try:
            return os.open(path, self.open_flags)
        except PermissionError:
            if not self.open_flags & _NOATIME:
                raise
            self.open_flags &= ~_NOATIME     # O_NOATIME needs ownership or CAP_FOWNER
            return os.open(path, self.open_flags)

    def _small_file(self, path: bytes, entry: Entry, size: int) -> None:
        fd = self._open(path)
        try:
            entry.size = size
            self.out += encode(entry)
            left = size
            while left:
                data = os.read(fd, left)
                if not data:
                    break
                self.out += data
                left -= len(data)
        finally:
            os.close(fd)
        self.out += bytes(left + padding(size))

    def _big_file(self, path: bytes, entry: Entry, size: int) -> Iterator[bytes]:
        fd = self._open(path)
        try:
            entry.size = size
            self.out += encode(entry)
            yield self.flush()
            left = size
            while left:
                data = os.read(fd, min(left, READ))
                if not data:
                    break
                yield data
                left -= len(data)
        finally:
            os.close(fd)
        self.out += bytes(left + padding(size))

    def flush(self) -> bytearray:
        data, self.out = self.out, bytearray()    # handed over whole: no copy
        return data

    def finish(self) -> bytearray:
        self.out += ZERO_BLOCK * 2
        return self.flush()


def _tree(writer: _Writer, path: bytes, rel: bytes) -> Iterator[bytes]:
    try:
        with os.scandir(path) as it:
            names = sorted(e.name for e in it)
    except FileNotFoundError:
        return
    for name in names:
        child = path + b"/" + name
        child_rel = rel + b"/" + name if rel else name
        try:
            st = os.lstat(child)
        except FileNotFoundError:             # removed while we walk
            continue
        big = writer.add(child, child_rel, st)
        if big is not None:
            yield from big
        elif len(writer.out) >= CHUNK:
            yield writer.flush()
        if stat.S_ISDIR(st.st_mode) and not (
                writer.whiteouts and writer.fmt.export_whiteout(os.fsdecode(child), st)):
            yield from _tree(writer, child, child_rel)


def _guard(chunks: Iterator[bytes], what: str) -> Iterator[bytes]:
    try:
        yield from chunks
    except OSError as exc:
        raise DriverError(f"{what}: {exc}") from exc


def _tree_chunks(root: bytes, fmt: WhiteoutFormat) -> Iterator[bytes]:
    writer = _Writer(fmt)
    yield from _tree(writer, root, b"")
    yield writer.finish()


def export_tree(root: str | os.PathLike, *, fmt: WhiteoutFormat = PLAIN,
                on_close: Callable[[], None] | None = None) -> BinaryIO:
    """A streaming PAX tar of everything under ``root`` (the root itself excluded)."""
    root_b = os.fsencode(root)
    if not os.path.isdir(root_b):
        if on_close is not None:
            on_close()
        raise DriverError(f"cannot export {os.fsdecode(root_b)}: not a directory")
    chunks = _guard(_tree_chunks(root_b.rstrip(b"/") or b"/", fmt), f"export of {root}")
    return GeneratorStream(chunks, on_close)  # type: ignore[return-value]


def _changes_chunks(root: bytes, changes: list[Change], fmt: WhiteoutFormat) -> Iterator[bytes]:
    writer = _Writer(fmt)
    now = int(time.time())
    for change in sorted(changes, key=lambda c: c.path):
        rel = os.fsencode(change.path).strip(b"/")
        if not rel:
            continue
        if change.kind == ChangeKind.DELETE:
            writer.whiteout(rel, now)
            continue
        path = root + b"/" + rel
        try:
            st = os.lstat(path)
        except FileNotFoundError:             # gone since the comparison
            continue
        big = writer.add(path, rel, st)
        if big is not None:
            yield from big
        if len(writer.out) >= CHUNK:
            yield writer.flush()
    yield writer.finish()


def export_changes(root: str | os.PathLike, changes: Iterable[Change], *,
                   fmt: WhiteoutFormat = PLAIN,
                   on_close: Callable[[], None] | None = None) -> BinaryIO:
    """A streaming tar of ``changes`` (as Docker's ExportChanges): deletions become
    empty ``.wh.<name>`` entries, additions and modifications the full entry."""
    root_b = os.fsencode(root).rstrip(b"/") or b"/"
    chunks = _guard(_changes_chunks(root_b, list(changes), fmt), f"export of {root}")
    return GeneratorStream(chunks, on_close)  # type: ignore[return-value]

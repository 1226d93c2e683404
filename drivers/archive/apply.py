"""Unpacking a layer tar into a directory, safely and in constant memory.

Safety: every path is resolved component by component from a file descriptor
on the layer root, with O_NOFOLLOW|O_DIRECTORY, so nothing the tar creates
can make a later entry land outside the root. ``..`` and absolute names are
refused. A symlink met as a *parent* component is followed only when its
target is relative and stays inside the root (resolved lexically, as a chroot
would); hard link targets may not go through symlinks at all. The final
component is never followed: an existing entry is removed and recreated.

Whiteouts: ``.wh.<name>`` deletes what is there when it comes (as Docker's
UnpackLayer: the same layer's earlier entry included). ``.wh..wh..opq`` hides
what the layers below hold in its directory wherever it sits in the tar, and
never this tar's own entries. A whiteout creates nothing for its own sake: a
driver with lower layers (overlay2) says where they show something to hide.

Speed: the stream is read in 1 MiB blocks into one reusable buffer and file
data is written straight from it; headers are parsed by hand.
"""
from __future__ import annotations

import errno
import os
import shutil
import stat
from typing import BinaryIO

from graphdrivers.archive import format as tf
from graphdrivers.archive.format import BLOCK, ZERO_BLOCK, Entry, HeaderError
from graphdrivers.archive.input import TarInput as _Input
from graphdrivers.archive.input import Truncated as _Truncated
from graphdrivers.kernel import sync
from graphdrivers.archive.whiteout import (PLAIN, WH_META_PREFIX, WH_OPAQUE, WH_PREFIX, WhiteoutFormat,
                               _remove)
from graphdrivers.errors import CorruptArchive, DriverError, from_os_error

MAX_META = 16 << 20          # largest PAX / GNU long-name data we hold in memory
MAX_SYMLINK_HOPS = 40
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_REGULAR = {tf.REG, tf.AREG, tf.CONT}
_META = {tf.PAX_X, tf.PAX_G, tf.GNU_LONGNAME, tf.GNU_LONGLINK}
_NODES = {tf.CHR: stat.S_IFCHR, tf.BLK: stat.S_IFBLK, tf.FIFO: stat.S_IFIFO}


def _umask() -> int | None:
    """The process umask, read without changing it (os.umask would race other threads)."""
    try:
        with open("/proc/self/status", "rb") as f:
            for line in f:
                if line.startswith(b"Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return None


class _Missing(FileNotFoundError):
    """A directory on the way does not exist; ``real`` is where it would be."""

    def __init__(self, real: tuple[bytes, ...]):
        super().__init__(errno.ENOENT, "no such directory")
        self.real = real


class _NotDirectory(CorruptArchive):
    """A component on the way is neither a directory nor a symlink to one."""


def _split(name: bytes, what: str = "entry") -> list[bytes]:
    """Tar name -> path components, refusing anything that could leave the root."""
    if b"\0" in name:
        raise CorruptArchive(f"tar {what} {name!r} contains a NUL byte")
    if name.startswith(b"/"):
        raise CorruptArchive(f"tar {what} {os.fsdecode(name)!r} is an absolute path; "
                             "layer tars hold relative paths only")
    parts = [p for p in name.split(b"/") if p and p != b"."]
    if b".." in parts:
        raise CorruptArchive(f"tar {what} {os.fsdecode(name)!r} contains '..' and would "
                             "write outside the layer")
    return parts


class _Applier:
    def __init__(self, root: str | os.PathLike, fmt: WhiteoutFormat):
        self.fmt = fmt
        self.root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        # the chain of open directories leading to the current entry's parent:
        # (tar component, fd, real components from the root)
        self.stack: list[tuple[bytes, int, tuple[bytes, ...], bool]] = []   # + setgid?
        self.dirty = False
        # what this tar wrote, for an opaque marker wherever it comes: the names of
        # entries per real directory, and every directory holding any at any depth
        self.created: dict[tuple[bytes, ...], set[bytes]] = {}
        self.holders: set[tuple[bytes, ...]] = set()
        # directories' mtimes (and, when not root, modes) are set last
        self.dir_times: list[tuple[list[bytes], int, int | None]] = []
        self.total = 0
        self.is_root = os.geteuid() == 0
        self.ids = (os.geteuid(), os.getegid())
        self.umask = _umask()
        self.root_sgid = bool(os.fstat(self.root_fd).st_mode & stat.S_ISGID)
        self.parent_sgid = self.root_sgid
        self.raw_name = b""

    def close(self) -> None:
        self._reset()
        os.close(self.root_fd)

    def _reset(self) -> None:
        for entry in self.stack:
            os.close(entry[1])
        self.stack.clear()
        self.dirty = False

    # -- path resolution -------------------------------------------------
    @property
    def name(self) -> str:
        """The current entry's name, for messages."""
        return os.fsdecode(self.raw_name)

    def _note(self, real: tuple[bytes, ...], name: bytes) -> None:
        """Remember what this tar created, for a later opaque marker above it."""
        created = self.created.get(real)
        if created is None:
            created = self.created[real] = set()
            while real and real not in self.holders:
                self.holders.add(real)
                real = real[:-1]
        created.add(name)

    def _step(self, parent_fd: int, real: tuple[bytes, ...], comp: bytes, create: bool,
              follow: bool, hops: int) -> tuple[int, tuple[bytes, ...]]:
        """Open directory ``comp`` in ``parent_fd``; make it 0755 when missing and allowed."""
        try:
            return os.open(comp, _DIR_FLAGS, dir_fd=parent_fd), real + (comp,)
        except FileNotFoundError:
            if not create:
                raise _Missing(real + (comp,)) from None
            return self._implied(parent_fd, real, comp, None), real + (comp,)
        except NotADirectoryError:
            st = os.stat(comp, dir_fd=parent_fd, follow_symlinks=False)
            where = os.fsdecode(b"/".join(real + (comp,)))
            if create and self.fmt.is_whiteout(st):
                return self._implied(parent_fd, real, comp, st), real + (comp,)
            if not stat.S_ISLNK(st.st_mode):
                raise _NotDirectory(f"{self.name}: parent {where!r} is not a directory") from None
            if not follow:
                raise CorruptArchive(f"{self.name}: goes through the symlink {where!r}, "
                                     "which is not allowed for hard link targets") from None
            target = os.readlink(comp, dir_fd=parent_fd)
            return self._follow(real, comp, target, create, hops + 1)

    def _follow(self, real: tuple[bytes, ...], comp: bytes, target: bytes, create: bool,
                hops: int) -> tuple[int, tuple[bytes, ...]]:
        where = os.fsdecode(b"/".join(real + (comp,)))
        if hops > MAX_SYMLINK_HOPS:
            raise CorruptArchive(f"{self.name}: too many levels of symlinks at {where!r}")
        if target.startswith(b"/"):
            raise CorruptArchive(
                f"{self.name}: would write through the symlink {where!r} -> "
                f"{os.fsdecode(target)!r}, which points outside the layer")
        parts = list(real)
        for piece in target.split(b"/"):
            if piece in (b"", b"."):
                continue
            if piece == b"..":
                if not parts:
                    raise CorruptArchive(
                        f"{self.name}: would write through the symlink {where!r} -> "
                        f"{os.fsdecode(target)!r}, which points outside the layer")
                parts.pop()
            else:
                parts.append(piece)
        return self._open_path(parts, create, True, hops)

    def _implied(self, parent_fd: int, real: tuple[bytes, ...], comp: bytes,
                 whiteout: os.stat_result | None) -> int:
        """Make the directory ``comp`` that an entry below implies; return its fd.

        0755 whatever the umask; where a deletion marker was, the new directory
        hides what the marker hid.
        """
        if whiteout is not None:
            os.unlink(comp, dir_fd=parent_fd)
        os.mkdir(comp, 0o755, dir_fd=parent_fd)
        fd = os.open(comp, _DIR_FLAGS, dir_fd=parent_fd)
        os.fchmod(fd, 0o755)
        if whiteout is not None:
            self.fmt.dir_over_whiteout(parent_fd, comp)
        else:
            self.fmt.implied_dir(fd, real + (comp,))
        return fd

    def _open_path(self, parts: list[bytes], create: bool, follow: bool,
                   hops: int = 0) -> tuple[int, tuple[bytes, ...]]:
        """Open ``parts`` from the root without the cache; caller closes the fd."""
        fd, real = os.dup(self.root_fd), ()
        try:
            for i, comp in enumerate(parts):
                try:
                    new_fd, real = self._step(fd, real, comp, create, follow, hops)
                except _Missing as missing:
                    raise _Missing(missing.real + tuple(parts[i + 1:])) from None
                os.close(fd)
                fd = new_fd
        except BaseException:
            os.close(fd)
            raise
        return fd, real

    def _parent(self, parts: list[bytes], create: bool = True) -> tuple[int, tuple[bytes, ...]]:
        """fd of the directory holding ``parts[-1]`` (cached along the current path).

        Also sets ``parent_sgid``: new entries in a setgid directory take its group.
        """
        if self.dirty:
            self._reset()
        stack, want = self.stack, len(parts) - 1
        n = 0
        while n < len(stack) and n < want and stack[n][0] == parts[n]:
            n += 1
        for entry in stack[n:]:
            os.close(entry[1])
        del stack[n:]
        for i in range(n, want):
            comp = parts[i]
            fd, real = (stack[-1][1], stack[-1][2]) if stack else (self.root_fd, ())
            try:
                new_fd, new_real = self._step(fd, real, comp, create, True, 0)
            except _Missing as missing:
                raise _Missing(missing.real + tuple(parts[i + 1:want])) from None
            sgid = bool(os.fstat(new_fd).st_mode & stat.S_ISGID)
            stack.append((comp, new_fd, new_real, sgid))
        if not stack:
            self.parent_sgid = self.root_sgid
            return self.root_fd, ()
        top = stack[-1]
        self.parent_sgid = top[3]
        return top[1], top[2]

    # -- entries -----------------------------------------------------------
    def _remove_existing(self, dfd: int, name: bytes) -> None:
        """Remove ``name``, whatever it is, to make room for a new entry."""
        try:
            st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
        except FileNotFoundError:
            return
        if stat.S_ISDIR(st.st_mode):
            shutil.rmtree(name, dir_fd=dfd)
        else:
            os.unlink(name, dir_fd=dfd)
        self.dirty = True

    def _created_mode(self, mode: int) -> int | None:
        """The mode to create an entry with, so that no chmod is needed afterwards."""
        return None if mode & 0o7000 else mode

    def _attrs(self, dfd: int, name: bytes, e: Entry, fd: int | None, symlink: bool,
               created: int | None = None, chmod: bool = True) -> None:
        """Owner, then mode (so setuid survives chown), then xattrs (chown drops caps).

        ``created``: the mode we just created the entry with (None: an existing
        entry, or unknown); calls that would change nothing are skipped.
        ``chmod=False``: the mode is set later (see ``finish``).
        """
        fresh = created is not None and self.umask is not None and not self.parent_sgid
        if self.is_root and not (fresh and (e.uid, e.gid) == self.ids):
            if fd is not None:
                os.fchown(fd, e.uid, e.gid)
            else:
                os.chown(name, e.uid, e.gid, dir_fd=dfd, follow_symlinks=False)
        if chmod and not symlink and not (fresh and created & ~self.umask == e.mode):  # type: ignore

            if fd is not None:
                os.fchmod(fd, e.mode)
            else:
                os.chmod(name, e.mode, dir_fd=dfd)   # just created by us: not a symlink
        if e.xattrs:
            target: int | str = fd if fd is not None else \
                f"/proc/self/fd/{dfd}/{os.fsdecode(name)}"
            for key, value in e.xattrs.items():
                if not self.fmt.apply_xattr(key):
                    continue
                try:
                    os.setxattr(target, key, value, follow_symlinks=fd is not None)
                except OSError as exc:
                    # as Docker: a backing fs without xattrs (or a user.* xattr on a
                    # symlink) is not fatal
                    if exc.errno not in (errno.ENOTSUP, errno.EPERM):
                        raise

    def _create(self, dfd: int, name: bytes, make) -> None:
        """Run ``make()`` (an O_EXCL-style create); on EEXIST replace what is there."""
        try:
            make()
        except FileExistsError:
            self._remove_existing(dfd, name)
            make()

    def entry(self, e: Entry, inp: _Input) -> None:
        typ = e.type
        if typ == tf.AREG and e.name.endswith(b"/"):
            typ = tf.DIR                                  # pre-POSIX directory
        self.raw_name = e.name
        parts = _split(e.name)
        if not parts:
            if typ != tf.DIR:
                raise CorruptArchive(f"tar entry {self.name!r} names the layer root but is "
                                     "not a directory")
            self._attrs(self.root_fd, b".", e, self.root_fd, False, chmod=self.is_root)
            self.dir_times.append(([], e.mtime, None if self.is_root else e.mode))
            inp.skip(e.size + tf.padding(e.size))
            return
        base = parts[-1]
        if parts[0].startswith(WH_META_PREFIX) and parts != [WH_OPAQUE]:
            inp.skip(e.size + tf.padding(e.size))        # AUFS metadata (.wh..wh.plnk/...)
            return
        if base.startswith(WH_PREFIX):
            inp.skip(e.size + tf.padding(e.size))
            self._whiteout(parts, base)
            return
        dfd, real = self._parent(parts)
        if typ in _REGULAR:
            self._file(dfd, base, e, inp)
            self.total += e.size
        elif typ == tf.DIR:
            created = self._mkdir(dfd, base, e.mode)
            self._attrs(dfd, base, e, None, False, created, chmod=self.is_root)
            self.dir_times.append((list(real) + [base], e.mtime,
                                   None if self.is_root else e.mode))
            inp.skip(e.size + tf.padding(e.size))
        elif typ == tf.SYM:
            self._create(dfd, base, lambda: os.symlink(e.linkname, base, dir_fd=dfd))
            self._attrs(dfd, base, e, None, True, 0o777)
            os.utime(base, ns=(e.mtime * 10**9,) * 2, dir_fd=dfd, follow_symlinks=False)
            inp.skip(e.size + tf.padding(e.size))
        elif typ == tf.LNK:
            self._hardlink(dfd, base, e)
            inp.skip(e.size + tf.padding(e.size))
        elif typ in _NODES:
            dev = os.makedev(e.devmajor, e.devminor)
            self.fmt.check_device(_NODES[typ], dev)
            created = self._created_mode(e.mode)
            first = 0o600 if created is None else created
            self._create(dfd, base, lambda: os.mknod(base, _NODES[typ] | first, dev, dir_fd=dfd))
            self._attrs(dfd, base, e, None, False, created)
            os.utime(base, ns=(e.mtime * 10**9,) * 2, dir_fd=dfd, follow_symlinks=False)
            inp.skip(e.size + tf.padding(e.size))
        else:
            raise CorruptArchive(f"tar entry {self.name!r} has unsupported type {typ!r}")
        self._note(real, base)

    def _file(self, dfd: int, base: bytes, e: Entry, inp: _Input) -> None:
        # the hot path of a layer: kept to the minimum of calls and syscalls
        # made with its final mode, 0000 included: the new file's fd writes anyway
        mode = e.mode
        created = None if mode & 0o7000 else mode
        first = 0o600 if created is None else created
        try:
            fd = os.open(base, _FILE_FLAGS, first, dir_fd=dfd)
        except FileExistsError:
            self._remove_existing(dfd, base)
            fd = os.open(base, _FILE_FLAGS, first, dir_fd=dfd)
        try:
            size = e.size
            padded = size + (-size % BLOCK)
            if inp.end - inp.pos >= padded:               # all in the buffer already
                chunk = inp.view[inp.pos:inp.pos + size]
                while chunk:
                    chunk = chunk[os.write(fd, chunk):]
                inp.pos += padded
            else:
                inp.copy(fd, size)
                inp.skip(padded - size)
            if (e.xattrs or created is None or self.umask is None or self.parent_sgid
                    or created & ~self.umask != mode or (e.uid, e.gid) != self.ids):
                self._attrs(dfd, base, e, fd, False, created)
            os.utime(fd, ns=(e.mtime * 1_000_000_000,) * 2)
        finally:
            os.close(fd)

    def _mkdir(self, dfd: int, base: bytes, mode: int) -> int | None:
        """Make directory ``base``; an existing one is kept (merged into) and None returned.

        As root the directory is made with its final mode (root writes into it
        anyway); otherwise 0700 so that its contents can still be created, and
        the mode is set by ``finish``.
        """
        created = self._created_mode(mode) if self.is_root else None
        first = 0o700 if created is None else created
        try:
            os.mkdir(base, first, dir_fd=dfd)
            return created
        except FileExistsError:
            st = os.stat(base, dir_fd=dfd, follow_symlinks=False)
            if stat.S_ISDIR(st.st_mode):
                return None
            self._remove_existing(dfd, base)
            os.mkdir(base, first, dir_fd=dfd)
            if self.fmt.is_whiteout(st):
                self.fmt.dir_over_whiteout(dfd, base)
            return created

    def _hardlink(self, dfd: int, base: bytes, e: Entry) -> None:
        target = _split(e.linkname, "hard link target")
        if not target:
            raise CorruptArchive(f"{self.name}: hard link to the layer root")
        try:
            tfd, _ = self._open_path(target[:-1], False, False)
        except (FileNotFoundError, NotADirectoryError):
            raise CorruptArchive(f"{self.name}: hard link target "
                                 f"{os.fsdecode(e.linkname)!r} does not exist in the layer") from None
        try:
            self._check_link_target(tfd, target[-1], e)

            def make() -> None:
                os.link(target[-1], base, src_dir_fd=tfd, dst_dir_fd=dfd, follow_symlinks=False)
            try:
                self._create(dfd, base, make)
            except FileNotFoundError:
                raise CorruptArchive(f"{self.name}: hard link target "
                                     f"{os.fsdecode(e.linkname)!r} does not exist") from None
            except PermissionError:
                raise CorruptArchive(f"{self.name}: cannot hard link to "
                                     f"{os.fsdecode(e.linkname)!r} (a directory?)") from None
        finally:
            os.close(tfd)

    def _check_link_target(self, tfd: int, name: bytes, e: Entry) -> None:
        """A deletion marker (overlay2's 0/0 device, e.g. left by an opaque marker
        earlier in the tar) is no file: a link to it would put a second marker
        where nothing is deleted, one the merged view lists but cannot stat."""
        try:
            st = os.stat(name, dir_fd=tfd, follow_symlinks=False)
        except FileNotFoundError:
            return                      # said by make() below, with the same message
        if self.fmt.is_whiteout(st):
            raise CorruptArchive(f"{self.name}: hard link target {os.fsdecode(e.linkname)!r} "
                                 "was deleted (it is a whiteout in the layer)")

    def _whiteout(self, parts: list[bytes], base: bytes) -> None:
        """``.wh.<name>`` deletes what is there now (as Docker's UnpackLayer, the same
        layer's earlier entry included); ``.wh..wh..opq`` hides what the layers
        below hold in its directory, never this tar's own entries, before or after it."""
        if base == WH_OPAQUE:
            victim = None
        elif base.startswith(WH_META_PREFIX):
            return                                       # AUFS metadata: not ours to apply
        else:
            victim = base[len(WH_PREFIX):]
            if victim in (b"", b".", b".."):
                raise CorruptArchive(f"whiteout {self.name!r} names {os.fsdecode(victim)!r}, "
                                     "which would delete outside its directory")
        where = self._whiteout_dir(parts, victim)
        if where is None:
            return
        dfd, real = where
        self.dirty = True
        if victim is None:
            self._sweep(real)
            self.fmt.apply_opaque(dfd, real)
            return
        self.fmt.apply_whiteout(dfd, victim, real)
        self.created.get(real, set()).discard(victim)

    def _whiteout_dir(self, parts: list[bytes], victim: bytes | None
                      ) -> tuple[int, tuple[bytes, ...]] | None:
        """The directory a whiteout acts in, or None when it has nothing to hide.

        A whiteout never creates anything for its own sake: its directory is
        made only where a layer below shows what it hides (overlay2's upper dir).
        """
        try:
            return self._parent(parts, create=False)
        except _NotDirectory:
            return None                 # below a file or a deleted directory: nothing there
        except _Missing as missing:
            if not self.fmt.hidden_below(missing.real, victim):
                return None
        return self._parent(parts)

    def _sweep(self, real: tuple[bytes, ...]) -> None:
        """Remove below ``real`` what this tar did not write: an opaque marker's work.

        Kept: the tar's entries, and the directories leading to them; one of
        those that the tar only implies is a new directory to the tree (0755,
        our owner), whatever the lower layers had there.
        """
        todo = [real]
        while todo:
            path = todo.pop()
            fd, _ = self._open_path(list(path), create=False, follow=False)
            try:
                own = self.created.get(path, ())
                for entry in list(os.scandir(fd)):
                    name = os.fsencode(entry.name)
                    below = path + (name,)
                    is_dir = entry.is_dir(follow_symlinks=False)
                    if name in own:
                        if is_dir:
                            todo.append(below)
                    elif is_dir and below in self.holders:
                        self._reset_implied(fd, name)
                        todo.append(below)
                    else:
                        _remove(fd, name)
            finally:
                os.close(fd)

    def _reset_implied(self, dfd: int, name: bytes) -> None:
        """Make a kept lower directory look as one the tar implies would (see _step)."""
        if self.is_root:
            os.chown(name, *self.ids, dir_fd=dfd, follow_symlinks=False)
        os.chmod(name, 0o755, dir_fd=dfd)            # a directory: chmod does not follow

    def finish(self) -> None:
        """Directory mtimes last: creating their contents changed them. When not root,
        modes last too (deepest first), so that a 0555 directory could be filled."""
        self._reset()
        # neighbours share their parents' open fds; children before their parents;
        # a directory listed twice keeps the tar's order (a stable sort)
        self.dir_times.sort(key=lambda item: item[0], reverse=True)
        for parts, mtime, mode in self.dir_times:
            ns = (mtime * 10**9,) * 2
            if not parts:
                os.utime(self.root_fd, ns=ns)
                if mode is not None:
                    os.fchmod(self.root_fd, mode)
                continue
            try:
                dfd, _ = self._parent(parts, create=False)
                if stat.S_ISDIR(os.stat(parts[-1], dir_fd=dfd, follow_symlinks=False).st_mode):
                    os.utime(parts[-1], ns=ns, dir_fd=dfd, follow_symlinks=False)
                    if mode is not None:
                        os.chmod(parts[-1], mode, dir_fd=dfd)
            except (OSError, CorruptArchive):
                self.dirty = True                 # replaced or removed later on: skip it


def _read_entries(inp: _Input, applier: _Applier) -> None:
    long_name: bytes | None = None
    long_link: bytes | None = None
    pax: dict[bytes, bytes] = {}
    pending = 0                       # metadata bytes held for the next entry
    first = True
    while True:
        if first and inp.at_eof():
            raise CorruptArchive("empty stream: not a tar archive")
        first = False
        try:
            block = inp.take(BLOCK)
        except _Truncated:
            if not applier.raw_name and not pax and long_name is None:
                raise CorruptArchive("not a tar archive: the stream is shorter than one "
                                     "tar header") from None
            raise CorruptArchive("the tar stream ended without its end-of-archive marker "
                                 f"after entry {applier.name!r} (truncated?)") from None
        if block == ZERO_BLOCK:
            return
        typ = block[156:157]
        if typ in _META:
            size = tf.meta_size(block)
            pending += size
            if pending > MAX_META:
                raise CorruptArchive(f"tar metadata (PAX or long-name headers) of more than "
                                     f"{MAX_META >> 20} MiB for one entry: refusing it")
            data = inp.take(size)
            inp.skip(tf.padding(size))
            if typ == tf.PAX_X:
                pax.update(tf.parse_pax(data))
            elif typ == tf.GNU_LONGNAME:
                long_name = data.split(b"\0", 1)[0]
            elif typ == tf.GNU_LONGLINK:
                long_link = data.split(b"\0", 1)[0]
            continue                                      # global headers are ignored
        entry = tf.decode(block)
        if long_name is not None:
            entry.name = long_name
        if long_link is not None:
            entry.linkname = long_link
        if pax:
            tf.apply_pax(entry, pax)
        long_name = long_link = None
        pax = {}
        pending = 0
        applier.entry(entry, inp)


def apply_tar(root: str | os.PathLike, stream: BinaryIO, *, fmt: WhiteoutFormat = PLAIN) -> int:
    """Unpack the tar ``stream`` into ``root``; return the sum of regular-file sizes.

    Returns only once everything unpacked is on stable storage (one syncfs of the
    filesystem: an applied layer survives a power cut from then on, as the power-cut
    tests check; a file-by-file fsync would cost one flush per file).
    Raises CorruptArchive for a truncated, malformed or hostile tar (nothing is
    ever written outside ``root``), NoSpace when the disk or quota is full.
    """
    try:
        applier = _Applier(root, fmt)
    except OSError as exc:
        raise DriverError(f"cannot unpack into {root}: {exc.strerror}") from exc
    inp = _Input(stream)
    try:
        _read_entries(inp, applier)
        applier.finish()
        inp.drain()
        sync.syncfs(applier.root_fd)
    except _Truncated as exc:
        raise CorruptArchive(f"truncated tar at {applier.name!r}: {exc}") from None
    except HeaderError as exc:
        raise CorruptArchive(f"corrupt tar after {applier.name!r}: {exc}") from None
    except (ValueError, OverflowError) as exc:       # NUL in a PAX linkpath, uid > 2**32
        raise CorruptArchive(f"bad tar entry {applier.name!r}: {exc}") from None
    except OSError as exc:
        raise from_os_error(exc, f"unpack {applier.name!r} into {root}") from exc
    finally:
        applier.close()
    return applier.total

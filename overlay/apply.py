"""Applying a layer tar to an upper (``diff``) directory: whiteouts as overlayfs needs them.

overlayfs hides a lower entry behind a 0/0 character device, and a lower
directory's contents behind ``trusted.overlay.opaque=y``, but only where it
merges: in a directory that is not merged (upper-only, or opaque) it lists a
whiteout device in readdir and then says ENOENT for it, and it ignores an
opaque xattr on the upper root. So a whiteout is made only where a lower layer
shows what it hides, and an opaque root becomes a whiteout for every name the
lowers show there (plus opaque directories where the tar's own directories
would merge with lower ones).
"""
from __future__ import annotations

import errno
import os
import stat
from typing import Sequence

from graphdrivers.archive import WhiteoutFormat
from graphdrivers.errors import CorruptArchive

from .diff import lookup, merged_names
from .whiteout import OPAQUE_XATTR, OverlayWhiteouts, is_opaque

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def _whiteout(dir_fd: int, name: bytes | str) -> None:
    # mode 0 like the kernel's own whiteouts; only the 0/0 device number matters
    os.mknod(name, stat.S_IFCHR, 0, dir_fd=dir_fd)


def _set_opaque(dir_fd: int, name: bytes | str) -> None:
    fd = os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
    try:
        os.setxattr(fd, OPAQUE_XATTR, b"y")
    finally:
        os.close(fd)


class UpperDir(OverlayWhiteouts):
    """The whiteout format for one apply into ``upper``, stacked on ``lowers``
    (the lower layers' diff dirs, nearest first)."""

    def __init__(self, upper: str | os.PathLike, lowers: Sequence[str]):
        self.upper = os.fsencode(upper)
        self.lowers = [os.fsencode(lower) for lower in lowers]

    def _merged(self, real_dir: tuple[bytes, ...]) -> list[bytes]:
        """The lower directories overlayfs merges into ``real_dir`` ([] when none)."""
        dirs, path = self.lowers, self.upper
        for comp in real_dir:
            path += b"/" + comp
            if not dirs or is_opaque(path):
                return []
            dirs = lookup(dirs, comp)[1]
        return dirs

    def _below(self, real: tuple[bytes, ...]) -> tuple[os.stat_result | None, list[bytes]]:
        """What the lowers show at ``real``, and the directories making it up."""
        dirs = self._merged(real[:-1])
        return lookup(dirs, real[-1]) if dirs else (None, [])

    def hidden_below(self, real_dir: tuple[bytes, ...], name: bytes | None) -> bool:
        if name is None:
            return bool(self._merged(real_dir))
        return self._below(real_dir + (name,))[0] is not None

    def apply_whiteout(self, dir_fd: int, name: bytes, real_dir: tuple[bytes, ...]) -> None:
        super().apply_whiteout(dir_fd, name, real_dir)
        if self.hidden_below(real_dir, name):
            _whiteout(dir_fd, name)

    def apply_opaque(self, dir_fd: int, real_dir: tuple[bytes, ...]) -> None:
        if real_dir:
            os.setxattr(dir_fd, OPAQUE_XATTR, b"y")
            return
        for name in sorted(merged_names(self.lowers)):
            try:
                st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            except FileNotFoundError:
                _whiteout(dir_fd, name)
                continue
            if stat.S_ISDIR(st.st_mode):
                _set_opaque(dir_fd, name)

    def implied_dir(self, fd: int, real: tuple[bytes, ...]) -> None:
        """As overlayfs' copy-up: a directory the lowers have keeps its mode, owner
        and xattrs in the upper dir (a plain tree keeps its directory as it is)."""
        top, dirs = self._below(real)
        if top is None or not stat.S_ISDIR(top.st_mode):
            return
        try:
            os.fchown(fd, top.st_uid, top.st_gid)
        except PermissionError:
            pass                                     # not root: the owner stays ours
        os.fchmod(fd, stat.S_IMODE(top.st_mode))
        for key in _listxattr(dirs[0]):
            if self.apply_xattr(key):
                try:
                    os.setxattr(fd, key, os.getxattr(dirs[0], key, follow_symlinks=False))
                except OSError as exc:
                    if exc.errno not in (errno.ENOTSUP, errno.EPERM, errno.ENODATA):
                        raise

    def dir_over_whiteout(self, dir_fd: int, name: bytes) -> None:
        _set_opaque(dir_fd, name)

    def check_device(self, kind: int, rdev: int) -> None:
        _refuse_whiteout_device(kind, rdev)


class MergedDir(WhiteoutFormat):
    """Applying through the overlay mount (the naive diff): the kernel makes the
    whiteouts. A 0:0 device would be one in a layer's upper dir (the kernel refuses
    it with EPERM on a mount; a base layer is no mount): refused the same way."""

    def check_device(self, kind: int, rdev: int) -> None:
        _refuse_whiteout_device(kind, rdev)


MERGED = MergedDir()


def _refuse_whiteout_device(kind: int, rdev: int) -> None:
    if kind == stat.S_IFCHR and rdev == 0:
        raise CorruptArchive("the tar holds a character device 0:0, which overlayfs "
                             "takes for a deletion marker: overlay2 cannot store it "
                             "(use another storage driver for this image)")


def _listxattr(path: bytes) -> list[str]:
    try:
        return os.listxattr(path, follow_symlinks=False)
    except OSError as exc:
        if exc.errno in (errno.ENOTSUP, errno.ENOENT):
            return []
        raise

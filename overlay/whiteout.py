"""overlayfs' on-disk deletion markers, mapped to and from OCI tar whiteouts.

On disk (kernel overlayfs): a deleted entry is a character device 0/0; a
directory whose lower contents are hidden carries ``trusted.overlay.opaque=y``.
"""
from __future__ import annotations

import os
import stat

from graphdrivers.archive import WhiteoutFormat
from graphdrivers.archive_whiteout import _remove

OPAQUE_XATTR = "trusted.overlay.opaque"
REDIRECT_XATTR = "trusted.overlay.redirect"
METACOPY_XATTR = "trusted.overlay.metacopy"


def is_whiteout(st: os.stat_result) -> bool:
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


def is_opaque(path: str | os.PathLike | int) -> bool:
    try:
        return os.getxattr(path, OPAQUE_XATTR, follow_symlinks=False) == b"y"
    except OSError:
        return False


def has_xattr(path: str | os.PathLike, name: str) -> bool:
    try:
        os.getxattr(path, name, follow_symlinks=False)
        return True
    except OSError:
        return False


class OverlayWhiteouts(WhiteoutFormat):
    """Whiteouts as overlayfs stores them in an upper (``diff``) directory."""

    def apply_whiteout(self, dir_fd: int, name: str) -> None:
        _remove(dir_fd, name)
        # mode 0 like the kernel's own whiteouts; only the 0/0 device number matters
        os.mknod(name, stat.S_IFCHR, 0, dir_fd=dir_fd)

    def apply_opaque(self, dir_fd: int, keep: set[str]) -> None:
        super().apply_opaque(dir_fd, keep)
        os.setxattr(dir_fd, OPAQUE_XATTR, b"y")

    def export_whiteout(self, path: str, st: os.stat_result) -> bool:
        return is_whiteout(st)

    def export_opaque(self, dir_path: str) -> bool:
        return is_opaque(dir_path)


OVERLAY = OverlayWhiteouts()

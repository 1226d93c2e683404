"""overlayfs' on-disk deletion markers, mapped to and from OCI tar whiteouts.

On disk (kernel overlayfs): a deleted entry is a character device 0/0; a
directory whose lower contents are hidden carries ``trusted.overlay.opaque=y``.
"""
from __future__ import annotations

import os
import stat

from graphdrivers.archive import WhiteoutFormat

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
    """Whiteouts as overlayfs stores them in an upper (``diff``) directory: exported.
    Applying a tar needs the lower layers too: see ``apply.UpperDir``."""

    def is_whiteout(self, st: os.stat_result) -> bool:
        return is_whiteout(st)

    def export_whiteout(self, path: str, st: os.stat_result) -> bool:
        return is_whiteout(st)

    def export_opaque(self, dir_path: str) -> bool:
        return is_opaque(dir_path)


OVERLAY = OverlayWhiteouts()

"""How a driver stores deletions on disk, and how they map to OCI tar whiteouts.

The wire format is always the OCI/AUFS one: ``<dir>/.wh.<name>`` deletes
``<name>``, ``<dir>/.wh..wh..opq`` makes ``<dir>`` opaque. A driver whose
layers are full trees (vfs, btrfs, devicemapper) uses PLAIN: whiteouts are
applied as deletions and never exported from disk. overlay2 subclasses this
to keep 0/0 character devices and ``trusted.overlay.opaque`` instead.
"""
from __future__ import annotations

import os
import shutil

WH_PREFIX = b".wh."
WH_META_PREFIX = b".wh..wh."
WH_OPAQUE = b".wh..wh..opq"


def _remove(dir_fd: int, name: str | bytes) -> None:
    """Remove ``name`` (any type, recursively) inside ``dir_fd`` without following symlinks."""
    try:
        os.unlink(name, dir_fd=dir_fd)
    except FileNotFoundError:
        return
    except IsADirectoryError:
        shutil.rmtree(name, dir_fd=dir_fd)
    except PermissionError:
        # unlink(2) of a directory is EISDIR on Linux, but EPERM on some filesystems
        if not os.path.isdir(os.path.join(f"/proc/self/fd/{dir_fd}", os.fsdecode(name))):
            raise
        shutil.rmtree(name, dir_fd=dir_fd)


class WhiteoutFormat:
    """Hooks the archive code calls; the defaults are the plain-tree behaviour."""

    def apply_whiteout(self, dir_fd: int, name: str) -> None:
        """The tar had ``<dir>/.wh.<name>``: delete ``name`` in the directory ``dir_fd``."""
        _remove(dir_fd, name)

    def apply_opaque(self, dir_fd: int, keep: set[str]) -> None:
        """The tar had ``<dir>/.wh..wh..opq``: delete every entry not created by this tar."""
        for entry in os.scandir(dir_fd):
            if entry.name not in keep:
                _remove(dir_fd, entry.name)

    def apply_xattr(self, name: str) -> bool:
        """Whether an xattr from the tar is set on disk (never overlayfs' own)."""
        return not name.startswith("trusted.overlay.")

    def export_whiteout(self, path: str, stat: os.stat_result) -> bool:
        """True if this on-disk entry is a deletion marker, exported as ``.wh.<name>``."""
        return False

    def export_opaque(self, dir_path: str) -> bool:
        """True if ``<dir>/.wh..wh..opq`` is emitted after this directory's entry."""
        return False

    def export_xattr(self, name: str) -> bool:
        """Whether an on-disk xattr is written to the tar."""
        return not name.startswith("trusted.overlay.")


PLAIN = WhiteoutFormat()

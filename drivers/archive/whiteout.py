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

# xattrs that steer the kernel's overlayfs (opaque, redirect, metacopy, origin): any
# layer's tree can end up as an overlay lower dir (an engine's own mount, a copy
# made by a user), so no tar sets them and no export carries them, whatever the driver
KERNEL_CONTROL_XATTRS = ("trusted.overlay.",)


def is_control_xattr(name: str) -> bool:
    return name.startswith(KERNEL_CONTROL_XATTRS)


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
    """Hooks the archive code calls; the defaults are the plain-tree behaviour.

    Paths given to the apply hooks (``real``) are tuples of bytes components from
    the root, symlinks resolved: where the entry really is in the tree.
    """

    def hidden_below(self, real_dir: tuple[bytes, ...], name: bytes | None) -> bool:
        """Whether layers below this tree show ``name`` in ``real_dir`` (None: any
        entry there). A plain tree holds everything there is: never."""
        return False

    def apply_whiteout(self, dir_fd: int, name: bytes, real_dir: tuple[bytes, ...]) -> None:
        """The tar had ``<dir>/.wh.<name>``: delete ``name`` in the directory ``dir_fd``."""
        _remove(dir_fd, name)

    def apply_opaque(self, dir_fd: int, real_dir: tuple[bytes, ...]) -> None:
        """The tar had ``<dir>/.wh..wh..opq``; everything in the directory that the
        tar did not write is gone already. A plain tree needs nothing more."""

    def implied_dir(self, fd: int, real: tuple[bytes, ...]) -> None:
        """A directory the tar implies (no entry of its own) was just made, 0755."""

    def is_whiteout(self, st: os.stat_result) -> bool:
        """Whether this on-disk entry is a deletion marker (never, in a plain tree)."""
        return False

    def dir_over_whiteout(self, dir_fd: int, name: bytes) -> None:
        """A directory was made where a deletion marker was: it must not show what
        the marker hid."""

    def check_device(self, kind: int, rdev: int) -> None:
        """Refuse (CorruptArchive) a device node this format cannot store as one."""

    def apply_xattr(self, name: str) -> bool:
        """Whether an xattr from the tar is set on disk (never one that steers the kernel)."""
        return not is_control_xattr(name)

    def export_whiteout(self, path: str, stat: os.stat_result) -> bool:
        """True if this on-disk entry is a deletion marker, exported as ``.wh.<name>``."""
        return False

    def export_opaque(self, dir_path: str) -> bool:
        """True if ``<dir>/.wh..wh..opq`` is emitted after this directory's entry."""
        return False

    def export_xattr(self, name: str) -> bool:
        """Whether an on-disk xattr is written to the tar."""
        return not is_control_xattr(name)


PLAIN = WhiteoutFormat()

"""Which filesystem holds a path: statfs(2) magic numbers, named as `docker info` names them."""
from __future__ import annotations

import ctypes
import os

BTRFS_MAGIC = 0x9123683E
OVERLAY_MAGIC = 0x794C7630

FS_NAMES = {
    BTRFS_MAGIC: "btrfs", 0xEF53: "extfs", 0x58465342: "xfs", OVERLAY_MAGIC: "overlayfs",
    0x01021994: "tmpfs", 0x2FC12FC1: "zfs", 0x6969: "nfs", 0x61756673: "aufs",
    0xF15F: "ecryptfs", 0x65735546: "fuse", 0x73717368: "squashfs", 0xF2F52010: "f2fs",
    0x858458F6: "ramfs", 0x5346544E: "ntfs", 0x4D44: "msdos", 0xFF534D42: "cifs",
    0xFE534D42: "smb2", 0x28CD3D45: "cramfs", 0x3153464A: "jfs", 0x52654973: "reiserfs",
}


class _Statfs(ctypes.Structure):
    _fields_ = [("f_type", ctypes.c_long), ("rest", ctypes.c_long * 15)]


_libc = ctypes.CDLL(None, use_errno=True)
_libc.statfs.argtypes = [ctypes.c_char_p, ctypes.c_void_p]


def existing_ancestor(path: str | os.PathLike) -> str:
    """``path`` itself, or its nearest ancestor that exists (a home not yet created)."""
    path = os.path.abspath(path)
    while not os.path.exists(path) and path != os.path.dirname(path):
        path = os.path.dirname(path)
    return path


def fs_magic(path: str | os.PathLike) -> int:
    """statfs(2) f_type of the filesystem holding ``path`` (or its nearest existing ancestor)."""
    target = existing_ancestor(path)
    buf = _Statfs()
    if _libc.statfs(os.fsencode(target), ctypes.byref(buf)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"statfs {target}: {os.strerror(err)}", target)
    return buf.f_type & 0xFFFFFFFF


def fs_name(path: str | os.PathLike) -> str:
    """"extfs", "xfs", "btrfs", ... for the filesystem holding ``path``."""
    magic = fs_magic(path)
    return FS_NAMES.get(magic, f"<unknown {magic:#x}>")

"""syncfs(2): one flush of a whole filesystem (Python's os module has no syncfs)."""
from __future__ import annotations

import ctypes
import os

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syncfs.argtypes = [ctypes.c_int]


def syncfs(fd: int) -> None:
    """Write back everything dirty on the filesystem holding ``fd`` and flush the disk's
    cache (an fsync per file costs one flush each; this is one for all)."""
    if _libc.syncfs(fd) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"syncfs: {os.strerror(err)}")

"""fallocate(2) with FALLOC_FL_KEEP_SIZE: blocks for later appends, the length unchanged."""
from __future__ import annotations

import ctypes
import errno
import os

_KEEP_SIZE = 1
# the process's own symbols, as kernel/mount.py: ctypes.util.find_library runs ldconfig
# and gcc in subprocesses, which cost every command 20 ms or more at import
_libc = ctypes.CDLL(None, use_errno=True)
_libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
_libc.fallocate.restype = ctypes.c_int


def reserve(fd: int, size: int) -> bool:
    """Allocate the file's blocks up to ``size`` bytes, keeping its length; best effort:
    False on a full disk or a filesystem without fallocate (then appends allocate)."""
    if _libc.fallocate(fd, _KEEP_SIZE, 0, size) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSPC, errno.EDQUOT, errno.EOPNOTSUPP, errno.ENOSYS):
        return False
    raise OSError(err, os.strerror(err))

"""Reflinks: one file's extents shared by another with FICLONE (btrfs, xfs with reflink)."""
from __future__ import annotations

import errno
import fcntl

FICLONE = 0x40049409      # _IOW(0x94, 9, int) in linux/fs.h
# what a filesystem or pair of files that cannot share extents answers
_CANNOT_CLONE = {errno.EOPNOTSUPP, errno.ENOTTY, errno.EXDEV, errno.EINVAL, errno.ENOSYS,
                 errno.EPERM}


def clone_file(src_fd: int, dst_fd: int) -> bool:
    """Make ``dst_fd`` share all of ``src_fd``'s extents; False where the filesystem cannot."""
    try:
        fcntl.ioctl(dst_fd, FICLONE, src_fd)
    except OSError as exc:
        if exc.errno in _CANNOT_CLONE:
            return False
        raise
    return True

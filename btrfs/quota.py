"""btrfs qgroup quotas for the ``size`` storage option (Docker's semantics).

A layer's limit is its level-0 qgroup's max referenced bytes (shared data
included). Quotas are switched on when first needed and never switched off:
they are a filesystem-wide setting that other users of the filesystem rely on
(moby#34593 was Docker disabling them on cleanup).
"""
from __future__ import annotations

import errno
import os

from . import ioctl


def _open(path: str | os.PathLike) -> int:
    return os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)


def enabled(path: str | os.PathLike) -> bool:
    """True if quotas are on for the filesystem holding ``path`` (a QGROUP_STATUS item exists)."""
    fd = _open(path)
    try:
        for _item in ioctl.tree_search(fd, ioctl.QUOTA_TREE_OBJECTID, (0, ioctl.QGROUP_STATUS_KEY, 0),
                                       (0, ioctl.QGROUP_STATUS_KEY, ioctl.U64_MAX)):
            return True
        return False
    except OSError as exc:
        if exc.errno == errno.ENOENT:   # no quota tree at all
            return False
        if exc.errno == errno.EPERM:    # tree search needs CAP_SYS_ADMIN: cannot tell
            return False
        raise
    finally:
        os.close(fd)


def enable(path: str | os.PathLike) -> None:
    """Turn quotas on (no-op when already on) and wait for the initial rescan."""
    if enabled(path):
        return
    fd = _open(path)
    try:
        ioctl.quota_ctl(fd, ioctl.QUOTA_ENABLE)
        try:
            ioctl.quota_rescan_wait(fd)
        except OSError:
            pass
    finally:
        os.close(fd)


def set_limit(subvolume: str | os.PathLike, size: int) -> None:
    """Limit the referenced bytes of ``subvolume``'s own qgroup (0/<id>) to ``size``."""
    fd = _open(subvolume)
    try:
        qgroupid = ioctl.subvol_info(fd).id          # level 0: qgroupid == subvolume id
        ioctl.qgroup_limit(fd, qgroupid, size)
    finally:
        os.close(fd)


def destroy(fs_path: str | os.PathLike, subvolume_id: int) -> bool:
    """Destroy qgroup 0/<subvolume_id>. True when it is gone (now or already, or
    quotas are off); False when the kernel keeps it for now (EBUSY: kernels that
    refuse while the deleted subvolume is still being cleaned) - try again later."""
    fd = _open(fs_path)
    try:
        ioctl.qgroup_destroy(fd, subvolume_id)
        return True
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ENOTCONN):
            return True
        if exc.errno in (errno.EBUSY, errno.EINVAL):
            return False
        raise
    finally:
        os.close(fd)

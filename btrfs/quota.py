"""btrfs qgroup quotas for the ``size`` storage option (Docker's semantics).

A layer's limit is its level-0 qgroup's max referenced bytes (shared data
included). Quotas are switched on when first needed and never switched off:
they are a filesystem-wide setting that other users of the filesystem rely on
(moby#34593 was Docker disabling them on cleanup).
"""
from __future__ import annotations

import errno
import os
import struct

from . import ioctl
from .structs import QGROUP_INFO_ITEM, QGROUP_STATUS_ITEM

STATUS_INCONSISTENT = 1 << 2     # BTRFS_QGROUP_STATUS_FLAG_INCONSISTENT
STATUS_SIMPLE_MODE = 1 << 3      # BTRFS_QGROUP_STATUS_FLAG_SIMPLE_MODE (simple quotas, >= 6.7)
_U64 = struct.Struct("=Q")


def _open(path: str | os.PathLike) -> int:
    return os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)


def _status_flags(fd: int) -> int | None:
    """The QGROUP_STATUS item's flags; None when quotas are off (no item)."""
    for item in ioctl.tree_search(fd, ioctl.QUOTA_TREE_OBJECTID, (0, ioctl.QGROUP_STATUS_KEY, 0),
                                  (0, ioctl.QGROUP_STATUS_KEY, ioctl.U64_MAX), buf_size=4096):
        # one field by offset: the item is longer with simple quotas (enable_gen)
        return _U64.unpack_from(item.data, QGROUP_STATUS_ITEM.offset("flags"))[0]
    return None


def _usage(fd: int, qgroupid: int) -> tuple[int, int, int, int] | None:
    """rfer, rfer_cmpr, excl, excl_cmpr of ``qgroupid`` as last committed; None if it has no info item."""
    for item in ioctl.tree_search(fd, ioctl.QUOTA_TREE_OBJECTID, (0, ioctl.QGROUP_INFO_KEY, qgroupid),
                                  (0, ioctl.QGROUP_INFO_KEY, qgroupid), buf_size=4096):
        info = QGROUP_INFO_ITEM.unpack(item.data)
        return info.rfer, info.rfer_cmpr, info.excl, info.excl_cmpr
    return None


def enabled(path: str | os.PathLike) -> bool:
    """True if quotas are on for the filesystem holding ``path`` (a QGROUP_STATUS item exists)."""
    fd = _open(path)
    try:
        return _status_flags(fd) is not None
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


def subvolume_qgroups(path: str | os.PathLike) -> list[int]:
    """The level-0 qgroups (0/<subvolume id>) of the filesystem holding ``path``, from
    their info items; empty when quotas are off."""
    fd = _open(path)
    try:
        return sorted(item.offset for item in ioctl.tree_search(
            fd, ioctl.QUOTA_TREE_OBJECTID, (0, ioctl.QGROUP_INFO_KEY, ioctl.FIRST_FREE_OBJECTID),
            (0, ioctl.QGROUP_INFO_KEY, (1 << 48) - 1), buf_size=65536)
            if item.type == ioctl.QGROUP_INFO_KEY)
    except OSError as exc:
        if exc.errno == errno.ENOENT:   # no quota tree
            return []
        raise
    finally:
        os.close(fd)


def consistent(path: str | os.PathLike) -> bool:
    """False when the kernel has marked the qgroup numbers out of date. It then stops
    accounting (no limit is enforced on the whole filesystem) until a rescan."""
    fd = _open(path)
    try:
        return not (_status_flags(fd) or 0) & STATUS_INCONSISTENT
    finally:
        os.close(fd)


def destroy(fs_path: str | os.PathLike, subvolume_id: int) -> bool:
    """Destroy qgroup 0/<subvolume_id> of a deleted subvolume. True when it is gone
    (now or already, or quotas are off); False when it must wait - try again later.

    It waits while its committed numbers are not zero: the cleaner has not dropped
    the subvolume yet, or has deleted its root item but not committed the freed
    extents. Kernels with qgroup auto-removal (839d6ea4f86d, 2024; 6.18 here) let
    the destroy through in that second window and then mark every qgroup
    inconsistent ("to be deleted qgroup ... has non-zero numbers"), which stops all
    accounting: no limit on the filesystem holds until a rescan. Their own removal
    after the drop commits first, as waiting for zero does here. Numbers already
    inconsistent, or simple quotas' (kept for shared extents), are left to the
    kernel to judge (EBUSY)."""
    fd = _open(fs_path)
    try:
        flags = _status_flags(fd)
        if flags is None:
            return True                      # quotas are off: there are no qgroups
        if not flags & (STATUS_INCONSISTENT | STATUS_SIMPLE_MODE):
            usage = _usage(fd, subvolume_id)
            if usage is None:
                return True                  # gone (>= 6.10 removes it after the drop)
            if any(usage):
                return False
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

"""XFS project quotas for the ``size`` option: one project id per read-write layer.

A layer directory gets its own project id with the inherit flag, so every
file written into its upper dir is charged to that project; the block hard
limit is the layer's size. Everything goes through ioctls and quotactl_fd(2)
on a file descriptor of the home (kernel >= 5.14): no quota tools, no device
node.
"""
from __future__ import annotations

import ctypes
import fcntl
import os
import struct
from pathlib import Path

from graphdrivers.kernel.statfs import fs_name

SYS_QUOTACTL_FD = 443
PRJQUOTA = 2
Q_XGETQSTAT = (ord("X") << 8) + 5
Q_XSETQLIM = (ord("X") << 8) + 4
Q_XGETQUOTA = (ord("X") << 8) + 3
FS_QUOTA_PDQ_ACCT = 1 << 4
FS_QUOTA_PDQ_ENFD = 1 << 5
FS_DQUOT_VERSION = 1
FS_PROJ_QUOTA = 2
FS_DQ_BSOFT = 1 << 2
FS_DQ_BHARD = 1 << 3

FS_IOC_FSGETXATTR = 0x801C581F
FS_IOC_FSSETXATTR = 0x401C5820
FS_XFLAG_PROJINHERIT = 0x200
_FSXATTR = struct.Struct("=IIIII8x")        # xflags, extsize, nextents, projid, cowextsize
# struct fs_disk_quota: version, flags, fieldmask, id, blk hard/soft, ino hard/soft, counts...
_DISK_QUOTA = struct.Struct("=bbHIQQQQQQiiHHbbbbQQQiHh8x")

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


def _quotactl_fd(fd: int, cmd: int, qid: int, buf: ctypes.Array) -> None:
    if _libc.syscall(SYS_QUOTACTL_FD, ctypes.c_uint(fd), ctypes.c_uint((cmd << 8) | PRJQUOTA),
                     ctypes.c_int(qid), buf) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"quotactl: {os.strerror(err)}")


def get_projid(path: str | os.PathLike) -> int:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        buf = bytearray(_FSXATTR.size)
        fcntl.ioctl(fd, FS_IOC_FSGETXATTR, buf)
        return _FSXATTR.unpack(buf)[3]
    finally:
        os.close(fd)


def set_projid(path: str | os.PathLike, projid: int) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        buf = bytearray(_FSXATTR.size)
        fcntl.ioctl(fd, FS_IOC_FSGETXATTR, buf)
        xflags, extsize, nextents, _, cow = _FSXATTR.unpack(buf)
        fcntl.ioctl(fd, FS_IOC_FSSETXATTR,
                    _FSXATTR.pack(xflags | FS_XFLAG_PROJINHERIT, extsize, nextents, projid, cow))
    finally:
        os.close(fd)


class QuotaControl:
    """Project quotas under one home on an XFS filesystem mounted with pquota/prjquota."""

    def __init__(self, home: Path):
        self.home = home
        self._fd = os.open(home, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        self.base = get_projid(home)
        self._next = self.base + 1

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def note_existing(self, layer_dir: Path) -> None:
        """Account an existing layer's project id so new ids do not collide after a restart."""
        try:
            projid = get_projid(layer_dir)
        except OSError:
            return
        if projid >= self._next:
            self._next = projid + 1

    def set_quota(self, directory: Path, size: int) -> int:
        """Give ``directory`` a fresh project id limited to ``size`` bytes; return the id."""
        projid = self._next
        self._next += 1
        set_projid(directory, projid)
        blocks = (size + 511) // 512          # quota limits count 512-byte basic blocks
        record = _DISK_QUOTA.pack(FS_DQUOT_VERSION, FS_PROJ_QUOTA, FS_DQ_BSOFT | FS_DQ_BHARD,
                                  projid, blocks, blocks, 0, 0, 0, 0, 0, 0, 0, 0,
                                  0, 0, 0, 0, 0, 0, 0, 0, 0, 0)
        buf = ctypes.create_string_buffer(record, len(record))
        _quotactl_fd(self._fd, Q_XSETQLIM, projid, buf)
        return projid

    def get_limit(self, directory: Path) -> int:
        """The block hard limit in bytes of ``directory``'s project (0: none)."""
        projid = get_projid(directory)
        buf = ctypes.create_string_buffer(_DISK_QUOTA.size)
        _quotactl_fd(self._fd, Q_XGETQUOTA, projid, buf)
        return _DISK_QUOTA.unpack(buf.raw)[4] * 512


def open_control(home: Path) -> tuple[QuotaControl | None, str]:
    """A QuotaControl for ``home``, or None and the reason quotas cannot work there."""
    backing = fs_name(home)
    if backing != "xfs":
        return None, (f"the size option needs the home on XFS mounted with the pquota option; "
                      f"{home} is on {backing}")
    try:
        fd = os.open(home, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        return None, f"cannot open {home}: {exc.strerror}"
    try:
        buf = ctypes.create_string_buffer(128)
        try:
            _quotactl_fd(fd, Q_XGETQSTAT, 0, buf)
        except OSError as exc:
            return None, (f"project quotas unavailable on {home} ({exc.strerror}); mount the "
                          "XFS filesystem with -o pquota")
        flags = struct.unpack_from("=bbH", buf.raw)[2]
        if not flags & FS_QUOTA_PDQ_ACCT or not flags & FS_QUOTA_PDQ_ENFD:
            return None, (f"the XFS filesystem of {home} is not mounted with project quota "
                          "enforcement; mount it with -o pquota (or prjquota)")
    finally:
        os.close(fd)
    try:
        return QuotaControl(home), ""
    except OSError as exc:
        return None, f"cannot read project ids in {home}: {exc.strerror}"

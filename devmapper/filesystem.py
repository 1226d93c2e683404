"""The filesystem on the thin devices: mkfs at base creation, growth, mount, discard.

mkfs, blkid and the grow tools run as subprocesses, but only when the base
device is created or a device grows, never per layer operation.
"""
from __future__ import annotations

import errno
import fcntl
import os
import shutil
import struct
import subprocess
from pathlib import Path

from graphdrivers.errors import DriverError
from graphdrivers.kernel import mount as _mount

BLKGETSIZE64 = 0x80081272
BLKDISCARD = 0x1277


def default_fs() -> str:
    """xfs when mkfs.xfs is installed (Docker's choice), else ext4."""
    return "xfs" if _tool("mkfs.xfs") else "ext4"


def _tool(name: str) -> str | None:
    return shutil.which(name) or next((f"{d}/{name}" for d in ("/usr/sbin", "/sbin")
                                       if os.access(f"{d}/{name}", os.X_OK)), None)


def _run(argv: list[str], what: str) -> str:
    tool = _tool(argv[0])
    if tool is None:
        raise DriverError(f"devicemapper: {argv[0]} is not installed; it is needed to {what}")
    result = subprocess.run([tool, *argv[1:]], capture_output=True, text=True)
    if result.returncode != 0:
        raise DriverError(f"devicemapper: {' '.join(argv)} failed ({what}): "
                          f"{(result.stderr or result.stdout).strip()}")
    return result.stdout


def mkfs(device: str, fs: str, extra: list[str]) -> None:
    if fs == "xfs":
        # -K: no discard pass (the thin device is fresh, all of it unmapped)
        _run(["mkfs.xfs", "-q", "-f", "-K", *extra, device], "create the base filesystem")
    else:
        args = ["-q", "-F", "-E", "nodiscard,lazy_itable_init=0,lazy_journal_init=0"]
        _run(["mkfs.ext4", *args, *extra, device], "create the base filesystem")


def uuid(device: str) -> str:
    return _run(["blkid", "-p", "-s", "UUID", "-o", "value", device], "read the base UUID").strip()


# xfs: XFS_IOC_FSGEOMETRY_V1 (_IOR('X', 100, 112 bytes)), XFS_IOC_FSGROWFSDATA (_IOW('X', 110, 16))
XFS_IOC_FSGEOMETRY_V1 = 0x80705864
XFS_IOC_FSGROWFSDATA = 0x4010586E
EXT4_IOC_RESIZE_FS = 0x40086610     # _IOW('f', 16, __u64): new block count


def grow(device: str, mountpoint: Path, fs: str) -> None:
    """Grow the mounted filesystem to the device's size (online, one ioctl, no xfs_growfs)."""
    size = device_size(device)
    fd = os.open(mountpoint, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        if fs == "xfs":
            geometry = fcntl.ioctl(fd, XFS_IOC_FSGEOMETRY_V1, bytes(112))
            blocksize, = struct.unpack_from("I", geometry, 0)
            imaxpct, = struct.unpack_from("I", geometry, 28)
            datablocks, = struct.unpack_from("Q", geometry, 32)
            if size // blocksize > datablocks:
                fcntl.ioctl(fd, XFS_IOC_FSGROWFSDATA, struct.pack("QI4x", size // blocksize, imaxpct))
        else:
            blocksize = os.statvfs(mountpoint).f_frsize
            try:
                fcntl.ioctl(fd, EXT4_IOC_RESIZE_FS, struct.pack("Q", size // blocksize))
            except OSError as exc:
                if exc.errno not in (errno.ENOTTY, errno.EOPNOTSUPP):
                    raise
                _run(["resize2fs", device], "grow the filesystem")   # old kernels
    except OSError as exc:
        raise DriverError(f"devicemapper: growing the {fs} filesystem on {device} to {size} "
                          f"bytes failed: {exc.strerror}") from exc
    finally:
        os.close(fd)


def mount(device: str, mountpoint: Path, fs: str, options: str) -> None:
    try:
        _mount.mount(device, mountpoint, fs, 0, options or None)
    except OSError as exc:
        missing = [p for p in (device, str(mountpoint)) if not os.path.exists(p)]
        hint = f" ({' and '.join(missing)} missing)" if missing else "; see dmesg"
        raise DriverError(f"devicemapper: mounting {device} ({fs}, options {options!r}) on "
                          f"{mountpoint} failed: {exc.strerror}{hint}") from exc


def device_size(device: str) -> int:
    fd = os.open(device, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return struct.unpack("Q", fcntl.ioctl(fd, BLKGETSIZE64, b"\0" * 8))[0]
    finally:
        os.close(fd)


def discard(device: str, length: int | None = None) -> None:
    """BLKDISCARD the device (its first ``length`` bytes): the pool unmaps the blocks and,
    for blocks no other device shares, punches them out of a loop file."""
    fd = os.open(device, os.O_WRONLY | os.O_CLOEXEC)
    try:
        size = struct.unpack("Q", fcntl.ioctl(fd, BLKGETSIZE64, b"\0" * 8))[0]
        if length is not None:
            size = min(size, -(-length // 4096) * 4096)
        fcntl.ioctl(fd, BLKDISCARD, struct.pack("QQ", 0, size))
    finally:
        os.close(fd)


def set_xfs_nospace_retries(device: str, retries: int) -> None:
    """dm.xfs_nospace_max_retries: how often xfs retries metadata writes on ENOSPC."""
    st = os.stat(device)
    name = os.path.basename(os.path.realpath(f"/sys/dev/block/{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}"))
    path = Path(f"/sys/fs/xfs/{name}/error/metadata/ENOSPC/max_retries")
    try:
        path.write_text(f"{retries}\n")
    except OSError as exc:
        raise DriverError(f"devicemapper: setting {path} for dm.xfs_nospace_max_retries: {exc}") from exc

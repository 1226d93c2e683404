"""Checks of block devices an operator hands us (dm.datadev, dm.metadatadev, dm.directlvm_device).

Read from sysfs and /proc/self/mountinfo (no udev needed, works in containers and
the test VM); ``blkid`` runs once per device at pool creation to find an
existing filesystem signature. Nothing here writes to a device.
"""
from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

from graphdrivers.errors import InvalidOption
from graphdrivers.kernel.mount import mountinfo


def device_numbers(path: str) -> tuple[int, int]:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise InvalidOption(f"block device {path} does not exist") from None
    if not stat.S_ISBLK(st.st_mode):
        raise InvalidOption(f"{path} is not a block device")
    return os.major(st.st_rdev), os.minor(st.st_rdev)


def sysfs_dir(path: str) -> Path:
    major, minor = device_numbers(path)
    return Path(os.path.realpath(f"/sys/dev/block/{major}:{minor}"))


def size_bytes(path: str) -> int:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return os.lseek(fd, 0, os.SEEK_END)
    finally:
        os.close(fd)


def holders(path: str) -> list[str]:
    try:
        return sorted(os.listdir(sysfs_dir(path) / "holders"))
    except FileNotFoundError:
        return []


def partitions(path: str) -> list[str]:
    base = sysfs_dir(path)
    return sorted(entry.name for entry in os.scandir(base)
                  if entry.is_dir() and (Path(entry.path) / "partition").exists())


def mounted_at(path: str) -> list[str]:
    major, minor = device_numbers(path)
    key = f"{major}:{minor}"
    return sorted({m.mountpoint for m in mountinfo() if m.major_minor == key})


def filesystem_type(path: str) -> str | None:
    """The signature blkid finds on the device (a filesystem, LVM PV, RAID member...), or None."""
    blkid = shutil.which("blkid") or "/sbin/blkid"
    result = subprocess.run([blkid, "-p", "-o", "export", path], capture_output=True, text=True)
    for line in result.stdout.splitlines():
        key, _, value = line.partition("=")
        if key == "TYPE":
            return value
    return None


def check_unused(path: str, what: str, *, allow_signature: bool = False) -> None:
    """Refuse a device that is mounted, partitioned, held by another device, or formatted."""
    if partitions(path):
        raise InvalidOption(f"{what} {path} has partitions ({', '.join(partitions(path))}); "
                            "give a whole unused disk or one partition")
    if mounted_at(path):
        raise InvalidOption(f"{what} {path} is mounted at {', '.join(mounted_at(path))}; "
                            "unmount it first (its data would be destroyed)")
    if holders(path):
        raise InvalidOption(f"{what} {path} is in use by {', '.join(holders(path))} "
                            "(device-mapper, RAID or LVM); free it first")
    if not allow_signature:
        fs = filesystem_type(path)
        if fs:
            raise InvalidOption(f"{what} {path} holds a {fs} signature; wipe it "
                                f"(wipefs -a {path}) if its content may be destroyed")

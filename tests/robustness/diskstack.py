"""Disks for the reliability tests in the VM: a driver home on a device-mapper device.

``Disk`` puts a driver's home on a block device (for devicemapper: its home, its
pool's metadata and its pool's data as three slices of that one device, so that
one device sees all of their writes in order); the power-cut and I/O-error tests
put dm-log-writes, dm-error or a snapshot under it.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import stat
import subprocess
from pathlib import Path

import pytest

from graphdrivers.kernel import mount

MB = 1 << 20
DISK = 384 * MB
# devicemapper's slices of the disk: its home, the pool's metadata, the pool's data
DM_SLICES = (("home", 0, 64 * MB), ("meta", 64 * MB, 32 * MB), ("data", 96 * MB, DISK - 96 * MB))


def tree_digest(root: Path) -> dict[str, tuple]:
    """What a layer shows: every name with its type, mode, and content hash or target."""
    found: dict[str, tuple] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath, name)
            st = path.lstat()
            rel = str(path.relative_to(root))
            if stat.S_ISREG(st.st_mode):
                found[rel] = ("f", st.st_mode, hashlib.sha256(path.read_bytes()).hexdigest())
            elif stat.S_ISLNK(st.st_mode):
                found[rel] = ("l", os.readlink(path))
            else:
                found[rel] = ("o", st.st_mode)
    return found


def digest_of(drv, layer: str) -> dict[str, tuple]:
    root = Path(drv.mount(layer))
    try:
        return tree_digest(root)
    finally:
        drv.unmount(layer)


def settle() -> None:
    """Let udev finish with new device-mapper nodes: it may replace the one we made,
    and a driver that looks for the node meanwhile finds none (seen in the VM)."""
    subprocess.run(["udevadm", "settle", "--timeout=10"], capture_output=True)


def require_targets(*targets: str) -> None:
    """Skip where the kernel has no device-mapper, or not these targets of it."""
    from graphdrivers.devmapper import dm
    reason = dm.available()
    if reason:
        pytest.skip(f"these tests need device-mapper: {reason}")
    for target in targets:
        subprocess.run(["modprobe", f"dm-{target}"], capture_output=True)
    missing = [t for t in targets if dm.target_version(t) is None]
    if missing:
        pytest.skip(f"this kernel has no device-mapper {', '.join(missing)} target")


class Disk:
    """The devices a driver's home lives on: the filesystem(s) and its options."""

    def __init__(self, driver_name: str, device: str, tmp_path: Path, tag: str):
        self.driver_name, self.device, self.tag = driver_name, device, tag
        self.mnt = tmp_path / f"mnt-{tag}"
        self.slices: list[str] = []

    @contextlib.contextmanager
    def mounted(self, *, make: bool):
        from graphdrivers.devmapper import dm
        self.mnt.mkdir(exist_ok=True)
        before = set(dm.list_devices())
        fs_device = self.device
        if self.driver_name == "devicemapper":
            for name, start, length in DM_SLICES:
                dm.create(f"gdpc-{self.tag}-{name}", [(0, length // 512, "linear",
                                                       f"{self.device} {start // 512}")])
                self.slices.append(f"gdpc-{self.tag}-{name}")
            settle()
            fs_device = dm.device_path(f"gdpc-{self.tag}-home")
        fstype = "btrfs" if self.driver_name == "btrfs" else "ext4"
        try:
            if make:
                force = "-f" if fstype == "btrfs" else "-F"
                made = subprocess.run([f"mkfs.{fstype}", "-q", force, fs_device],
                                      capture_output=True, text=True)
                assert made.returncode == 0, f"mkfs.{fstype} {fs_device}: {made.stderr}"
            mount.mount(fs_device, self.mnt, fstype, 0, None)
            try:
                yield self.mnt / "home", self.options()
            finally:
                mount.unmount_all_under(self.mnt)
        finally:
            from graphdrivers.devmapper.testing import teardown
            teardown(self.mnt, keep=before)         # the pool and its thin devices
            for name in reversed(self.slices):
                dm.remove(name)
            self.slices.clear()

    def options(self) -> dict[str, str]:
        if self.driver_name != "devicemapper":
            return {}
        from graphdrivers.devmapper import dm
        return {"dm.datadev": dm.device_path(f"gdpc-{self.tag}-data"),
                "dm.metadatadev": dm.device_path(f"gdpc-{self.tag}-meta"),
                "dm.basesize": "128MB", "dm.fs": "ext4"}

"""A btrfs filesystem for the btrfs driver's tests: a sparse file on a loop device.

Everything made here is released in ``finally`` blocks: the mount, then the
loop device (autoclear, so closing our descriptor after the unmount frees it).
"""
from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from graphdrivers import loopback, mount

SIZE = 1 << 30       # sparse: costs only what is written


@contextlib.contextmanager
def filesystem(tmp_path: Path, size: int = SIZE):
    """Mount a fresh btrfs on a loop device; yield the mount point."""
    mkfs = shutil.which("mkfs.btrfs")
    if mkfs is None:
        pytest.skip("mkfs.btrfs is not installed (apt-get install btrfs-progs)")
    image = tmp_path / "btrfs.img"
    target = tmp_path / "btrfs"
    target.mkdir()
    with open(image, "wb") as f:
        f.truncate(size)
    try:
        subprocess.run([mkfs, "-q", "-f", str(image)], check=True, capture_output=True)
        try:
            device = loopback.attach(image)
        except OSError as exc:
            pytest.skip(f"no loop device for the btrfs test filesystem: {exc}")
        try:
            try:
                mount.mount(device.path, target, "btrfs")
            except OSError as exc:
                pytest.skip(f"the kernel refused to mount btrfs: {exc}")
            try:
                yield target
            finally:
                try:
                    mount.umount(target, retries=20)
                except OSError:    # still busy: detach it so the loop device can go
                    mount.umount(target, mount.MNT_DETACH)
        finally:
            device.close()      # autoclear detaches the loop device once unmounted
    finally:
        image.unlink(missing_ok=True)


@contextlib.contextmanager
def backend(tmp_path: Path):
    with filesystem(tmp_path) as target:
        yield target / "home", {}

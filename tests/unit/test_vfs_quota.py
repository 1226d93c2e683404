"""vfs' ``size`` option on a real XFS filesystem with project quotas (a loop device)."""
from __future__ import annotations

import errno
import os
import shutil
import subprocess

import pytest

import graphdrivers
from graphdrivers import loopback, mount as mnt
from graphdrivers.errors import InvalidOption


@pytest.fixture
def xfs_home(tmp_path):
    if os.geteuid() != 0 or not shutil.which("mkfs.xfs"):
        pytest.skip("needs root and mkfs.xfs")
    image = tmp_path / "xfs.img"
    with open(image, "wb") as f:
        f.truncate(320 << 20)
    subprocess.run(["mkfs.xfs", "-q", str(image)], check=True)
    device = loopback.attach(image)
    target = tmp_path / "mnt"
    target.mkdir()
    try:
        try:
            mnt.mount(device.path, target, "xfs", 0, "prjquota")
        except OSError as exc:
            pytest.skip(f"cannot mount xfs with prjquota (kernel without XFS quota?): {exc}")
        try:
            yield target
        finally:
            mnt.umount(target, retries=5)
    finally:
        device.close()


@pytest.mark.slow
def test_size_limits_a_rw_layer(xfs_home):
    driver = graphdrivers.load("vfs", xfs_home / "home")
    try:
        with pytest.raises(InvalidOption, match="read-only"):
            driver.create("ro", storage_opt={"size": "20M"})
        driver.create("base")
        driver.create("small", "base", rw=True, storage_opt={"size": "20M"})
        driver.create("free", "base", rw=True)
        root = driver.mount("small")
        with pytest.raises(OSError) as info:
            with open(root / "big", "wb") as f:
                for _ in range(40):
                    f.write(b"\0" * (1 << 20))
                    f.flush()
                    os.fsync(f.fileno())
        assert info.value.errno in (errno.EDQUOT, errno.ENOSPC)
        driver.unmount("small")
        with open(driver.mount("free") / "big", "wb") as f:      # no limit without size
            f.write(b"\0" * (40 << 20))
        driver.unmount("free")
        assert dict(driver.status())["Backing Filesystem"] == "xfs"
        driver.remove("small")
    finally:
        driver.cleanup()

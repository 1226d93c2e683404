"""vfs' ``size`` option on a real XFS filesystem with project quotas (a loop device)."""
from __future__ import annotations

import errno
import os

import graphdrivers
import pytest
from graphdrivers.errors import InvalidOption
from graphdrivers.testing.loopfs import loop_filesystem


@pytest.fixture
def xfs_home(tmp_path):
    with loop_filesystem(tmp_path, "xfs", 320 << 20, "prjquota") as target:
        yield target


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


def _fill(path, mib: int) -> None:
    with open(path, "wb") as f:
        for _ in range(mib):
            f.write(b"\1" * (1 << 20))
            f.flush()
            os.fsync(f.fileno())


def test_driver_wide_size_is_the_default_quota_of_rw_layers(xfs_home):
    """Docker's vfs takes ``size`` driver-wide too: the default of every rw layer."""
    driver = graphdrivers.load("vfs", xfs_home / "home", {"size": "20M"})
    try:
        driver.create("ro")                             # read-only: no quota
        _fill(driver.mount("ro") / "big", 30)
        driver.unmount("ro")
        driver.create("base")
        _fill(driver.mount("base") / "some", 5)
        driver.unmount("base")
        driver.create("c", "base", rw=True)             # the default applies
        driver.create("wide", "base", rw=True, storage_opt={"size": "80M"})
        with pytest.raises(OSError) as info:            # a vfs child is a full copy:
            _fill(driver.mount("c") / "more", 30)        # 5 MiB of base + 30 > 20 MiB
        assert info.value.errno in (errno.EDQUOT, errno.ENOSPC)
        _fill(driver.mount("wide") / "more", 30)         # the layer's own size wins
        assert dict(driver.status())["Default Layer Size"] == "20.97 MB"
    finally:
        driver.cleanup()

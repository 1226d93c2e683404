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

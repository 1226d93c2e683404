"""overlay2 size limits through XFS project quotas, on a real XFS on a loop device."""
from __future__ import annotations

import errno
import os

import pytest

from graphdrivers.errors import InvalidOption
from graphdrivers.kernel import projquota as quota

from .conftest import open_driver, xfs_filesystem

MiB = 1 << 20


def fill(path, limit: int) -> int:
    """Write to ``path`` until the filesystem refuses; return the bytes written."""
    written = 0
    chunk = b"\xab" * MiB
    with pytest.raises(OSError) as info:
        with open(path, "wb") as f:
            while written < limit:
                written += f.write(chunk)
                f.flush()
                os.fsync(f.fileno())
    assert info.value.errno in (errno.EDQUOT, errno.ENOSPC)
    return written


@pytest.fixture
def xfs(tmp_path):
    with xfs_filesystem(tmp_path, "prjquota") as target:
        yield target


def test_size_option_limits_a_read_write_layer(xfs):
    drv = open_driver(xfs / "home" / "overlay2")
    try:
        assert dict(drv.status())["Backing Filesystem"] == "xfs"
        drv.create("base")
        drv.create("c", "base", rw=True, storage_opt={"size": "8M"})
        assert drv._quota.get_limit(drv.home / "c") == 8 * MiB
        root = drv.mount("c")
        try:
            written = fill(root / "big", 64 * MiB)
            assert written <= 8 * MiB
        finally:
            drv.unmount("c")
        drv.create("free", "base", rw=True)             # no size: no limit
        root = drv.mount("free")
        try:
            with open(root / "big", "wb") as f:
                f.write(b"\0" * 16 * MiB)
        finally:
            drv.unmount("free")
    finally:
        drv.cleanup()


def test_default_size_survives_restart_with_fresh_project_ids(xfs):
    home = xfs / "home" / "overlay2"
    drv = open_driver(home, options={"overlay2.size": "4M"})
    try:
        drv.create("a", rw=True)
        first = quota.get_projid(home / "a")
        assert drv._quota.get_limit(home / "a") == 4 * MiB
        drv.create("ro")                                 # image layers get no limit
        assert quota.get_projid(home / "ro") == quota.get_projid(home)
    finally:
        drv.cleanup()
    again = open_driver(home, options={"overlay2.size": "4M"})
    try:
        again.create("b", rw=True, storage_opt={"size": "2M"})
        assert quota.get_projid(home / "b") > first, "project ids are not reused after a restart"
        assert again._quota.get_limit(home / "b") == 2 * MiB
        assert again._quota.get_limit(home / "a") == 4 * MiB
        written = fill(home / "b/diff/f", 16 * MiB)
        assert written <= 2 * MiB
    finally:
        again.cleanup()


def test_xfs_without_pquota_says_why(tmp_path):
    with xfs_filesystem(tmp_path, "") as target:
        with pytest.raises(InvalidOption, match="pquota"):
            open_driver(target / "home", options={"overlay2.size": "1G"})
        drv = open_driver(target / "home2")
        try:
            with pytest.raises(InvalidOption, match="pquota"):
                drv.create("c", rw=True, storage_opt={"size": "1G"})
            assert drv.layers() == []
        finally:
            drv.cleanup()

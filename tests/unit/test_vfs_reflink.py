"""vfs on a filesystem with reflinks (btrfs on a loop device): a child shares extents."""
from __future__ import annotations

import fcntl
import os
import struct

import graphdrivers
import pytest
from graphdrivers.vfs.copy import copy_tree
from graphdrivers.changes import compare_trees
from graphdrivers.testing.loopfs import loop_filesystem
from test_archive_trees import assert_same, build_tree, snapshot

FS_IOC_FIEMAP = 0xC020660B
FIEMAP_FLAG_SYNC = 0x1
FIEMAP_EXTENT_SHARED = 0x2000


def _extent_flags(path) -> list[int]:
    count = 32
    request = struct.pack("=QQIIII", 0, 2**64 - 1, FIEMAP_FLAG_SYNC, 0, count, 0)
    buf = bytearray(request + bytes(56 * count))
    with open(path, "rb") as f:
        fcntl.ioctl(f.fileno(), FS_IOC_FIEMAP, buf)
    mapped = struct.unpack_from("=I", buf, 20)[0]
    return [struct.unpack_from("=I", buf, 32 + 56 * i + 40)[0] for i in range(mapped)]


@pytest.fixture
def btrfs_dir(tmp_path):
    with loop_filesystem(tmp_path, "btrfs", 256 << 20) as target:
        yield target


def test_child_shares_extents_with_its_parent(btrfs_dir):
    driver = graphdrivers.load("vfs", btrfs_dir / "home")
    try:
        driver.create("base")
        root = driver.mount("base")
        build_tree(root)
        (root / "data").write_bytes(os.urandom(4 << 20))
        driver.unmount("base")
        assert not any(flags & FIEMAP_EXTENT_SHARED for flags in _extent_flags(root / "data"))
        driver.create("child", "base")
        child = driver.mount("child")
        flags = _extent_flags(child / "data")
        assert flags and all(f & FIEMAP_EXTENT_SHARED for f in flags)   # cloned, not copied
        assert_same(snapshot(root), snapshot(child))
        assert compare_trees(child, root) == []
        # and it was FICLONE that shared them (btrfs' copy_file_range would too)
        dst = btrfs_dir / "direct"
        dst.mkdir()
        counts = copy_tree(root, dst)
        assert counts["reflink"] > 5 and counts["copy_file_range"] == counts["read_write"] == 0
        assert dict(driver.status())["Backing Filesystem"] == "btrfs"
        driver.unmount("child")
    finally:
        driver.cleanup()

"""Quotas: the ``size`` storage option as a qgroup limit, ``btrfs.min_space``, hygiene."""
from __future__ import annotations

import errno
import json
import os
import time

import pytest

import graphdrivers
from graphdrivers.btrfs import ioctl, quota, subvol
from graphdrivers.errors import InvalidOption

MiB = 1 << 20


def _fill(root, limit_bytes: int) -> OSError | None:
    """Write up to 3x the limit in 1 MiB chunks, fsyncing; return the error that stopped it."""
    chunk = os.urandom(MiB)
    try:
        with open(root / "fill", "wb") as f:
            for _ in range(3 * limit_bytes // MiB):
                f.write(chunk)
                f.flush()
                os.fsync(f.fileno())
    except OSError as exc:
        return exc
    return None


def _qgroup_ids(path) -> set[int]:
    fd = os.open(path, os.O_RDONLY)
    try:
        # level-0 qgroup info items: key (0, QGROUP_INFO, qgroupid)
        return {item.offset for item in ioctl.tree_search(
            fd, ioctl.QUOTA_TREE_OBJECTID, (0, 242, 0), (0, 242, 2**48 - 1))}
    finally:
        os.close(fd)


def test_writing_past_the_size_limit_fails(drv):
    drv.create("base")
    drv.create("ctr", "base", rw=True, storage_opt={"size": "8M"})
    assert (drv.home / "quotas" / "ctr").read_text() == str(8 * MiB)
    assert drv.metadata("ctr")["Size"] == str(8 * MiB)
    assert dict(drv.status())["Quotas"] == "enabled"
    root = drv.mount("ctr")
    try:
        error = _fill(root, 8 * MiB)
    finally:
        drv.unmount("ctr")
    assert error is not None, "wrote three times the limit without an error"
    assert error.errno in (errno.EDQUOT, errno.ENOSPC)
    assert (root / "fill").stat().st_size <= 8 * MiB
    # a layer without a size is not limited by it
    free = drv.mount("base")
    try:
        assert _fill(free, 8 * MiB) is None
    finally:
        drv.unmount("base")


@pytest.mark.parametrize("size", ["0", "-1M", "lots"])
def test_bad_sizes_are_refused(drv, size):
    with pytest.raises(InvalidOption):
        drv.create("l", storage_opt={"size": size})
    assert not drv.exists("l")
    assert os.listdir(drv.home / "quotas") == []


def test_min_space_enables_quotas_and_bounds_size(home):
    with graphdrivers.load("btrfs", home, {"btrfs.min_space": "16M"}) as drv:
        assert quota.enabled(drv.home)
        with pytest.raises(InvalidOption, match="cannot be less than"):
            drv.create("small", storage_opt={"size": "8M"})
        assert not drv.exists("small")
        drv.create("ok", storage_opt={"size": "32M"})
        assert dict(drv.status())["Min Space"] != "none"


def test_bad_min_space_is_refused(home):
    with pytest.raises(InvalidOption):
        graphdrivers.load("btrfs", home, {"btrfs.min_space": "plenty"})


def test_remove_and_cleanup_never_disable_quotas_and_drop_the_qgroup(drv, btrfs_fs):
    drv.create("ctr", storage_opt={"size": "64M"})
    sid = subvol.subvolume_id(drv.home / "subvolumes" / "ctr")
    assert sid in _qgroup_ids(btrfs_fs)
    drv.remove("ctr")
    assert not (drv.home / "quotas" / "ctr").exists()
    drv.cleanup()
    assert quota.enabled(btrfs_fs), "the driver switched quotas off"
    _wait_gone(drv, btrfs_fs, sid)


def test_destroying_qgroups_while_the_cleaner_drops_keeps_accounting_on(btrfs_fs):
    """The destroy retried as fast as it can go while the cleaner drops the deleted
    subvolume: one between the drop and its commit made the kernel mark every qgroup
    inconsistent, and from then on no limit on the filesystem was enforced (the old
    code did so within a few subvolumes, every run)."""
    quota.enable(btrfs_fs)
    for n in range(16):
        path = btrfs_fs / f"dropped-{os.getpid()}-{n}"
        subvol.create(path)
        (path / "data").write_bytes(os.urandom(64 * 1024))
        subvol.sync(btrfs_fs)           # committed: the qgroup has numbers
        sid = subvol.subvolume_id(path)
        subvol.delete(path)
        subvol.sync(btrfs_fs)           # wakes the cleaner
        deadline = time.monotonic() + 30
        while not quota.destroy(btrfs_fs, sid) and time.monotonic() < deadline:
            pass
        assert quota.consistent(btrfs_fs), f"qgroups inconsistent after destroying 0/{sid}"
        assert sid not in _qgroup_ids(btrfs_fs), f"qgroup 0/{sid} leaked"


def _wait_gone(drv, fs, sid: int) -> None:
    """The qgroup goes now, at a retry (cleanup) once the cleaner dropped the
    subvolume, or by the kernel itself (>= 6.10 refuses to destroy it earlier)."""
    deadline = time.monotonic() + 30
    while sid in _qgroup_ids(fs) and time.monotonic() < deadline:
        subvol.sync(fs)
        drv.cleanup()
        time.sleep(0.2)
    assert sid not in _qgroup_ids(fs), f"qgroup 0/{sid} leaked"
    assert quota.consistent(fs), "destroying the qgroup marked the qgroups inconsistent"
    drv.cleanup()           # the kernel may have dropped it first: forget it
    assert not (drv.home / "quotas" / ".stale-qgroups.json").exists()


def test_qgroups_the_kernel_keeps_are_retried(drv, btrfs_fs):
    quota.enable(btrfs_fs)
    outside = btrfs_fs / f"not-a-layer-{os.getpid()}"
    subvol.create(outside)
    sid = subvol.subvolume_id(outside)
    drv._destroy_stale_qgroups([sid])      # a live subvolume: kept (EBUSY) or destroyed
    stale = drv.home / "quotas" / ".stale-qgroups.json"
    assert (stale.exists() and sid in json.loads(stale.read_text())) \
        or sid not in _qgroup_ids(btrfs_fs)
    subvol.delete(outside)
    _wait_gone(drv, btrfs_fs, sid)


def test_limit_is_reapplied_on_mount(drv, btrfs_fs):
    drv.create("ctr", storage_opt={"size": "8M"})
    path = drv.home / "subvolumes" / "ctr"
    quota.set_limit(path, 1 << 40)          # someone loosened it behind our back
    root = drv.mount("ctr")
    try:
        assert _fill(root, 8 * MiB) is not None
    finally:
        drv.unmount("ctr")

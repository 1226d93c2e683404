"""The devicemapper driver on a real kernel (runs in the VM: scripts/vm-test tests/devmapper)."""
from __future__ import annotations

import contextlib
import os
import time

import pytest

import graphdrivers
from graphdrivers.errors import InvalidOption, LayerInUse, LayerNotFound, NoSpace

from graphdrivers.devmapper.testing import backend, wait_for, without_loop_sizes

pytestmark = pytest.mark.devicemapper
SPACE_BOUND = 60.0     # seconds for a removed layer's blocks to leave the loop file


@contextlib.contextmanager
def loaded(home, options):
    drv = graphdrivers.load("devicemapper", home, options)
    try:
        yield drv
    finally:
        drv.cleanup()


@pytest.fixture
def env(tmp_path):
    with backend(tmp_path) as (home, options):
        yield home, options


@pytest.fixture
def drv(env):
    with loaded(*env) as d:
        yield d


def _dm():
    from graphdrivers.devmapper import dm
    return dm


def test_layers_are_thin_snapshots(drv):
    drv.create("a")
    root = drv.mount("a")
    assert root.name == "rootfs" and oct(root.stat().st_mode & 0o7777) == "0o755"
    (root / "f").write_text("from a")
    drv.unmount("a")
    drv.create("b", "a")
    root_b = drv.mount("b")
    assert (root_b / "f").read_text() == "from a"
    (root_b / "f").write_text("changed in b")
    drv.unmount("b")
    assert drv.mount("a").joinpath("f").read_text() == "from a"
    drv.unmount("a")
    meta = drv.metadata("b")
    assert set(meta) == {"DeviceId", "DeviceSize", "DeviceName"}
    assert int(meta["DeviceSize"]) == 512 << 20
    assert drv.parent("b") == "a" and sorted(drv.layers()) == ["a", "b"]
    # unmounted layers are deactivated
    assert _dm().info(meta["DeviceName"]) is None


def test_layout_and_status(drv):
    home = drv.home
    assert (home / "devicemapper" / "data").stat().st_size == 2 << 30
    assert (home / "devicemapper" / "metadata").stat().st_size == 64 << 20
    assert (home / "metadata" / "base").exists()
    keys = [k for k, _ in drv.status()]
    for key in ("Pool Name", "Pool Blocksize", "Base Device Size", "Backing Filesystem",
                "Udev Sync Supported", "Data file", "Metadata file", "Data loop file",
                "Metadata loop file", "Data Space Used", "Data Space Total", "Data Space Available",
                "Metadata Space Used", "Metadata Space Total", "Metadata Space Available",
                "Thin Pool Minimum Free Space", "Deferred Removal Enabled",
                "Deferred Deletion Enabled", "Deferred Deleted Device Count", "Library Version"):
        assert key in keys
    status = dict(drv.status())
    assert status["Data Space Total"] == "2.147 GB" and status["Pool Blocksize"] == "65.54 kB"
    assert status["Data loop file"] == str(home / "devicemapper" / "data")
    assert "loopback" in status["Warning"]
    pool = drv.pool_status()
    assert pool["data_total"] == 2 << 30 and pool["metadata_total"] == 64 << 20
    assert pool["mode"] == "rw" and pool["thin_devices"] == 1


def test_mount_refcount_and_xfs_nouuid(drv):
    drv.create("a")
    drv.create("b", "a")
    ra, rb = drv.mount("a"), drv.mount("b")     # same fs UUID: needs nouuid on xfs
    assert drv.mount("a") == ra
    drv.unmount("a")
    assert os.path.ismount(ra.parent)
    with pytest.raises(LayerInUse):
        drv.remove("a")
    drv.unmount("a")
    drv.unmount("b")
    assert not os.path.ismount(ra.parent) and not os.path.ismount(rb.parent)


def test_remove_parent_refused_while_a_child_lives(drv):
    """The children rule of every driver, though a thin snapshot would survive its origin:
    the refusal changes nothing (no discard, no deactivation that sticks)."""
    drv.create("a")
    (drv.mount("a") / "x").write_text("x")
    drv.unmount("a")
    drv.create("b", "a")
    with pytest.raises(LayerInUse, match="b"):
        drv.remove("a")
    assert drv.exists("a") and drv.parent("b") == "a"
    assert (drv.mount("a") / "x").read_text() == "x"
    drv.unmount("a")
    drv.remove("b")
    drv.remove("a")
    assert not drv.exists("a")
    with pytest.raises(LayerNotFound):
        drv.create("c", "a")


def test_restart_keeps_layers(env):
    home, options = env
    with loaded(home, options) as d:
        d.create("a")
        (d.mount("a") / "keep").write_text("kept")
        d.unmount("a")
        pool = d.pool.name
    assert _dm().info(pool) is None      # cleanup tore the pool down, loops auto-cleared
    with loaded(home, options) as d:
        assert d.exists("a")
        assert (d.mount("a") / "keep").read_text() == "kept"
        d.unmount("a")


def test_size_option_grows_layer_fs(drv):
    drv.create("a")
    drv.create("big", "a", storage_opt={"size": "1GB"})
    root = drv.mount("big")
    st = os.statvfs(root)
    assert st.f_blocks * st.f_frsize > 900 << 20
    drv.unmount("big")
    with pytest.raises(InvalidOption):
        drv.create("small", "a", storage_opt={"size": "100MB"})
    with pytest.raises(InvalidOption):
        drv.create("bad", "a", storage_opt={"nosuch": "1"})
    assert not drv.exists("small") and not drv.exists("bad")


def test_basesize_growth_on_restart(env):
    home, options = env
    with loaded(home, options) as d:
        d.create("old")
    bigger = dict(options, **{"dm.basesize": "768MB"})
    with loaded(home, bigger) as d:
        d.create("new")
        root = d.mount("new")
        st = os.statvfs(root)
        assert st.f_blocks * st.f_frsize > 700 << 20
        d.unmount("new")
        assert int(d.metadata("old")["DeviceSize"]) == 512 << 20
    with pytest.raises(InvalidOption, match="cannot shrink"):
        graphdrivers.load("devicemapper", home, dict(options, **{"dm.basesize": "256MB"}))


def test_unknown_option_leaves_nothing(tmp_path):
    with backend(tmp_path) as (home, options):
        with pytest.raises(InvalidOption):
            graphdrivers.load("devicemapper", home, dict(options, **{"dm.nosuch": "1"}))
        assert not (home / "devicemapper").exists()
        assert not [n for n in _dm().list_devices() if n.startswith("graphdrivers-")]


def test_min_free_space(env):
    home, options = env
    with loaded(home, dict(options, **{"dm.min_free_space": "99%"})) as d:
        with pytest.raises(NoSpace, match="free data blocks"):
            d.create("a")
        assert not d.exists("a")


def test_restart_with_bigger_loopdatasize_grows_pool(env):
    home, options = env
    with loaded(home, options) as d:
        d.create("a")
        (d.mount("a") / "f").write_text("f")
        d.unmount("a")
    bigger = dict(options, **{"dm.loopdatasize": "3GB", "dm.loopmetadatasize": "96MB"})
    with loaded(home, bigger) as d:
        st = d.pool_status()
        assert st["data_total"] == 3 << 30 and st["metadata_total"] == 96 << 20
        assert (d.mount("a") / "f").read_text() == "f"
        d.unmount("a")
    # a smaller size later is a shrink: refused, nothing changed; without sizes the pool
    # keeps what it was grown to
    with pytest.raises(InvalidOption, match="shrink"):
        graphdrivers.load("devicemapper", home, options)
    with loaded(home, without_loop_sizes(options)) as d:
        assert d.pool_status()["data_total"] == 3 << 30


def test_deferred_deletion_of_busy_device(drv):
    dm = _dm()
    drv.create("a")
    drv.mount("a")
    drv.unmount("a")
    name = drv.metadata("a")["DeviceName"]
    path = drv.pool.activate(name, int(drv.metadata("a")["DeviceId"]), 512 << 20)
    holder = os.open(path, os.O_RDONLY)      # another process holding the device open
    try:
        drv.remove("a")
        assert not drv.exists("a")
        status = dict(drv.status())
        assert status["Deferred Deleted Device Count"] == "1"
        assert dm.info(name).deferred_remove
        assert drv.cleanup_deleted() == 1    # still busy
    finally:
        os.close(holder)
    for _ in range(50):                       # the kernel removes it on last close (from a workqueue)
        if dm.info(name) is None:
            break
        time.sleep(0.1)
    assert dm.info(name) is None
    # the kernel releases the thin device from its workqueue: the retry may need a moment
    for _ in range(50):
        if drv.cleanup_deleted() == 0:
            break
        time.sleep(0.1)
    assert drv.cleanup_deleted() == 0
    assert dict(drv.status())["Deferred Deleted Device Count"] == "0"
    drv.create("a")                           # the id is free again


def test_remove_gives_space_back_to_loop_file(drv):
    data_file = drv.home / "devicemapper" / "data"
    drv.create("a")
    root = drv.mount("a")
    with open(root / "blob", "wb") as f:
        f.write(os.urandom(1 << 20) * 48)
        os.fsync(f.fileno())
    drv.unmount("a")
    before = os.stat(data_file).st_blocks * 512
    drv.remove("a")
    # dm.blkdiscard defaults to true on loops; the worker discards the queued device
    # off the caller's path, within a bound (TCG-slow here)
    assert wait_for(lambda: before - os.stat(data_file).st_blocks * 512 >= 40 << 20,
                    SPACE_BOUND), (before, os.stat(data_file).st_blocks * 512)

"""Pool sources and pool limits on a real kernel (VM only): block devices, an existing
pool (dm.thinpooldev), exhaustion and online growth, direct I/O loop files."""
from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest

import graphdrivers
from graphdrivers.kernel import loop as loopback
from graphdrivers.errors import InvalidOption, NoSpace

from graphdrivers.devmapper.testing import backend, require_dm, teardown, without_loop_sizes

pytestmark = pytest.mark.devicemapper


def _disks(count):
    disks = [d for d in os.environ.get("GRAPHDRIVERS_TEST_DISKS", "").split(",") if d]
    if len(disks) < count:
        pytest.skip(f"needs {count} spare disks (scripts/vm-test --vm-disks {count})")
    return disks


def _wipe(dev):
    fd = os.open(dev, os.O_WRONLY)
    try:
        os.pwrite(fd, bytes(1 << 20), 0)
        os.fsync(fd)
    finally:
        os.close(fd)


def _roundtrip(home, options):
    drv = graphdrivers.load("devicemapper", home, options)
    try:
        drv.create("a")
        (drv.mount("a") / "f").write_text("on block devices")
        drv.unmount("a")
        drv.create("b", "a")
        status = dict(drv.status())
        assert "Data loop file" not in status and "Warning" not in status
    finally:
        drv.cleanup()
    drv = graphdrivers.load("devicemapper", home, options)
    try:
        assert (drv.mount("b") / "f").read_text() == "on block devices"
        drv.unmount("b")
        return drv.pool_status()
    finally:
        drv.cleanup()


def test_pool_on_block_devices(tmp_path):
    require_dm()
    data, meta = _disks(2)[:2]
    for dev in (data, meta):
        _wipe(dev)
    with backend(tmp_path, {"dm.datadev": data, "dm.metadatadev": meta, "dm.basesize": "512MB"}) as (home, options):
        st = _roundtrip(home, options)
        assert st["pool_kind"] == "block" and st["data_device"] == data
        assert st["data_total"] == os.lseek(os.open(data, os.O_RDONLY), 0, os.SEEK_END)


def test_block_devices_in_use_are_refused(tmp_path):
    require_dm()
    data, meta = _disks(2)[:2]
    _wipe(meta)
    subprocess.run(["mkfs.ext4", "-q", "-F", data], check=True)
    with backend(tmp_path, {"dm.datadev": data, "dm.metadatadev": meta}) as (home, options):
        with pytest.raises(InvalidOption, match="ext4 signature"):
            graphdrivers.load("devicemapper", home, options)
        mnt = tmp_path / "m"
        mnt.mkdir()
        subprocess.run(["mount", data, str(mnt)], check=True)
        try:
            with pytest.raises(InvalidOption, match="is mounted"):
                graphdrivers.load("devicemapper", home, options)
        finally:
            subprocess.run(["umount", str(mnt)], check=True)
        assert not (home / "devicemapper" / "metadata").exists()
    _wipe(data)


@pytest.fixture
def external_pool(tmp_path):
    """A thin pool built by hand (as an operator would), on two loop files."""
    require_dm()
    from graphdrivers.devmapper import dm
    before = set(dm.list_devices())
    files = []
    for name, size in (("data", 1 << 30), ("meta", 32 << 20)):
        path = tmp_path / name
        with open(path, "wb") as f:
            f.truncate(size)
        files.append(loopback.attach(path))
    name = f"graphdrivers-test-{os.getpid()}-pool"
    dm.create(name, [(0, (1 << 30) // 512, "thin-pool",
                      f"{files[1].path} {files[0].path} 128 32768 1 skip_block_zeroing")])
    for lo in files:
        lo.close()
    try:
        yield name
    finally:
        teardown(tmp_path, before)
        if dm.info(name):
            dm.remove(name)


def test_thinpooldev(tmp_path, external_pool):
    from graphdrivers.devmapper import dm
    home = tmp_path / "home"
    options = {"dm.thinpooldev": f"/dev/mapper/{external_pool}", "dm.basesize": "512MB"}
    st = _roundtrip(home, options)
    assert st["pool_kind"] == "external" and st["pool_name"] == external_pool
    assert dm.info(external_pool) is not None      # not ours: never torn down
    # a pool that already holds data is refused for a fresh home
    with pytest.raises(InvalidOption, match="take ownership"):
        graphdrivers.load("devicemapper", tmp_path / "other", options)


def test_missing_thinpooldev(tmp_path):
    with backend(tmp_path, {"dm.thinpooldev": "graphdrivers-no-such-pool"}) as (home, options):
        with pytest.raises(InvalidOption, match="does not exist"):
            graphdrivers.load("devicemapper", home, options)


def _fill(path: Path, limit: int) -> OSError | None:
    chunk = b"\xa5" * (1 << 20)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        for written in range(limit):
            os.write(fd, chunk)
            if written % 16 == 15:
                os.fsync(fd)
        os.fsync(fd)
    except OSError as exc:
        return exc
    finally:
        try:
            os.close(fd)
        except OSError:
            pass
    return None


def test_pool_exhaustion_and_recovery(tmp_path):
    small = {"dm.loopdatasize": "160MB", "dm.loopmetadatasize": "16MB", "dm.basesize": "512MB",
             "dm.xfs_nospace_max_retries": "0", "dm.min_free_space": "0%", "dm.blkdiscard": "false"}
    with backend(tmp_path, small) as (home, options):
        drv = graphdrivers.load("devicemapper", home, options)
        try:
            drv.create("keep")
            (drv.mount("keep") / "data").write_text("precious")
            drv.unmount("keep")
            drv.create("filler", "keep")
            error = _fill(drv.mount("filler") / "big", 400)
            assert error is not None, "writing past the pool's end did not fail"
            assert error.errno in (errno.ENOSPC, errno.EIO), error
            st = drv.pool_status()
            assert st["mode"] == "out_of_data_space"
            assert any("out of data space" in w for w in st["warnings"])
            assert "out_of_data_space" in dict(drv.status())["Pool Mode"]
            with pytest.raises(NoSpace, match="out of data space"):
                drv.create("more", "keep")
            drv.unmount("filler")
            st = drv.resize_pool(data_size=320 << 20)
            assert st["mode"] == "rw" and st["data_total"] == 320 << 20
            assert (drv.mount("keep") / "data").read_text() == "precious"
            drv.unmount("keep")
            root = drv.mount("filler")      # the filled layer mounts again (log recovery)
            (root / "after").write_text("writes work again")
            drv.unmount("filler")
            drv.create("more", "keep")
        finally:
            drv.cleanup()


def test_resize_pool_online_and_refusals(tmp_path):
    with backend(tmp_path) as (home, options):
        drv = graphdrivers.load("devicemapper", home, options)
        try:
            drv.create("a")
            root = drv.mount("a")
            (root / "f").write_text("mounted during resize")
            with pytest.raises(InvalidOption, match="shrink"):
                drv.resize_pool(data_size=1 << 30)
            with pytest.raises(NoSpace, match="free"):
                drv.resize_pool(data_size=1 << 50)
            assert (home / "devicemapper" / "devicemapper" / "data").stat().st_size == 2 << 30
            st = drv.resize_pool(metadata_size=128 << 20)
            assert st["metadata_total"] == 128 << 20 and st["data_total"] == 2 << 30
            st = drv.resize_pool(data_size=3 << 30)
            assert st["data_total"] == 3 << 30
            (root / "g").write_text("still writable")
            assert (root / "f").read_text() == "mounted during resize"
            drv.unmount("a")
        finally:
            drv.cleanup()
        # the new sizes hold after a restart; the old, smaller options are a shrink: refused
        with pytest.raises(InvalidOption, match="shrink"):
            graphdrivers.load("devicemapper", home, options)
        drv = graphdrivers.load("devicemapper", home, without_loop_sizes(options))
        try:
            st = drv.pool_status()
            assert st["data_total"] == 3 << 30 and st["metadata_total"] == 128 << 20
        finally:
            drv.cleanup()


def _sizes(home):
    loopdir = home / "devicemapper" / "devicemapper"
    return (loopdir / "data").stat().st_size, (loopdir / "metadata").stat().st_size


def _pool_devices():
    from graphdrivers.devmapper import dm
    return [name for name in dm.list_devices() if name.endswith("-pool")]


ADOPT_CHILD = r"""
import json, os, sys
import graphdrivers
drv = graphdrivers.load("devicemapper", sys.argv[1], json.loads(sys.argv[2]))
drv.create(sys.argv[3])
os._exit(0)   # no cleanup(): the pool stays up, as after a crash
"""


@pytest.mark.parametrize("adopted", [False, True], ids=["restarted", "adopted"])
def test_loop_pool_keeps_its_size(tmp_path, adopted):
    """Only an explicit, larger dm.loop* grows a pool, through resize's checks (issue 21)."""
    import json
    with backend(tmp_path) as (home, options):
        restart = without_loop_sizes(options)

        def leave_running(opts, layer):   # a process that dies leaves its pool up
            subprocess.run([sys.executable, "-c", ADOPT_CHILD, str(home), json.dumps(opts),
                            layer], check=True, timeout=300)

        def start(opts, layer):
            if adopted:
                leave_running(opts, layer)
                return graphdrivers.load("devicemapper", home, opts)
            drv = graphdrivers.load("devicemapper", home, opts)
            drv.create(layer)
            return drv

        graphdrivers.load("devicemapper", home, options).cleanup()
        made = _sizes(home)
        assert made == (2 << 30, 64 << 20)
        drv = start(restart, "a")   # no dm.loop* options: not Docker's 100 GB / 2 GB defaults
        try:
            st = drv.pool_status()
            assert (st["data_total"], st["metadata_total"]) == made
        finally:
            drv.cleanup()
        if adopted:
            leave_running(restart, "c")
        pools = _pool_devices()
        assert len(pools) == (1 if adopted else 0)
        for too_much in ({"dm.loopdatasize": "1TB"}, {"dm.loopmetadatasize": "1TB"}):
            with pytest.raises(NoSpace, match="free"):
                graphdrivers.load("devicemapper", home, {**restart, **too_much})
            assert _sizes(home) == made and _pool_devices() == pools   # nothing changed
        for smaller in ({"dm.loopdatasize": "1GB"}, {"dm.loopmetadatasize": "32MB"}):
            with pytest.raises(InvalidOption, match="shrink"):
                graphdrivers.load("devicemapper", home, {**restart, **smaller})
            assert _sizes(home) == made and _pool_devices() == pools
        drv = start({**restart, "dm.loopdatasize": "3GB", "dm.loopmetadatasize": "96MB"}, "b")
        try:
            st = drv.pool_status()
            assert (st["data_total"], st["metadata_total"]) == (3 << 30, 96 << 20)
            assert drv.exists("a") and drv.exists("b")
        finally:
            drv.cleanup()
        assert _sizes(home) == (3 << 30, 96 << 20)


def test_loop_direct_io(tmp_path):
    with backend(tmp_path) as (home, options):
        if not _supports_odirect(tmp_path):
            pytest.skip(f"{tmp_path} (tmpfs on this kernel) refuses O_DIRECT")
        drv = graphdrivers.load("devicemapper", home, dict(options, **{"dm.loopdirectio": "true"}))
        try:
            assert loopback.direct_io_enabled(drv.pool.data_device)
            drv.create("a")
            (drv.mount("a") / "f").write_text("direct")
            drv.unmount("a")
        finally:
            drv.cleanup()


def _supports_odirect(directory: Path) -> bool:
    probe = directory / ".odirect"
    try:
        fd = os.open(probe, os.O_RDWR | os.O_CREAT | os.O_DIRECT)
    except OSError:
        return False
    os.close(fd)
    probe.unlink()
    return True


def test_direct_lvm(tmp_path):
    require_dm()
    disk = _disks(3)[2]
    _wipe(disk)
    from graphdrivers.devmapper import lvm
    home = tmp_path / "home"
    options = {"dm.directlvm_device": disk, "dm.thinp_percent": "90", "dm.thinp_metapercent": "2",
               "dm.basesize": "512MB"}
    try:
        st = _roundtrip(home, options)
        assert st["pool_kind"] == "lvm" and st["pool_name"].startswith(lvm.POOL)
        assert 0.85 * (4 << 30) < st["data_total"] <= 0.9 * (4 << 30)
        with pytest.raises(InvalidOption, match="not supported"):
            graphdrivers.load("devicemapper", home, dict(options, **{"dm.thinp_percent": "80",
                                                                     "dm.thinp_metapercent": "2"}))
    finally:
        _lvm_cleanup(tmp_path, disk)


def _lvm_cleanup(tmp_path, disk):
    from graphdrivers.devmapper import lvm
    env = dict(os.environ, DM_DISABLE_UDEV="1")
    teardown(tmp_path, set())
    subprocess.run(["vgremove", "-ff", "-y", lvm.VG], env=env, capture_output=True, check=False)
    subprocess.run(["pvremove", "-ff", "-y", disk], env=env, capture_output=True, check=False)
    # without udev, LVM leaves /dev/<vg> behind when its devices went by raw ioctl;
    # the next vgcreate would refuse the name
    vg_dir = Path("/dev") / lvm.VG
    if vg_dir.is_dir() and not vg_dir.is_symlink():
        for entry in vg_dir.iterdir():
            if entry.is_symlink() and not entry.exists():
                entry.unlink()
        try:
            vg_dir.rmdir()
        except OSError:
            pass


@pytest.mark.slow
def test_direct_lvm_extend(tmp_path):
    """--extend: lvextend the thin pool LV (library, then CLI) while a layer is mounted."""
    require_dm()
    disk = _disks(3)[2]
    _lvm_cleanup(tmp_path, disk)     # whatever an earlier direct-lvm test left
    _wipe(disk)
    home = tmp_path / "home"
    options = {"dm.directlvm_device": disk, "dm.thinp_percent": "40", "dm.thinp_metapercent": "1",
               "dm.basesize": "512MB"}
    try:
        drv = graphdrivers.load("devicemapper", home, options)
        try:
            drv.create("base")
            (drv.mount("base") / "f").write_text("before extend")
            drv.unmount("base")
            drv.create("top", "base")
            root = drv.mount("top")
            before = drv.pool_status()
            assert before["pool_kind"] == "lvm"
            # refusals: nothing touched
            for bad in ({"extend": "-1G"}, {"extend": "0"}, {"extend": "150%FREE"},
                        {"extend_metadata": "10%FREE"}, {"data_size": 8 << 30},
                        {"extend": "1G", "extend_metadata": "-4M"}):
                with pytest.raises(InvalidOption):
                    drv.resize_pool(**bad)
            with pytest.raises(NoSpace, match="free space"):
                drv.resize_pool(extend="64G")
            same = drv.pool_status()
            assert (same["data_total"], same["metadata_total"]) == \
                (before["data_total"], before["metadata_total"])
            # through the library: data and metadata
            st = drv.resize_pool(extend="+512M", extend_metadata="8M")
            assert st["data_total"] == before["data_total"] + (512 << 20)
            assert st["metadata_total"] >= before["metadata_total"] + (8 << 20)
            assert st["mode"] == "rw"
            (root / "g").write_text("written after extend")
            # through the CLI, in another process, while this one keeps the layer mounted
            cli = subprocess.run(
                [sys.executable, "-m", "graphdrivers.cli", "--home", str(home), "--driver",
                 "devicemapper", *[a for k, v in options.items() for a in ("--storage-opt", f"{k}={v}")],
                 "pool", "resize", "--extend", "50%FREE", "--json"],
                capture_output=True, text=True, timeout=300, check=False)
            assert cli.returncode == 0, cli.stderr
            grown = drv.pool_status()
            assert grown["data_total"] > st["data_total"] + (512 << 20)
            assert str(grown["data_total"]) in cli.stdout
            assert (root / "f").read_text() == "before extend"
            assert (root / "g").read_text() == "written after extend"
            drv.unmount("top")
        finally:
            drv.cleanup()
        drv = graphdrivers.load("devicemapper", home, options)
        try:
            assert drv.pool_status()["data_total"] == grown["data_total"]
            root = drv.mount("top")
            assert (root / "g").read_text() == "written after extend"
            drv.unmount("top")
            assert (drv.mount("base") / "f").read_text() == "before extend"
            drv.unmount("base")
        finally:
            drv.cleanup()
    finally:
        _lvm_cleanup(tmp_path, disk)


@pytest.mark.slow
def test_block_pool_grown_device(tmp_path):
    """The operator grows the data device (a linear dm device reloaded bigger); resize_pool()
    without sizes reloads the pool at the new size, layers mounted and intact."""
    require_dm()
    from graphdrivers.devmapper import dm
    from graphdrivers.devmapper.pool import block_path
    disk, meta = _disks(2)[:2]
    for dev in (disk, meta):
        _wipe(dev)
    linear = f"graphdrivers-test-{os.getpid()}-grow"
    gib = (1 << 30) // 512
    dm.create(linear, [(0, gib, "linear", f"{disk} 0")])
    try:
        data = block_path(linear)
        with backend(tmp_path, {"dm.datadev": data, "dm.metadatadev": meta,
                                "dm.basesize": "512MB"}) as (home, options):
            drv = graphdrivers.load("devicemapper", home, options)
            try:
                drv.create("a")
                root = drv.mount("a")
                (root / "f").write_text("mounted while the device grows")
                assert drv.pool_status()["data_total"] == 1 << 30
                with pytest.raises(InvalidOption, match="nothing was changed"):
                    drv.resize_pool(data_size=2 << 30)
                with pytest.raises(InvalidOption, match="direct-lvm"):
                    drv.resize_pool(extend="1G")
                assert drv.resize_pool()["data_total"] == 1 << 30   # nothing grew: same size
                # the operator grows the device: same start, twice the length
                dm.load_table(linear, [(0, 2 * gib, "linear", f"{disk} 0")])
                dm.suspend(linear)
                dm.resume(linear)
                st = drv.resize_pool()
                assert st["data_total"] == 2 << 30 and st["mode"] == "rw"
                (root / "g").write_text("after the grow")
                assert (root / "f").read_text() == "mounted while the device grows"
                drv.unmount("a")
            finally:
                drv.cleanup()
            drv = graphdrivers.load("devicemapper", home, options)
            try:
                assert drv.pool_status()["data_total"] == 2 << 30
                assert (drv.mount("a") / "g").read_text() == "after the grow"
                drv.unmount("a")
            finally:
                drv.cleanup()
    finally:
        if dm.info(linear):
            dm.remove(linear)

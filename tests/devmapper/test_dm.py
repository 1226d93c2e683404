"""The device-mapper binding (devmapper/dm.py) and the thin pool's messages and text
(devmapper/pool.py, devmapper/poolstatus.py), driven by hand.

The parsing and packing cases run anywhere. The rest drive a real thin pool on
loop devices and need a kernel with device-mapper: they are marked
``devicemapper`` and skip on hosts without it (run them with scripts/vm-test).
They pass with udevd running (the VM's default) and without it
(scripts/vm-test --vm-no-udev).
"""
from __future__ import annotations

import contextlib
import errno
import itertools
import os
import stat
import struct
import subprocess
import time
from pathlib import Path

import pytest

from graphdrivers.kernel import loop as loopback
from graphdrivers.devmapper import dm
from graphdrivers.devmapper import pool as thinpool
from graphdrivers.devmapper.poolstatus import (ThinStatus, parse_pool_status, parse_thin_status,
                                               thin_pool_table, thin_table)
from graphdrivers.kernel.mount import mount, unmount_all_under, umount

REASON = dm.available()


def needs_dm(test):
    """Run in a kernel with device-mapper (the VM); skip elsewhere, saying why."""
    return pytest.mark.devicemapper(pytest.mark.skipif(REASON is not None, reason=REASON or "")(test))


MiB = 1024 * 1024
THIN_SECTORS = 256 * MiB // 512
_names = itertools.count()


# -- pure logic (runs on every host) ---------------------------------------------

def test_header_and_spec_sizes():
    assert dm.HEADER_SIZE == 312
    assert dm._SPEC.size == 40
    assert dm._iowr(dm._DEV_CREATE) == 0xC138FD03


def test_pack_table_aligns_specs_and_links_them():
    packed = dm._pack_table([(0, 100, "thin", "253:0 1"), (100, 8, "linear", "7:0 0")])
    start, length, _status, nxt, ttype = dm._SPEC.unpack_from(packed, 0)
    assert (start, length, ttype.rstrip(b"\0")) == (0, 100, b"thin")
    assert nxt % 8 == 0 and packed[40:48] == b"253:0 1\0"
    start, length, _status, nxt2, ttype = dm._SPEC.unpack_from(packed, nxt)
    assert (start, length, ttype.rstrip(b"\0")) == (100, 8, b"linear")
    assert len(packed) == nxt + nxt2


def test_bad_target_type_and_name_are_refused_before_the_kernel():
    with pytest.raises(dm.DmError) as exc:
        dm._pack_table([(0, 8, "a-target-name-too-long", "")])
    assert exc.value.errno == errno.EINVAL
    with pytest.raises(dm.DmError, match="cannot contain"):
        dm._encode_name("a/b", dm.NAME_LEN, "name")
    with pytest.raises(dm.DmError, match="longer than"):
        dm._encode_name("x" * 128, dm.NAME_LEN, "name")


def test_parse_versions_follows_relative_next():
    first = struct.pack("=4I", 32, 1, 22, 0) + b"thin-pool\0"
    first += b"\0" * (32 - len(first))
    second = struct.pack("=4I", 0, 1, 4, 0) + b"linear\0"
    assert dm._parse_versions(memoryview(first + second)) == {"thin-pool": "1.22.0",
                                                              "linear": "1.4.0"}


def test_dm_error_names_the_ioctl_the_device_and_keeps_errno():
    err = dm.DmError(errno.ENXIO, "DM_TARGET_MSG", "pool0", "'create_thin 1'")
    assert err.errno == errno.ENXIO
    assert "DM_TARGET_MSG" in str(err) and "pool0" in str(err) and "create_thin 1" in str(err)
    assert isinstance(err, OSError)


def test_parse_pool_status():
    st = parse_pool_status(
        2097152, "7 20/16384 96/16384 - rw no_discard_passdown error_if_no_space needs_check 4096")
    assert (st.transaction_id, st.used_meta_blocks, st.total_meta_blocks) == (7, 20, 16384)
    assert (st.used_data_blocks, st.total_data_blocks, st.held_root) == (96, 16384, None)
    assert st.mode == "rw" and st.needs_check and not st.discard_passdown
    assert st.no_space_policy == "error" and st.metadata_low_watermark == 4096
    assert st.block_sectors == 128
    assert st.data_used == 96 * 64 * 1024 and st.meta_total == 16384 * 4096
    old = parse_pool_status(1024, "0 1/2 3/4 55 out_of_data_space discard_passdown "
                                       "queue_if_no_space -")
    assert old.held_root == 55 and old.mode == "out_of_data_space" and not old.needs_check
    assert old.metadata_low_watermark is None and old.no_space_policy == "queue"
    assert parse_pool_status(1024, "Fail").mode == "fail"
    with pytest.raises(ValueError):
        parse_pool_status(1024, "0 1 2 - rw")


def test_parse_thin_status():
    assert parse_thin_status("2048 4095") == ThinStatus(2048, 4095)
    assert parse_thin_status("0 -") == ThinStatus(0, None)
    assert parse_thin_status("Fail").failed


def test_table_builders_validate():
    assert thin_pool_table("7:1", "7:0", 1000, 128, features=("skip_block_zeroing",)) == [
        (0, 896, "thin-pool", "7:1 7:0 128 32768 1 skip_block_zeroing")]
    assert thin_pool_table("a", "b", 256, 128, 10, ())[0][3] == "a b 128 10 0"
    for bad in (64, 100, 4194304):
        with pytest.raises(ValueError):
            thin_pool_table("a", "b", 1 << 30, bad)
    with pytest.raises(ValueError):
        thin_pool_table("a", "b", 100, 128)
    assert thin_table("253:0", 5, 8) == [(0, 8, "thin", "253:0 5")]
    with pytest.raises(dm.DmError):
        thin_table("253:0", 1 << 24, 8)
    with pytest.raises(ValueError):
        thin_table("253:0", 1, 0)


def test_pool_messages_refuse_ids_the_pool_cannot_hold():
    # checked before the kernel: this pool does not exist, the id check answers first
    pool = thinpool.Pool("gdtest-no-such-pool", "block", owned=False)
    for send in (lambda: pool.create_thin(1 << 24), lambda: pool.create_snap(1, -1),
                 lambda: pool.delete_thin(1 << 24)):
        with pytest.raises(dm.DmError) as exc:
            send()
        assert exc.value.errno == errno.EINVAL


def test_available_says_why_not_on_a_host_without_device_mapper():
    with open("/proc/misc") as f:
        if "device-mapper" in f.read():
            pytest.skip("this kernel has device-mapper")
    reason = dm.available()
    assert "no device-mapper" in reason and "modprobe dm_thin_pool" in reason
    assert "scripts/" not in reason and "test" not in reason   # for operators, not developers


# -- fixtures for the kernel cases -------------------------------------------------

def _name(tag: str) -> str:
    return f"gdtest-{os.getpid()}-{next(_names)}-{tag}"


def _remove_quietly(name: str) -> None:
    try:
        if dm.info(name) is not None:
            dm.remove(name, retries=50)
    except OSError as exc:   # keep cleaning the rest; the leak shows in the next assert
        print(f"cleanup: {exc}")


class HandPool(thinpool.Pool):
    """A pool built by hand, through the driver's own Pool API (messages, status)."""

    def __init__(self, name: str, loops: list[loopback.LoopDevice]) -> None:
        super().__init__(name, "block", owned=False, metadata_device=loops[0].path,
                         data_device=loops[1].path)
        self.loops = loops
        self.devices: list[str] = []   # thin devices to remove before the pool

    def open_thin(self, dev_id: int, sectors: int = THIN_SECTORS) -> str:
        """Activate thin ``dev_id`` with a hand-made table (no driver logic in between)."""
        name = _name(f"thin{dev_id}")
        self.devices.append(name)
        dm.create(name, thin_table(self.majmin(), dev_id, sectors))
        return name


def _make_files(directory: Path, data_size: int, meta_size: int) -> tuple[Path, Path]:
    data, meta = directory / "data", directory / "metadata"
    for path, size in ((data, data_size), (meta, meta_size)):
        with open(path, "wb") as f:
            f.truncate(size)   # sparse; a fresh metadata device must start zeroed
    return data, meta


@contextlib.contextmanager
def _pool(directory: Path, *, direct_io: bool = False, data_size: int = 1024 * MiB,
          meta_size: int = 64 * MiB):
    data, meta = _make_files(directory, data_size, meta_size)
    loops: list[loopback.LoopDevice] = []
    pool = None
    try:
        loops.append(loopback.attach(meta, direct_io=direct_io))
        loops.append(loopback.attach(data, direct_io=direct_io))
        name = _name("pool")
        pool = HandPool(name, loops)
        dm.create(name, thin_pool_table(loops[0].path, loops[1].path, data_size // 512, 128,
                                        features=("skip_block_zeroing",)))
        yield pool
    finally:
        unmount_all_under(directory)
        if pool is not None:
            for device in reversed(pool.devices):
                _remove_quietly(device)
            _remove_quietly(pool.name)
        for loop in loops:
            loop.close()   # autoclear: they detach once the pool let go


@pytest.fixture
def pool(tmp_path):
    with _pool(tmp_path) as p:
        yield p
    ours = set(p.devices) | {p.name}
    assert not ours & set(dm.list_devices()), "the fixture left devices behind"


def _mkfs(device: str) -> None:
    subprocess.run(["mkfs.ext4", "-q", "-F", "-E", "nodiscard", device], check=True,
                   stdout=subprocess.DEVNULL)


def _try_delete(pool: HandPool, dev_id: int) -> bool:
    try:
        pool.delete_thin(dev_id)
    except dm.DmError as exc:
        if exc.errno != errno.EBUSY:
            raise
        return False
    return True


def _wait_until(predicate, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


# -- the kernel cases ------------------------------------------------------------------

@needs_dm
def test_versions_and_targets():
    version = dm.driver_version()
    major, minor, _patch = (int(x) for x in version.split("."))
    assert major == 4 and minor >= 27
    assert version in dm.library_version()
    assert dm.deferred_remove_supported()
    assert dm.target_version("thin-pool") is not None
    targets = dm.target_versions()
    assert {"thin-pool", "thin", "linear"} <= set(targets)
    assert dm.target_version("no-such-target") is None


@needs_dm
def test_thin_snapshot_cycle_with_a_filesystem(pool, tmp_path):
    pool.create_thin(1)
    origin = pool.open_thin(1)
    info = dm.info(origin)
    assert info is not None and info.target_count == 1 and not info.suspended
    assert info.open_count == 0 and not info.read_only and not info.deferred_remove
    path = dm.device_path(origin)
    assert path == f"/dev/mapper/{origin}"
    st = os.stat(path)
    assert stat.S_ISBLK(st.st_mode) and st.st_rdev == os.makedev(info.major, info.minor)
    assert dm.table(origin) == [(0, THIN_SECTORS, "thin", f"{pool.majmin()} 1")]
    assert origin in dm.list_devices() and pool.name in dm.list_devices()

    _mkfs(path)
    mnt_origin, mnt_snap = tmp_path / "origin", tmp_path / "snap"
    mnt_origin.mkdir()
    mnt_snap.mkdir()
    mount(path, mnt_origin, "ext4")
    try:
        (mnt_origin / "file").write_text("before the snapshot")
        assert dm.info(origin).open_count == 1   # the mount holds it

        dm.suspend(origin)                 # freezes the mounted filesystem
        assert dm.info(origin).suspended
        pool.create_snap(2, 1)
        dm.resume(origin)
        assert not dm.info(origin).suspended
        (mnt_origin / "file").write_text("after the snapshot")

        snap = pool.open_thin(2)
        mount(dm.device_path(snap), mnt_snap, "ext4")
        try:
            assert (mnt_snap / "file").read_text() == "before the snapshot"
        finally:
            umount(mnt_snap)
        assert thinpool.thin_status(snap).mapped_sectors > 0
    finally:
        umount(mnt_origin)

    status = pool.status()
    assert status.mode == "rw" and not status.needs_check and status.transaction_id == 0
    assert status.used_data_blocks > 0 and status.total_data_blocks == 1024 * MiB // (64 * 1024)
    assert status.block_sectors == 128 and status.used_meta_blocks > 0

    dm.remove(snap)
    dm.remove(origin)
    assert dm.info(snap) is None and dm.info(origin) is None
    assert not os.path.exists(f"/dev/mapper/{snap}")
    pool.delete_thin(2)
    pool.delete_thin(1)
    assert _wait_until(lambda: pool.status().used_data_blocks == 0)


@needs_dm
def test_set_transaction_id_is_compare_and_set(pool):
    assert pool.status().transaction_id == 0
    pool.set_transaction_id(0, 1)
    assert pool.status().transaction_id == 1
    with pytest.raises(dm.DmError) as exc:
        pool.set_transaction_id(0, 2)   # stale "old"
    assert exc.value.errno == errno.EINVAL
    assert pool.status(noflush=True).transaction_id == 1


@needs_dm
def test_message_errors_carry_errno(pool):
    missing = _name("missing")
    with pytest.raises(dm.DmError) as exc:
        dm.message(missing, "create_thin 1")
    assert exc.value.errno == errno.ENXIO
    assert missing in str(exc.value) and "DM_TARGET_MSG" in str(exc.value)

    pool.create_thin(7)
    with pytest.raises(dm.DmError) as exc:
        pool.create_thin(7)
    assert exc.value.errno == errno.EEXIST
    with pytest.raises(dm.DmError) as exc:
        pool.create_snap(8, 99)   # no such origin
    assert exc.value.errno != 0
    with pytest.raises(dm.DmError) as exc:
        pool.delete_thin(99)
    assert exc.value.errno != 0
    with pytest.raises(dm.DmError) as exc:
        dm.message(pool.name, "no_such_message")
    assert exc.value.errno == errno.EINVAL
    pool.delete_thin(7)


@needs_dm
def test_absent_devices():
    missing = _name("missing")
    assert dm.info(missing) is None
    for call in (lambda: dm.remove(missing), lambda: dm.status(missing),
                 lambda: dm.table(missing), lambda: dm.resume(missing),
                 lambda: dm.device_path(missing)):
        with pytest.raises(dm.DmError) as exc:
            call()
        assert exc.value.errno == errno.ENXIO


@needs_dm
def test_failed_create_leaves_no_device(pool):
    name = _name("bad")
    pool.devices.append(name)
    with pytest.raises(dm.DmError) as exc:
        dm.create(name, [(0, 8, "no-such-target", "")])
    assert exc.value.errno == errno.EINVAL and "DM_TABLE_LOAD" in str(exc.value)
    assert dm.info(name) is None
    with pytest.raises(dm.DmError):
        dm.create(name, thin_table(pool.majmin(), 42, 8))   # id 42 is not in the pool
    assert dm.info(name) is None
    assert not os.path.exists(f"/dev/mapper/{name}")


@needs_dm
def test_create_twice_is_eexist(pool):
    pool.create_thin(1)
    name = pool.open_thin(1)
    with pytest.raises(dm.DmError) as exc:
        dm.create(name, thin_table(pool.majmin(), 1, 8))
    assert exc.value.errno == errno.EBUSY or exc.value.errno == errno.EEXIST
    assert dm.info(name) is not None   # the failed create did not remove the existing one


@needs_dm
def test_reload_grows_a_device(pool):
    pool.create_thin(1)
    name = pool.open_thin(1, sectors=2048)
    bigger = thin_table(pool.majmin(), 1, 4096)
    dm.load_table(name, bigger)
    info = dm.info(name)
    assert info.inactive_table and dm.table(name)[0][1] == 2048
    assert dm.table(name, inactive=True) == bigger
    dm.suspend(name, flush=False)
    dm.resume(name)
    assert dm.table(name) == bigger and not dm.info(name).inactive_table
    fd = os.open(dm.device_path(name), os.O_RDONLY | os.O_CLOEXEC)
    try:
        assert os.lseek(fd, 0, os.SEEK_END) == 4096 * 512
    finally:
        os.close(fd)


@needs_dm
def test_missing_or_stale_node_is_recreated(pool):
    pool.create_thin(1)
    name = pool.open_thin(1)
    path = f"/dev/mapper/{name}"
    os.unlink(path)
    assert dm.device_path(name) == path
    info = dm.info(name)
    assert os.stat(path).st_rdev == os.makedev(info.major, info.minor)
    os.unlink(path)
    os.mknod(path, 0o600 | stat.S_IFBLK, os.makedev(7, 255))   # points at the wrong device
    assert os.stat(dm.device_path(name)).st_rdev == os.makedev(info.major, info.minor)
    assert name not in dm.prune_stale_nodes()   # live devices are kept


@needs_dm
def test_busy_device_sync_remove_fails_with_ebusy(pool):
    pool.create_thin(1)
    name = pool.open_thin(1)
    fd = os.open(dm.device_path(name), os.O_RDONLY | os.O_CLOEXEC)
    try:
        with pytest.raises(dm.DmError) as exc:
            dm.remove(name, retries=2)
        assert exc.value.errno == errno.EBUSY
        assert dm.info(name) is not None
    finally:
        os.close(fd)
    dm.remove(name)
    assert dm.info(name) is None


@needs_dm
def test_deferred_remove_of_an_open_device(pool):
    pool.create_thin(1)
    name = pool.open_thin(1)
    fd = os.open(dm.device_path(name), os.O_RDONLY | os.O_CLOEXEC)
    try:
        dm.remove(name, deferred=True)
        info = dm.info(name)
        assert info is not None and info.deferred_remove and info.open_count >= 1
    finally:
        os.close(fd)
    assert _wait_until(lambda: dm.info(name) is None), "deferred remove did not happen on close"
    # the pool can delete the id once the device is gone; the name disappears a
    # moment before the kernel's worker has closed the thin device (EBUSY meanwhile)
    assert _wait_until(lambda: _try_delete(pool, 1))
    # without udev the node outlives the device: pruning (or the next create) fixes it
    assert name in dm.prune_stale_nodes() or not os.path.lexists(f"/dev/mapper/{name}")
    assert not os.path.lexists(f"/dev/mapper/{name}")
    pool.create_thin(1)
    dm.create(name, thin_table(pool.majmin(), 1, THIN_SECTORS))
    info = dm.info(name)
    assert os.stat(dm.device_path(name)).st_rdev == os.makedev(info.major, info.minor)


@needs_dm
def test_cancel_deferred_remove(pool):
    pool.create_thin(1)
    name = pool.open_thin(1)
    fd = os.open(dm.device_path(name), os.O_RDONLY | os.O_CLOEXEC)
    try:
        dm.remove(name, deferred=True)
        dm.cancel_deferred_remove(name)
        assert not dm.info(name).deferred_remove
    finally:
        os.close(fd)
    time.sleep(0.2)
    assert dm.info(name) is not None   # cancelled: still there after the last close


@needs_dm
def test_deferred_remove_of_an_idle_device_is_immediate(pool):
    pool.create_thin(1)
    name = pool.open_thin(1)
    dm.remove(name, deferred=True)
    assert dm.info(name) is None
    assert not os.path.exists(f"/dev/mapper/{name}")


def _backing_filesystem(directory: Path, size: int = 1536 * MiB):
    """An ext4 on a loop device: the VM's tmpfs (kernel 6.1) has no O_DIRECT."""
    image = directory / "fs.img"
    with open(image, "wb") as f:
        f.truncate(size)
    loop = loopback.attach(image)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-E", "nodiscard", loop.path], check=True)
    target = directory / "fs"
    target.mkdir()
    mount(loop.path, target, "ext4")
    return loop, target


@needs_dm
def test_pool_on_direct_io_loop_devices(tmp_path):
    loop, fs = _backing_filesystem(tmp_path)
    try:
        with _pool(fs, direct_io=True) as pool:
            assert all(loopback.direct_io_enabled(lo.path) for lo in pool.loops)
            pool.create_thin(1)
            name = pool.open_thin(1)
            payload = os.urandom(4 * MiB)
            fd = os.open(dm.device_path(name), os.O_RDWR | os.O_CLOEXEC)
            try:
                os.pwrite(fd, payload, 8 * MiB)
                os.fsync(fd)
            finally:
                os.close(fd)
            dm.remove(name)
            pool.devices.remove(name)
            name = pool.open_thin(1)
            fd = os.open(dm.device_path(name), os.O_RDONLY | os.O_CLOEXEC)
            try:
                assert os.pread(fd, len(payload), 8 * MiB) == payload
            finally:
                os.close(fd)
            assert pool.status().used_data_blocks >= 4 * MiB // (64 * 1024)
    finally:
        unmount_all_under(tmp_path)
        loop.close()

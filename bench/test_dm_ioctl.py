"""device-mapper step latency: raw ioctls (devmapper/dm.py) against one `dmsetup` per step.

Runs in the VM (device-mapper is not in the hosts' kernel):

    scripts/vm-test bench/test_dm_ioctl.py --benchmark-enable -q \
        --benchmark-columns=median,mean,min,max,rounds
    scripts/vm-test --vm-no-udev bench/test_dm_ioctl.py --benchmark-enable -q ...

Rows, on a thin pool over sparse loop files with an ext4 base device (id 1, inactive):
- snapshot+activate+mount: ``create_snap N 1``, create /dev/mapper/<name> with a
  thin table, mount it;
- unmount+remove: unmount, remove the device, ``delete N``.
Both paths mount through mount(2), so the difference is the device-mapper work.
dmsetup runs as Docker's tooling would: with udev sync when udevd runs, and with
``DM_DISABLE_UDEV=1`` when it does not (otherwise it makes no /dev/mapper node).
The VM is emulated (TCG): compare the ratios, not absolute times.
"""
from __future__ import annotations

import functools
import itertools
import os
import subprocess
from pathlib import Path

import pytest

from graphdrivers.kernel import loop as loopback
from graphdrivers.devmapper import dm
from graphdrivers.devmapper.pool import Pool
from graphdrivers.devmapper.poolstatus import thin_pool_table, thin_table
from graphdrivers.kernel.mount import mount, umount, unmount_all_under

REASON = dm.available()
pytestmark = [pytest.mark.devicemapper,
              pytest.mark.skipif(REASON is not None, reason=REASON or "")]

MiB = 1024 * 1024
BASE_SECTORS = 256 * MiB // 512
ROUNDS = {"ioctl": 20, "dmsetup": 8}
_ids = itertools.count(10)


@functools.lru_cache(maxsize=None)
def _messages(pool: str) -> Pool:
    """The driver's own pool API on the hand-made pool (its messages, as the driver sends them)."""
    return Pool(pool, "block", owned=False)


class IoctlPath:
    def snapshot_activate(self, pool: str, pool_dev: str, dev_id: int, name: str) -> str:
        _messages(pool).create_snap(dev_id, 1)
        dm.create(name, thin_table(pool_dev, dev_id, BASE_SECTORS))
        return dm.device_path(name)

    def remove_delete(self, pool: str, dev_id: int, name: str) -> None:
        dm.remove(name)
        _messages(pool).delete_thin(dev_id)


class DmsetupPath:
    def __init__(self) -> None:
        self.env = dict(os.environ)
        if not dm.udev_running():
            self.env["DM_DISABLE_UDEV"] = "1"   # make the nodes itself, never wait on udev

    def _run(self, *args: str) -> None:
        subprocess.run(["dmsetup", *args], check=True, env=self.env,
                       stdout=subprocess.DEVNULL)

    def snapshot_activate(self, pool: str, pool_dev: str, dev_id: int, name: str) -> str:
        self._run("message", pool, "0", f"create_snap {dev_id} 1")
        self._run("create", name, "--table", f"0 {BASE_SECTORS} thin {pool_dev} {dev_id}")
        return f"/dev/mapper/{name}"

    def remove_delete(self, pool: str, dev_id: int, name: str) -> None:
        self._run("remove", "--retry", name)
        self._run("message", pool, "0", f"delete {dev_id}")


PATHS = {"ioctl": IoctlPath, "dmsetup": DmsetupPath}


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    """A 2 GiB-data thin pool with an ext4 base device (id 1), inactive."""
    directory = tmp_path_factory.mktemp("bench-dm")
    data, meta = directory / "data", directory / "metadata"
    for path, size in ((data, 2048 * MiB), (meta, 128 * MiB)):
        with open(path, "wb") as f:
            f.truncate(size)
    loops = [loopback.attach(meta), loopback.attach(data)]
    name = f"gdbench-{os.getpid()}-pool"
    made: list[str] = []
    try:
        dm.create(name, thin_pool_table(loops[0].path, loops[1].path, 2048 * MiB // 512, 128,
                                        features=("skip_block_zeroing",)))
        made.append(name)
        info = dm.info(name)
        pool_dev = f"{info.major}:{info.minor}"
        _messages(name).create_thin(1)
        base = f"gdbench-{os.getpid()}-base"
        dm.create(base, thin_table(pool_dev, 1, BASE_SECTORS))
        subprocess.run(["mkfs.ext4", "-q", "-F", "-E", "nodiscard", dm.device_path(base)],
                       check=True)
        dm.remove(base)
        yield name, pool_dev, directory, made
    finally:
        unmount_all_under(directory)
        for device in reversed(made):
            try:
                if dm.info(device) is not None:
                    dm.remove(device, retries=50)
            except OSError as exc:
                print(f"cleanup: {exc}")
        for loop in loops:
            loop.close()


def _fresh(pool, tag: str) -> tuple[int, str, Path]:
    name, _pool_dev, directory, made = pool
    dev_id = next(_ids)
    device = f"gdbench-{os.getpid()}-{tag}{dev_id}"
    target = directory / device
    target.mkdir()
    made.append(device)
    return dev_id, device, target


def _undo(pool, dev_id: int, device: str, target: Path) -> None:
    name, _pool_dev, _directory, made = pool
    umount(target, retries=5)
    dm.remove(device, retries=50)
    _messages(name).delete_thin(dev_id)
    made.remove(device)
    target.rmdir()


@pytest.mark.parametrize("path", ["ioctl", "dmsetup"])
def test_snapshot_activate_mount(benchmark, pool, path):
    impl = PATHS[path]()
    name, pool_dev, _directory, _made = pool
    current: list[tuple[int, str, Path]] = []

    def setup():
        if current:
            _undo(pool, *current.pop())
        current.append(_fresh(pool, "snap"))
        return current[-1], {}

    def step(dev_id, device, target):
        mount(impl.snapshot_activate(name, pool_dev, dev_id, device), target, "ext4")

    benchmark.extra_info["udev"] = dm.udev_running()
    try:
        benchmark.pedantic(step, setup=setup, rounds=ROUNDS[path], iterations=1)
    finally:
        while current:
            _undo(pool, *current.pop())


@pytest.mark.parametrize("path", ["ioctl", "dmsetup"])
def test_unmount_remove(benchmark, pool, path):
    impl = PATHS[path]()
    name, pool_dev, _directory, made = pool
    fast = IoctlPath()
    pending: list[tuple[int, str, Path]] = []

    def setup():
        dev_id, device, target = _fresh(pool, "rm")
        mount(fast.snapshot_activate(name, pool_dev, dev_id, device), target, "ext4")
        pending.append((dev_id, device, target))
        return (dev_id, device, target), {}

    def step(dev_id, device, target):
        umount(target)
        impl.remove_delete(name, dev_id, device)
        made.remove(device)
        pending.remove((dev_id, device, target))
        target.rmdir()

    benchmark.extra_info["udev"] = dm.udev_running()
    try:
        benchmark.pedantic(step, setup=setup, rounds=ROUNDS[path], iterations=1)
    finally:
        while pending:
            _undo(pool, *pending.pop())

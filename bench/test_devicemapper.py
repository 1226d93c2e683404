"""devicemapper latency: the driver's ioctl path against one `dmsetup` process per step.

Run in the VM: scripts/vm-test bench/test_devicemapper.py -m devicemapper --benchmark-enable
Both paths do the same kernel work on the same pool: snapshot the parent
(create_snap message), activate the thin device, mount it; then unmount,
deactivate and delete it.
"""
from __future__ import annotations

import itertools
import os
import shutil
import subprocess

import pytest

import graphdrivers
from graphdrivers.kernel.mount import mount, umount
from graphdrivers.devmapper.testing import backend

pytestmark = pytest.mark.devicemapper


@pytest.fixture(scope="module")
def drv(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dmbench")
    with backend(tmp, {"dm.loopdatasize": "2GB", "dm.loopmetadatasize": "64MB",
                       "dm.basesize": "512MB", "dm.blkdiscard": "false"}) as (home, options):
        d = graphdrivers.load("devicemapper", home, options)
        d.create("parent")
        d.mount("parent")
        d.unmount("parent")
        try:
            yield d
        finally:
            d.cleanup()


def test_ioctl_snapshot_mount(benchmark, drv):
    counter = itertools.count()

    def cycle():
        layer = f"b{next(counter)}"
        drv.create(layer, "parent")
        drv.mount(layer)
        drv.unmount(layer)
        drv.remove(layer)

    benchmark.pedantic(cycle, rounds=10, iterations=1)


def test_dmsetup_snapshot_mount(benchmark, drv, tmp_path):
    dmsetup = shutil.which("dmsetup") or "/sbin/dmsetup"
    env = dict(os.environ, DM_DISABLE_UDEV="1")
    pool = drv.pool.name
    size = int(drv.metadata("parent")["DeviceSize"]) // 512
    parent_id = int(drv.metadata("parent")["DeviceId"])
    mnt = tmp_path / "m"
    mnt.mkdir()
    counter = itertools.count(1 << 20)

    def run(*args):
        subprocess.run([dmsetup, *args], check=True, env=env, capture_output=True)

    def cycle():
        dev_id = next(counter)
        name = f"dmbench-{dev_id}"
        run("message", pool, "0", f"create_snap {dev_id} {parent_id}")
        run("create", name, "--table", f"0 {size} thin /dev/mapper/{pool} {dev_id}")
        run("mknodes", name)
        mount(f"/dev/mapper/{name}", mnt, drv.fs, 0, "nouuid" if drv.fs == "xfs" else None)
        umount(mnt)
        run("remove", name)
        run("message", pool, "0", f"delete {dev_id}")

    benchmark.pedantic(cycle, rounds=10, iterations=1)

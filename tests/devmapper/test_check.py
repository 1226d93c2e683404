"""`graphdrivers check` on devicemapper homes (issue 17, part 1; VM only): what only
a thin pool can have wrong, made for real, found, repaired, then a clean second check
and unchanged layers. The damage every driver can have is in tests/check/test_check.py,
which the VM runs for devicemapper too."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import graphdrivers
from graphdrivers import check
from graphdrivers.check import findings as F
from graphdrivers.devmapper import dm
from graphdrivers.devmapper.testing import backend

from check.damage import build, hashes

pytestmark = pytest.mark.devicemapper


@pytest.fixture
def drv(tmp_path):
    with backend(tmp_path) as (home, options):
        driver = graphdrivers.load("devicemapper", home, options)
        try:
            build(driver)
            yield driver
        finally:
            driver.cleanup()


def kinds(found):
    return sorted((f.kind, f.subject) for f in found if f.outstanding)


def cli(drv, *args):
    return subprocess.run([sys.executable, "-m", "graphdrivers.cli", "--home",
                           str(Path(drv.home).parent), "--driver", "devicemapper", *args],
                          capture_output=True, text=True, timeout=600)


def repaired_clean(drv) -> None:
    report = check.repair(drv)
    assert report and {f.state for f in report} == {F.REPAIRED}, \
        [(f.kind, f.subject, f.state, f.error) for f in report]
    assert check.inspect(drv) == []
    result = cli(drv, "check", "--json")
    assert result.returncode == 0, result.stdout + result.stderr


def test_orphan_thin_device_idle_device_and_pool_transaction_behind(drv):
    before = hashes(drv)
    pool, devices = drv.pool, drv.devices
    orphan = devices.alloc.next_id + 3          # a thin device no record owns
    pool.create_thin(orphan)
    leaf = drv.store.layer("leaf")
    idle = devices.devname("leaf")              # active, opened by nobody, claimed by none
    pool.activate(idle, leaf.device_id, leaf.size)
    current = pool.transaction_id()
    pool.set_transaction_id(current, 0)         # metadata rolled back under the records
    found = kinds(check.inspect(drv))
    assert found == [("leaked-dm-device", idle), ("orphan-thin-device", str(orphan)),
                     ("pool-transaction-id", pool.name)]
    repaired_clean(drv)
    assert pool.transaction_id() >= max(r.transaction_id for r in drv.store.layers())
    assert dm.info(idle) is None
    pool.create_thin(orphan)                    # the orphan is gone: its id is free again
    pool.delete_thin(orphan)
    drv.create("after", "leaf")                 # the pool takes new transactions
    assert hashes(drv, list(before)) == before


def test_layer_whose_thin_device_the_pool_lost(drv):
    before = hashes(drv, ["base", "other", "other2"])
    drv.devices.deactivate("child")
    drv.pool.delete_thin(drv.store.layer("child").device_id)
    found = check.inspect(drv)
    assert kinds(found) == [(F.LAYER_WITHOUT_DATA, "child")]
    assert "leaf" in found[0].repair
    repaired_clean(drv)
    assert sorted(drv.layers()) == ["base", "other", "other2"]
    assert hashes(drv) == before


def test_leaked_mount_and_device_of_a_cli_mount(drv):
    """`layer mount` leaves the device mounted and active with no holder; the repair
    unmounts it, and its next round deactivates the device that frees."""
    before = hashes(drv)
    out = cli(drv, "layer", "mount", "leaf")
    assert out.returncode == 0, out.stderr
    mountpoint = str(Path(drv.home) / "mnt" / "leaf")
    assert kinds(check.inspect(drv)) == [(F.LEAKED_MOUNT, mountpoint)]
    report = check.repair(drv)
    assert sorted((f.kind, f.state) for f in report) == [
        ("leaked-dm-device", F.REPAIRED), (F.LEAKED_MOUNT, F.REPAIRED)]
    assert check.inspect(drv) == []
    assert dm.info(drv.devices.devname("leaf")) is None
    assert hashes(drv) == before

"""A remove on a loop pool queues its device's discard and delete (VM only).

The remove drops the layer record, deactivates the device and moves its device
record to ``deleted/``; a worker thread (and cleanup(), and the next load after
a crash) discards the queued devices and deletes them in batch transactions.
These tests check what the caller may rely on: the space comes back to the
host's data file within a bound, a crash with queued devices loses nothing and
the next load finishes them, a removed id made again at once is a new empty
layer, and a queued record never deletes a live layer's device.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest

import graphdrivers
from graphdrivers.devmapper.metadata import DeviceRecord
from graphdrivers.devmapper.testing import backend, pool_device_ids, wait_for

pytestmark = pytest.mark.devicemapper

SPACE_BOUND = 60.0     # seconds for removed layers' blocks to leave the loop file (TCG)
BLOB = 24 << 20


def data_bytes(drv) -> int:
    return os.stat(drv.home / "devicemapper" / "data").st_blocks * 512


def write_blob(drv, layer: str, marker: str) -> None:
    root = drv.mount(layer)
    with open(root / "blob", "wb") as f:
        f.write(os.urandom(1 << 20) * (BLOB >> 20))
        os.fsync(f.fileno())
    (root / marker).write_text(marker)
    drv.unmount(layer)


def consistent(drv) -> None:
    records = drv.store.all_device_ids()
    assert pool_device_ids(drv.pool, max(records) + 8) == records
    assert drv.store.layer_ids() == drv.layers()
    assert drv.store.transaction() is None


@pytest.fixture
def drv(tmp_path):
    with backend(tmp_path) as (home, options):
        d = graphdrivers.load("devicemapper", home, options)
        try:
            yield d
        finally:
            d.cleanup()


def test_removed_id_made_again_at_once_is_a_new_layer(drv):
    drv.create("keep")
    write_blob(drv, "keep", "precious")
    drv.create("a", "keep")
    write_blob(drv, "a", "one")
    old_id = drv.store.layer("a").device_id
    drv.remove("a")
    drv.create("a", "keep")                       # while the old device may still be queued
    assert drv.store.layer("a").device_id != old_id
    root = drv.mount("a")
    assert not (root / "one").exists() and (root / "precious").exists()
    (root / "two").write_text("two")
    drv.unmount("a")
    assert wait_for(lambda: drv.cleanup_deleted() == 0, SPACE_BOUND)
    root = drv.mount("a")
    assert (root / "two").read_text() == "two" and not (root / "one").exists()
    drv.unmount("a")
    assert (drv.mount("keep") / "precious").read_text() == "precious"
    drv.unmount("keep")
    consistent(drv)


def test_queue_never_deletes_a_live_layers_device(drv):
    drv.create("keep")
    write_blob(drv, "keep", "precious")
    live = drv.store.layer("keep")
    # a queued record naming the live layer's device (damage, or a crash's double record)
    bogus = DeviceRecord("ghost", live.device_id, live.size, deleted=True)
    drv.store.save(bogus)
    assert drv.cleanup_deleted() == 1             # refused, stays queued
    assert (drv.mount("keep") / "precious").read_text() == "precious"
    drv.unmount("keep")
    assert live.device_id in pool_device_ids(drv.pool, live.device_id + 1)
    drv.store.unpark([live.device_id])


CHILD = r"""
import json, sys
import graphdrivers
home, options = sys.argv[1], json.loads(sys.argv[2])
d = graphdrivers.load("devicemapper", home, options)
for layer in ("d1", "d2", "d3"):
    d.remove(layer)
d.cleanup()
"""


@pytest.mark.parametrize("fault, skip", [("devmapper.remove.after_park", 2),
                                         ("devmapper.remove.after_discard", 1),
                                         ("devmapper.remove.after_open", 0)])
def test_crash_with_queued_devices_loses_nothing(tmp_path, fault, skip):
    with backend(tmp_path) as (home, options):
        d = graphdrivers.load("devicemapper", home, options)
        try:
            d.create("keep")
            write_blob(d, "keep", "precious")
            empty = data_bytes(d)
            for layer in ("d1", "d2", "d3"):
                d.create(layer, "keep")
                write_blob(d, layer, layer)
            full = data_bytes(d)
        finally:
            d.cleanup()
        assert full - empty >= 3 * BLOB * 3 // 4
        env = dict(os.environ, GRAPHDRIVERS_FAULT=fault, GRAPHDRIVERS_FAULT_SKIP=str(skip))
        proc = subprocess.run([sys.executable, "-c", CHILD, str(home), json.dumps(options)],
                              env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == -signal.SIGKILL, (proc.returncode, proc.stderr[-2000:])
        d = graphdrivers.load("devicemapper", home, options)
        try:
            assert d.layers() == ["keep"]
            consistent(d)                          # the load finished the queue
            assert d.store.deleted() == []
            assert wait_for(lambda: data_bytes(d) - empty < BLOB, SPACE_BOUND), \
                (empty, full, data_bytes(d))
            assert (d.mount("keep") / "precious").read_text() == "precious"
            d.unmount("keep")
            d.create("d1", "keep")                 # the ids can be made again
            assert not (d.mount("d1") / "d1").exists()
            d.unmount("d1")
        finally:
            d.cleanup()

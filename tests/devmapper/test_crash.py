"""Crash recovery: SIGKILL at every step of each pool transaction, then reload (VM only).

A child process runs one operation with GRAPHDRIVERS_FAULT naming the step; it
kills itself there. The reload must find every finished layer intact, no thin
device id in the pool that no record owns (or the reverse), no device record
without its layer record (or the reverse), no open transaction, and a pool
transaction id that the next change can build on.

A layer exists once its record is in the layer store, after its device's pool
transaction committed (devicemapper.create.after_data is the point in between);
it is gone once that record is dropped, before its device goes
(devicemapper.remove.after_record is the point in between).
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest

import graphdrivers

from graphdrivers.devmapper.testing import backend, pool_device_ids, without_loop_sizes

pytestmark = pytest.mark.devicemapper

STEPS = ["after_open", "after_message", "after_register", "after_commit"]
CHILD = r"""
import json, sys
import graphdrivers
home, options, op = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]
d = graphdrivers.load("devicemapper", home, options)
if op == "snapshot":
    d.create("new", "keep")
elif op == "remove":
    d.remove("doomed")
elif op == "resize":
    d.resize_pool(data_size=3 << 30, metadata_size=96 << 20)
d.cleanup()
"""


def run_child(home, options, op, fault):
    env = dict(os.environ, GRAPHDRIVERS_FAULT=fault)
    proc = subprocess.run([sys.executable, "-c", CHILD, str(home), json.dumps(options), op],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, (proc.returncode, proc.stderr[-2000:])


def check_consistent(drv):
    assert drv.store.transaction() is None
    records = drv.store.all_device_ids()
    assert pool_device_ids(drv.pool, max(records) + 8) == records
    assert drv.store.layer_ids() == drv.layers()     # one device per recorded layer
    assert drv.pool.transaction_id() == drv.txn.current
    drv.create("after-crash", "keep" if drv.exists("keep") else None)   # the pool accepts the next change
    assert drv.exists("after-crash")


def prepare(home, options):
    d = graphdrivers.load("devicemapper", home, options)
    try:
        d.create("keep")
        (d.mount("keep") / "data").write_text("precious")
        d.unmount("keep")
        d.create("doomed", "keep")
    finally:
        d.cleanup()


def check_keep(drv):
    assert (drv.mount("keep") / "data").read_text() == "precious"
    drv.unmount("keep")


@pytest.mark.parametrize("step", STEPS)
def test_crash_creating_base(tmp_path, step):
    with backend(tmp_path) as (home, options):
        run_child(home, options, "none", f"devmapper.create.{step}")
        drv = graphdrivers.load("devicemapper", home, options)
        try:
            drv.create("keep")
            (drv.mount("keep") / "data").write_text("precious")
            drv.unmount("keep")
            check_consistent(drv)
        finally:
            drv.cleanup()


LAYER_FAULTS = ([f"devmapper.snapshot.{step}" for step in STEPS]
                + ["devicemapper.create.after_data"])
# a remove on a loop pool queues the device (after_park); the worker (or cleanup's
# drain) discards it (after_discard) and deletes it in a batch transaction (STEPS)
REMOVE_FAULTS = (["devicemapper.remove.after_record", "devmapper.remove.after_park",
                  "devmapper.remove.after_discard"]
                 + [f"devmapper.remove.{step}" for step in STEPS])


@pytest.mark.parametrize("op, fault", [("snapshot", f) for f in LAYER_FAULTS]
                         + [("remove", f) for f in REMOVE_FAULTS])
def test_crash_in_layer_transaction(tmp_path, op, fault):
    with backend(tmp_path) as (home, options):
        prepare(home, options)
        run_child(home, options, op, fault)
        drv = graphdrivers.load("devicemapper", home, options)
        try:
            check_keep(drv)
            if op == "snapshot":
                assert not drv.exists("new")      # killed before its record: never there
            if op == "remove":
                assert not drv.exists("doomed")   # its record went first: gone, device too
            assert drv.layers() == (["doomed", "keep"] if op == "snapshot" else ["keep"])
            check_consistent(drv)
            drv.create("new", "keep")             # the interrupted layer can be made again
            assert (drv.mount("new") / "data").read_text() == "precious"
            drv.unmount("new")
        finally:
            drv.cleanup()


@pytest.mark.parametrize("step", ["after_grow_files", "after_suspend", "after_reload"])
def test_crash_in_pool_resize(tmp_path, step):
    with backend(tmp_path) as (home, options):
        prepare(home, options)
        run_child(home, options, "resize", f"devmapper.resize.{step}")
        # a restart leaves the sizes to the pool: the files may already be the grown ones
        drv = graphdrivers.load("devicemapper", home, without_loop_sizes(options))
        try:
            check_keep(drv)
            st = drv.resize_pool(data_size=3 << 30, metadata_size=96 << 20)   # can be resized again
            assert st["data_total"] == 3 << 30 and st["metadata_total"] == 96 << 20
            check_consistent(drv)
        finally:
            drv.cleanup()

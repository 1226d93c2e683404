"""The lock order of devmapper/devices.py, held on a real pool (runs in the VM).

A resize and a create in two threads of one process, while a second holder
(another fd on ``<home>/pool.lock``, as the CLI beside a plugin would be) keeps
the pool lock: the resize queues first, the create second, then the holder lets
go. With one order for both (instance lock, then pool lock) they finish one
after the other; with the resize taking the pool lock first, the resize gets
the pool and waits for the instance lock the create holds while the create
waits for the pool: a deadlock. The scenario runs in a child process so that a
deadlock fails the test (the child is killed) instead of hanging the run.
"""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

import graphdrivers

from graphdrivers.devmapper.testing import backend

pytestmark = pytest.mark.devicemapper

CHILD = r"""
import json, os, sys, threading, time
import graphdrivers
from graphdrivers.devmapper.pool import PoolLock

home, options = sys.argv[1], json.loads(sys.argv[2])
d = graphdrivers.load("devicemapper", home, options)
holder = PoolLock(d.home / "pool.lock")   # its own fd: its flock excludes the driver's
holder.__enter__()
errors = []

def run(fn):
    try:
        fn()
    except BaseException as exc:
        errors.append(repr(exc))

def waiting_flocks():
    # /proc/locks: "1: -> FLOCK  ADVISORY  WRITE <pid> <dev:inode> 0 EOF" is a blocked waiter
    count = 0
    with open("/proc/locks") as f:
        for line in f:
            parts = line.split()
            if parts[1:3] == ["->", "FLOCK"] and parts[-4] == str(os.getpid()):
                count += 1
    return count

resize = threading.Thread(target=run, args=(d.resize_pool,), daemon=True)
resize.start()
deadline = time.monotonic() + 60
while waiting_flocks() == 0 and time.monotonic() < deadline:
    time.sleep(0.05)
assert waiting_flocks() == 1, "the resize never queued on the pool lock"
create = threading.Thread(target=run, args=(lambda: d.create("during-resize"),), daemon=True)
create.start()
time.sleep(3)          # let the create reach its wait (the instance lock or the pool lock)
holder.__exit__(None, None, None)
for thread in (resize, create):
    thread.join(timeout=120)
if resize.is_alive() or create.is_alive():
    print("DEADLOCK: resize alive=%s create alive=%s" % (resize.is_alive(), create.is_alive()),
          flush=True)
    os._exit(3)
if errors:
    print("ERRORS:", errors, flush=True)
    os._exit(4)
d.cleanup()
"""


def test_resize_and_create_take_the_locks_in_one_order(tmp_path):
    with backend(tmp_path) as (home, options):
        proc = subprocess.run([sys.executable, "-c", CHILD, str(home), json.dumps(options)],
                              capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, (proc.returncode, proc.stdout[-2000:], proc.stderr[-2000:])
        drv = graphdrivers.load("devicemapper", home, options)
        try:
            assert drv.exists("during-resize")
            assert drv.store.transaction() is None
        finally:
            drv.cleanup()

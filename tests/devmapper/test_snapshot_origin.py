"""A snapshot suspends its origin: a create on a parent against the parent's mounts in
another process (runs in the VM).

The create suspends the parent's device around the pool's create_snap message and
resumes it after. Without the parent's id lock, another process mounting and
unmounting the parent interleaves with that window: its mount(2) meets a frozen
device (EBUSY), or its unmount removes the device while it is suspended and the
create's resume fails (ENXIO). Both sides loop until one of them meets it; the
old code failed on the first create.
"""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

import graphdrivers

from graphdrivers.devmapper.testing import backend

pytestmark = pytest.mark.devicemapper

CREATES = 25

MOUNTER = r"""
import json, os, sys
import graphdrivers
home, options, stop = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]
d = graphdrivers.load("devicemapper", home, options)
try:
    print("ready", flush=True)
    n = 0
    while not os.path.exists(stop):
        root = d.mount("p")
        assert (root / "f").read_text() == "parent", "the parent reads wrong"
        d.unmount("p")
        n += 1
    print(n, flush=True)
finally:
    d.cleanup()
"""


def test_create_on_a_parent_while_another_process_mounts_it(tmp_path):
    with backend(tmp_path) as (home, options):
        drv = graphdrivers.load("devicemapper", home, options)
        try:
            drv.create("p", rw=True)
            (drv.mount("p") / "f").write_text("parent")
            drv.unmount("p")
            stop = tmp_path / "stop"
            mounter = subprocess.Popen(
                [sys.executable, "-c", MOUNTER, str(home), json.dumps(options), str(stop)],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            try:
                assert mounter.stdout.readline().strip() == "ready", mounter.stderr.read()
                for k in range(CREATES):
                    assert mounter.poll() is None, "the mounter died:\n" + mounter.stderr.read()
                    drv.create(f"c{k}", "p")
                    root = drv.mount(f"c{k}")
                    assert (root / "f").read_text() == "parent"
                    drv.unmount(f"c{k}")
                    drv.remove(f"c{k}")
                stop.touch()
                out, err = mounter.communicate(timeout=120)
                assert mounter.returncode == 0, err
                assert int(out.split()[-1]) > 0, "the mounter never mounted"
            finally:
                if mounter.poll() is None:
                    mounter.kill()
                    mounter.wait()
            drv.remove("p")
        finally:
            drv.cleanup()

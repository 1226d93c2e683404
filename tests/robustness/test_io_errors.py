"""I/O errors (issue 17, part 3): the disk under the home fails during an operation.

The home's disk is a device-mapper linear device; just before one operation (an
apply, a diff, a create, a remove) its table is swapped for ``error``, so that every
read and write fails as on a disk that died, with the page cache dropped first so
that reads reach it. The operation must raise a DriverError that says an I/O error
happened. Then the disk is healthy again (the linear table back), its filesystem is
mounted anew (a filesystem that met write errors stops writing until then), and a
fresh load() shows the store as it was before the failure: the layers made before
are all there with the same trees, the failed operation left nothing but, for an
apply, the layer it was applying into (whose create had returned), and `check`
finds nothing wrong. In the VM.
"""
from __future__ import annotations

import contextlib
import io
import os

import pytest

import graphdrivers
from graphdrivers.errors import DriverError
from graphdrivers.kernel import loop as loopback

from .diskstack import DISK, Disk, digest_of, require_targets, settle
from .layers import make_tar

T1 = make_tar({"etc/hostname": b"one\n", "bin/tool": os.urandom(300_000), "bin/sh": "->tool"})
T2 = make_tar({"etc/hostname": b"two\n", "usr/doc": os.urandom(100_000)})
T3 = make_tar({"opt/big": os.urandom(2 << 20)})
OPERATIONS = ("apply", "diff", "create", "remove")


def fail_disk(name: str, *, failing: bool, device: str) -> None:
    """Swap the live table of ``name``: ``error`` (a dead disk) or linear over ``device``."""
    from graphdrivers.devmapper import dm
    sectors = DISK // 512
    table = [(0, sectors, "error", "")] if failing else [(0, sectors, "linear", f"{device} 0")]
    dm.load_table(name, table)
    dm.suspend(name, flush=False)     # no freeze: a frozen filesystem would write to it
    dm.resume(name)


def drop_caches() -> None:
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


def attempt(drv, operation: str) -> None:
    if operation == "apply":
        drv.apply_diff("new", "mid", io.BytesIO(T3))
    elif operation == "diff":
        stream = drv.diff("mid")
        try:
            while stream.read(1 << 16):
                pass
        finally:
            stream.close()
    elif operation == "create":
        drv.create("new", "mid")
    elif operation == "remove":
        drv.remove("mid")


@pytest.mark.parametrize("operation", OPERATIONS)
@pytest.mark.parametrize("driver_name", ["vfs", "overlay2", "btrfs", "devicemapper"])
def test_io_error_during(driver_name, operation, tmp_path, monkeypatch):
    require_targets("error")
    from graphdrivers.devmapper import dm
    with open(tmp_path / "disk.img", "wb") as f:
        f.truncate(DISK)
    backing = loopback.attach(tmp_path / "disk.img")
    name = f"gdio-{os.getpid()}-{driver_name}-{operation}"     # one per case: udev lags
    dm.create(name, [(0, DISK // 512, "linear", f"{backing.path} 0")])
    settle()
    try:
        disk = Disk(driver_name, dm.device_path(name), tmp_path, "io")
        with disk.mounted(make=True) as (home, options):
            try:
                drv = graphdrivers.load(driver_name, home, options)
            except graphdrivers.NotSupported as exc:
                pytest.skip(f"{driver_name}: {exc}")
            try:
                drv.create("base")
                drv.apply_diff("base", None, io.BytesIO(T1))
                drv.create("mid", "base")
                drv.apply_diff("mid", "base", io.BytesIO(T2))
                if operation == "apply":
                    drv.create("new", "mid")
                before = {layer: digest_of(drv, layer) for layer in ("base", "mid")}
                drop_caches()
                fail_disk(name, failing=True, device=backing.path)
                try:
                    with pytest.raises(DriverError) as failed:
                        attempt(drv, operation)
                finally:
                    fail_disk(name, failing=False, device=backing.path)
                message = str(failed.value)
                assert "I/O error" in message or "Input/output error" in message, message
            finally:
                with contextlib.suppress(DriverError, OSError):
                    drv.cleanup()
        # a new mount of the healthy disk (as after a reboot), a fresh load
        monkeypatch.setenv("GRAPHDRIVERS_RUN_DIR", str(tmp_path / "run-after"))
        with disk.mounted(make=False) as (home, options):
            drv = graphdrivers.load(driver_name, home, options)
            try:
                present = set(drv.layers())
                allowed = {"base", "mid"} | ({"new"} if operation == "apply" else set())
                assert {"base", "mid"} <= present <= allowed, (operation, present)
                for layer, tree in before.items():
                    assert digest_of(drv, layer) == tree, f"{layer} changed after the I/O error"
                # check finds nothing (a kept "new" of a failed apply is a layer, whole
                # as far as the store can tell)
                from graphdrivers.check import run as check
                assert not check.outstanding(check.inspect(drv)), \
                    [f.to_json() for f in check.inspect(drv)]
                # the store takes changes again
                drv.create("after", "mid")
                drv.remove("after")
            finally:
                drv.cleanup()
    finally:
        dm.remove(name)
        backing.close()

"""End to end with a real engine: Debian's dockerd 20.10 storing its layers
through `graphdrivers serve`, compared with dockerd's built-in driver of the
same name on the same image (research/engine.md §1-2)."""
from __future__ import annotations

import contextlib

import pytest

from plugin import engine_cycle as ec

pytestmark = pytest.mark.slow

WHY = ec.missing_tools()

@contextlib.contextmanager
def backing(driver: str, work):
    """Where both dockerds keep their data: btrfs needs a btrfs filesystem."""
    if driver == "btrfs":
        from graphdrivers.btrfs.testing import filesystem
        with filesystem(work) as mnt:
            yield mnt
    else:
        yield work


@pytest.mark.skipif(WHY is not None, reason=f"no real engine here: {WHY}")
@pytest.mark.parametrize("driver", ["vfs", "overlay2", "btrfs", "devicemapper"])
def test_docker_cycle_on_plugin_matches_builtin(driver, capsys):
    """devicemapper needs a kernel with device-mapper: on these hosts only in the VM,
    as a separate command (about 10 minutes under emulation):
    scripts/vm-test tests/plugin/test_plugin_engine.py -m slow -k devicemapper -s"""
    from graphdrivers import NotSupported
    from graphdrivers.registry import driver_class
    if driver == "devicemapper":
        from graphdrivers.devmapper import dm
        if dm.available() is not None:
            pytest.skip(f"{dm.available()} (the cycle runs in the VM: see the docstring)")
    if ec.IN_VM and driver != "devicemapper":
        pytest.skip("the VM runs only the devicemapper cycle; the host runs the others")
    try:
        driver_class(driver)
    except NotSupported as exc:
        pytest.skip(f"{driver}: {exc}")
    with ec.workspace() as work:
        rootfs = ec.busybox_tar(work)
        with backing(driver, work) as base:
            reference = ec.cycle_builtin(driver, base / "ref", rootfs)
            # vfs through the default socket in /run/docker/plugins, the others
            # through a spec file in /etc/docker/plugins: both discovery paths
            # every driver with its defaults (btrfs: the native, generation-based diff)
            got = ec.cycle_plugin(driver, base / "gd", rootfs, spec_file=driver != "vfs")
    with capsys.disabled():
        print(f"\n{driver}: built-in cycle {reference.cycle_seconds} s "
              f"(with daemon start/stop {reference.total_seconds} s), plugin "
              f"{got.cycle_seconds} s ({got.total_seconds} s); docker info: {got.info}")
    assert got.diff1 == ec.DIFF1
    assert got.diff2 == ec.DIFF2
    assert got.check == ec.CHECK_OUT
    assert got.info["Driver"] == f"graphdrivers-{driver}"
    assert ec.compare(reference, got) == []
    assert len(got.files) > 200        # every busybox applet link plus the layers' files

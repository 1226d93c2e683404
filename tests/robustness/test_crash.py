"""Crash consistency of the host drivers (issue 9, part 2).

For every fault point vfs, overlay2 and btrfs register (graphdrivers.faults.POINTS)
and for apply_diff killed mid-stream, a child process loads the driver on a
prepared home and is SIGKILLed at that point. The parent then reloads the
driver and checks: it loads; every earlier layer exists with its content; the
half-made layer is complete or gone, and can be removed and re-created; no
mount under the home survives cleanup(); no loop device leaked; no temp or
trash entry of the victim is left. (devicemapper's crash tests live in
tests/devmapper/test_crash.py and run in the VM.)
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import graphdrivers
from graphdrivers import check, faults
from graphdrivers.check.findings import HALF_MADE, LEAKED_MOUNT
from graphdrivers.kernel.mount import mounts_under, unmount_all_under

from .layers import content, dangling_links, leftovers, loop_devices_backed_under, make_tar, write

CHILD = str(Path(__file__).with_name("crash_child.py"))
BIG = 600 << 10
APPLY_TAR = make_tar({**{f"many/f{i:03}": bytes([i]) * 8192 for i in range(50)},
                      "big/blob": b"B" * BIG, "after": b"after\n"}, deletes=("gone",))
APPLY_KILLS = {"apply_diff.between_files": 200 << 10, "apply_diff.inside_big_file": 700 << 10}

HOST_DRIVERS = ("vfs", "overlay2", "btrfs")
for _name in HOST_DRIVERS:
    graphdrivers.registry.driver_class(_name)     # importing a driver registers its points
CASES = [(name, point) for name in HOST_DRIVERS for point in faults.POINTS[name]] + \
        [(name, kill) for name in HOST_DRIVERS for kill in APPLY_KILLS]


def _run_child(name, home, options, op, env_fault: str | None, tar: Path | None = None,
               kill_at: int = 0) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env.pop(faults.ENV, None)
    if env_fault:
        env[faults.ENV] = env_fault
    args = [sys.executable, CHILD, name, str(home), json.dumps(options), op]
    if tar is not None:
        args += [str(tar), str(kill_at)]
    return subprocess.run(args, env=env, capture_output=True, text=True, timeout=120,
                          check=False)


@pytest.mark.parametrize("name,point", CASES, ids=[f"{n}-{p.split('.', 1)[1]}" for n, p in CASES])
def test_sigkill_at(name, point, tmp_path, request):
    # the shared fixtures, for just this driver (devicemapper has its own crash suite)
    from graphdrivers.testing.homes import driver_home
    from graphdrivers.testing.selection import skip_unless_requested
    if name not in graphdrivers.available():
        pytest.skip(f"{name} is not installed")
    with driver_home(name, tmp_path) as (home, options):
        try:
            graphdrivers.registry.driver_class(name).probe(Path(home) / name)
        except graphdrivers.NotSupported as exc:
            skip_unless_requested(name, exc)
        try:
            _crash_case(name, point, Path(home), options, tmp_path)
        finally:
            unmount_all_under(home)    # after the checks: a failed case leaks nothing


def _crash_case(name, point, home, options, tmp_path):
    loops_before = loop_devices_backed_under(tmp_path)
    drv = graphdrivers.load(name, home, options)
    drv.create("base")
    write(drv, "base", {"etc/os-release": b"base\n", "gone": b"to be deleted\n"})
    drv.create("child", "base")
    write(drv, "child", {"etc/child": b"child\n", "usr/bin/tool": b"\x7fELF" * 100})
    op = point.split(".")[1] if not point.startswith("apply_diff") else "apply_diff"
    if op in ("remove", "apply_diff"):
        drv.create("victim", "child")
        if op == "remove":
            write(drv, "victim", {"victim-only": b"v\n"})
    before = {layer: content(drv, layer) for layer in drv.layers()}
    drv.cleanup()
    del drv

    tar = None
    if op == "apply_diff":
        tar = tmp_path / "layer.tar"
        tar.write_bytes(APPLY_TAR)
        result = _run_child(name, home, options, op, None, tar, APPLY_KILLS[point])
    else:
        result = _run_child(name, home, options, op, point)
    assert result.returncode == -signal.SIGKILL, \
        f"the child was not killed at {point} (exit {result.returncode}):\n{result.stderr}"

    drv = graphdrivers.load(name, home, options)          # it loads after the crash
    try:
        # what the load's recovery leaves for `graphdrivers check` (issue 17): a layer
        # half applied (the only damage no load can see), a mount of the dead process
        found = {(f.kind, f.subject) for f in check.inspect(drv) if f.outstanding}
        allowed = {(HALF_MADE, "victim")} if op == "apply_diff" else set()
        if op in ("mount", "unmount"):
            allowed |= {(LEAKED_MOUNT, m) for m in mounts_under(home)}
        assert found <= allowed, f"check after a crash at {point}: {sorted(found)}"
        if op == "apply_diff":
            assert (HALF_MADE, "victim") in found, "the half-applied layer went unseen"
        for layer in ("base", "child"):
            assert drv.exists(layer), f"{layer} lost after a crash at {point}"
            assert content(drv, layer) == before[layer], f"{layer} changed by a crash at {point}"
        assert drv.parent("child") == "base"
        assert set(drv.layers()) <= {"base", "child", "victim"}
        if drv.exists("victim"):
            # complete: what it held before (remove), a full child (create), or any
            # prefix of the tar (apply_diff, which DESIGN allows to be half-applied)
            assert drv.parent("victim") == "child"
            got = content(drv, "victim")
            if op == "create":
                assert got == before["child"], f"half-made layer after a crash at {point}"
            elif op == "remove":
                assert got == before["victim"], f"half-removed layer after a crash at {point}"
            drv.remove("victim")
        assert not drv.exists("victim")
        # the interrupted layer can be made again, and works
        drv.create("victim", "child")
        drv.apply_diff("victim", "child", io.BytesIO(APPLY_TAR))
        got = content(drv, "victim")
        assert got["big/blob"][4] == BIG and got["after"][7] == hashlib.sha256(b"after\n").hexdigest()
        assert "gone" not in got and "after" in got and "big/blob" in got
        assert content(drv, "child") == before["child"]
        drv.remove("victim")
        # a mount left by the dead process is adopted (one reference), works, and goes
        # when the engine releases the dead process's reference, as dockerd does for
        # the containers that died with it (cleanup() leaves adopted mounts alone:
        # they may be another live process's)
        drv.mount("child")
        drv.unmount("child")
        if op in ("mount", "unmount"):
            drv.unmount("child")
        assert check.inspect(drv) == [], f"check after the crash at {point} and the repairs"
    finally:
        drv.cleanup()
    assert mounts_under(home) == [], f"mounts leaked after a crash at {point}"
    assert loop_devices_backed_under(tmp_path) == loops_before, "a loop device leaked"
    assert leftovers(home, "victim") == [], f"leftovers of the victim after a crash at {point}"
    assert dangling_links(home / name / "l") == [], "dangling overlay2 short links"

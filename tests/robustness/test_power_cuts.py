"""Power cuts at every flush (issue 17, part 2): dm-log-writes under the home, in the VM.

Each driver's home (for devicemapper: its home, its pool's metadata and its pool's
data, three slices of one logged disk, so that one log orders all their writes)
lives on a disk whose every completed write is logged. A workload of creates,
applies, snapshots and removes runs, with a mark in the log before and after each
operation. The log is then replayed onto a blank image up to each cut point
(every flush and FUA after the filesystem was made, and a sample of points between
them) and, on a throw-away view of that image, the driver is loaded and checked:
- every operation that had returned before the cut is there in full: its layers
  exist and their trees (names, types, modes, content hashes, link targets) are
  those seen just after it returned;
- nothing that had not started is visible, and of the operation in flight, either
  the before or the after;
- `graphdrivers check` finds nothing that `--repair` cannot fix, and nothing after
  the repair, which leaves the layers above as they were.

GRAPHDRIVERS_POWERCUT_POINTS caps the cut points per driver (CI: 24, spread over
the run; 0: every one), GRAPHDRIVERS_POWERCUT_BETWEEN adds random points between
flushes (CI: 4). Needs device-mapper's log-writes and snapshot targets (the VM).
"""
from __future__ import annotations

import io
import os

import pytest

import graphdrivers
from graphdrivers.kernel import loop as loopback

from . import logwrites
from .diskstack import DISK, MB, Disk, digest_of, require_targets
from .layers import make_tar

POINTS = int(os.environ.get("GRAPHDRIVERS_POWERCUT_POINTS", "24"))
BETWEEN = int(os.environ.get("GRAPHDRIVERS_POWERCUT_BETWEEN", "4"))
LOG = 2 << 30


T1 = make_tar({"etc/hostname": b"one\n", "bin/tool": os.urandom(200_000), "bin/sh": "->tool",
           "etc/hard": "=>etc/hostname", "etc/passwd": b"root:x:0:0::/root:/bin/sh\n"})
T2 = make_tar({"etc/hostname": b"two\n", "etc/hard": None, "usr/share/doc": os.urandom(50_000)})
T3 = make_tar({"opt/big": os.urandom(1 << 20), "opt/small": b"s\n"})
OPS = [("create", "base", None), ("apply", "base", T1),
       ("create", "mid", "base"), ("apply", "mid", T2),
       ("create", "top", "mid"), ("apply", "top", T3),
       ("create_rw", "rw", "top"),
       ("remove", "rw", None),
       ("create", "alt", "base"), ("apply", "alt", T3),
       ("remove", "top", None),
       ("create", "solo", None),
       ("remove", "alt", None)]


def run_workload(driver_name: str, disk: Disk, log_name: str) -> tuple[list[dict], list[tuple]]:
    """Run OPS with marks around each; returns what each left (layer -> tree) and OPS."""
    after: list[dict] = []
    with disk.mounted(make=True) as (home, options):
        logwrites.mark(log_name, "ready")
        try:
            drv = graphdrivers.load(driver_name, home, options)
        except graphdrivers.NotSupported as exc:
            pytest.skip(f"{driver_name}: {exc}")
        try:
            state: dict[str, dict] = {}
            for k, (kind, layer, arg) in enumerate(OPS):
                logwrites.mark(log_name, f"start-{k}")
                if kind == "create":
                    drv.create(layer, arg)
                elif kind == "create_rw":
                    drv.create(layer, arg, rw=True)
                elif kind == "apply":
                    drv.apply_diff(layer, drv.parent(layer), io.BytesIO(arg))
                elif kind == "remove":
                    drv.remove(layer)
                logwrites.mark(log_name, f"done-{k}")
                # what the operation left, read back after its mark (reads add no writes
                # that matter: a mount's own bookkeeping is not a promise)
                if kind == "remove":
                    state.pop(layer)
                else:
                    state[layer] = digest_of(drv, layer)
                after.append(dict(state))
        finally:
            drv.cleanup()
    return after, OPS


def check_cut(drv, log, point: int, after: list[dict]) -> str:
    """Compare the driver at a cut with the operations' marks; returns a short label."""
    done = [k for k in range(len(OPS)) if log.mark_index(f"done-{k}") <= point]
    last = done[-1] if done else -1
    expected = after[last] if last >= 0 else {}
    flight = last + 1 if last + 1 < len(OPS) and \
        log.mark_index(f"start-{last + 1}") <= point else None
    kind, target = (OPS[flight][0], OPS[flight][1]) if flight is not None else (None, None)
    present = set(drv.layers())
    must = set(expected) - ({target} if kind == "remove" else set())
    may = must | ({target} if kind in ("create", "create_rw", "remove") else set())
    assert must <= present, f"layers lost at entry {point}: {sorted(must - present)}"
    assert present <= may, f"layers that had not been made at entry {point}: {sorted(present - may)}"
    for layer in sorted(must):
        if layer == target:           # the layer being applied may hold part of its tar
            continue
        got = digest_of(drv, layer)
        assert got == expected[layer], (
            f"layer {layer} at entry {point} (after op {last}): "
            f"{sorted(set(got.items()) ^ set(expected[layer].items()))[:6]}")
    return f"op {last}" + (f" + {kind} {target} in flight" if kind else "")


def check_repairs(drv) -> bool:
    """`graphdrivers check` finds nothing that `--repair` cannot fix, and after the
    repair nothing at all; returns whether there was anything to repair."""
    from graphdrivers.check import run as check
    from graphdrivers.check.findings import FOUND
    found = [f for f in check.inspect(drv) if f.state == FOUND]
    assert all(f.action is not None for f in found), \
        [f.to_json() for f in found if f.action is None]
    if found:
        assert not check.outstanding(check.repair(drv))
        assert not check.outstanding(check.inspect(drv))
    return bool(found)


@pytest.mark.parametrize("driver_name", ["vfs", "overlay2", "btrfs", "devicemapper"])
def test_power_cuts(driver_name, tmp_path, monkeypatch):
    require_targets("log-writes", "snapshot")
    from graphdrivers.devmapper import dm
    for name, size in (("disk", DISK), ("log", LOG), ("replay", DISK), ("cow", 256 * MB)):
        with open(tmp_path / f"{name}.img", "wb") as f:
            f.truncate(size)
    loops = {n: loopback.attach(tmp_path / f"{n}.img") for n in ("disk", "log", "replay", "cow")}
    try:
        log_name = f"gdpc-{os.getpid()}-{driver_name}-log"     # a name per test: udev lags
        with logwrites.logging_device(log_name, loops["disk"].path, loops["log"].path) as logged:
            disk = Disk(driver_name, logged, tmp_path, "live")
            after, _ = run_workload(driver_name, disk, log_name)
        log = logwrites.read_log(str(tmp_path / "log.img"))
        start = log.mark_index("ready")
        points = log.cut_points(start, between=BETWEEN, seed=len(log.entries))
        if POINTS and len(points) > POINTS:
            step = len(points) / POINTS
            points = sorted({points[int(i * step)] for i in range(POINTS)} | {points[-1]})
        replay = logwrites.Replay(log, str(tmp_path / "replay.img"), DISK)
        seen = []
        try:
            for point in points:
                replay.to(point)
                # a new boot: nothing of the live run's run directory survives a power cut
                monkeypatch.setenv("GRAPHDRIVERS_RUN_DIR", str(tmp_path / f"run-{point}"))
                # a name per point: reusing one races udev's removal of the last node
                with logwrites.scratch_view(f"gdpc-{driver_name}-cut{point}", loops["replay"].path,
                                            loops["cow"].path) as view:
                    cut = Disk(driver_name, view, tmp_path, f"cut{point}")
                    with cut.mounted(make=False) as (home, options):
                        drv = graphdrivers.load(driver_name, home, options)
                        try:
                            seen.append((point, check_cut(drv, log, point, after)))
                            if check_repairs(drv):      # repair must not touch what it kept
                                check_cut(drv, log, point, after)
                        finally:
                            drv.cleanup()
        finally:
            replay.close()
        print(f"\n{driver_name}: {len(log.entries)} log entries, "
              f"{sum(e.durable_point for e in log.entries[start:])} flush/FUA/mark points, "
              f"{len(points)} checked")
        assert seen and len(seen) == len(points)
    finally:
        for device in loops.values():
            device.close()
        assert not [n for n in dm.list_devices() if n.startswith("gdpc-")]

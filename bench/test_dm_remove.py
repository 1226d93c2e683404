"""devicemapper remove: a loop pool against a block pool in the same VM run (issue 16).

    scripts/vm-test --vm-disks 3 --vm-rwdir OUT -m "" bench/test_dm_remove.py \
        --benchmark-enable --benchmark-json=OUT/dm-remove.json

Both pools are open at once (loop: sparse files on ext4 on the first VM disk;
block: the other two disks, as bench/conftest.py builds them) and each round
removes one layer on each, back to back, so both see the same load. Figures in
``extra_info`` (milliseconds, medians): ``loop_ms``, ``block_ms``, ``ratio``
(target at most 2), ``flushes`` per remove on each pool (os.fsync/os.fdatasync
calls, bench/test_layer_ops.py's counter), ``space_back_s`` (loop: seconds
from the remove of a layer holding a written file until the data file's
st_blocks shrank by three quarters of it: the queued discard) and ``loadavg``
(the guest's). The timed figure is the loop pool's remove.
"""
from __future__ import annotations

import contextlib
import os
import statistics
import time

import pytest

from conftest import _open_devicemapper, quick
from test_graphtest import new_id
from test_layer_ops import counted_flushes

pytestmark = pytest.mark.devicemapper

ROUNDS = 10 if quick() else 30
BLOB = 16 << 20


def _data_bytes(drv) -> int:
    return os.stat(drv.home / "devicemapper" / "data").st_blocks * 512


def _timed_remove(drv, layer: str) -> tuple[float, int]:
    with counted_flushes() as count:
        start = time.perf_counter()
        drv.remove(layer)
        took = time.perf_counter() - start
    return took, count[0]


def _space_back_s(drv, timeout: float = 120.0) -> float:
    layer = new_id("w")
    drv.create(layer)
    root = drv.mount(layer)
    with open(root / "blob", "wb") as f:
        f.write(os.urandom(1 << 20) * (BLOB >> 20))
        os.fsync(f.fileno())
    drv.unmount(layer)
    before = _data_bytes(drv)
    start = time.perf_counter()
    drv.remove(layer)
    while before - _data_bytes(drv) < BLOB * 3 // 4:
        if time.perf_counter() - start > timeout:
            return float("inf")
        time.sleep(0.01)
    return time.perf_counter() - start


def test_remove_loop_vs_block(benchmark, tmp_path):
    with contextlib.ExitStack() as stack:
        loop = _open_devicemapper(stack, "loop", tmp_path / "loop").driver
        block = _open_devicemapper(stack, "block", tmp_path / "block").driver
        times: dict[str, list[float]] = {"loop": [], "block": []}
        flushes: dict[str, list[int]] = {"loop": [], "block": []}
        for _ in range(ROUNDS):
            for kind, drv in (("loop", loop), ("block", block)):
                layer = new_id("r")
                drv.create(layer)
                took, n = _timed_remove(drv, layer)
                times[kind].append(took)
                flushes[kind].append(n)
        loop_ms = statistics.median(times["loop"]) * 1e3
        block_ms = statistics.median(times["block"]) * 1e3
        benchmark.extra_info.update({
            "loop_ms": round(loop_ms, 3), "block_ms": round(block_ms, 3),
            "ratio": round(loop_ms / block_ms, 2),
            "flushes": {k: statistics.mean(v) for k, v in flushes.items()},
            "space_back_s": round(_space_back_s(loop), 3),
            "loadavg": os.getloadavg(),
            "rounds": ROUNDS,
        })

        def setup():
            layer = new_id("t")
            loop.create(layer)
            return (layer,), {}
        benchmark.pedantic(loop.remove, setup=setup, rounds=ROUNDS)
        print("dm remove:", benchmark.extra_info)

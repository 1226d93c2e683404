"""Docker graphtest-style driver benchmarks, per driver and backing medium.

    GRAPHDRIVERS_BENCH_DRIVERS=overlay2 GRAPHDRIVERS_BENCH_MEDIA=loop,block \
        python3 -m pytest bench/test_graphtest.py --benchmark-enable -q

Ports of what moby's graphtest benchmarks time (Exists, GetEmpty, DiffBase,
DiffN with a small or 10k-file upper or bottom, DiffApplyN, DeepLayerDiff,
DeepLayerRead), plus create (empty and a snapshot of a populated layer),
mount/unmount, remove, changes and diff_size of a small change on a large
layer. GRAPHDRIVERS_BENCH_QUICK=1 shrinks the file counts and rounds.
"""
from __future__ import annotations

import itertools
import os
from pathlib import Path

import pytest


def quick() -> bool:
    """GRAPHDRIVERS_BENCH_QUICK=1 (set by `graphdrivers bench run --quick`)."""
    return os.environ.get("GRAPHDRIVERS_BENCH_QUICK", "") not in ("", "0")


MANY = 1_000 if quick() else 10_000         # "10K" files of moby's DiffN
DEPTH = 20                                  # moby's Diff20Layers / Read20Layers
# the VM (devicemapper) is emulated without KVM, some 20x slower: fewer rounds there
IN_VM = os.environ.get("GRAPHDRIVERS_IN_VM") == "1"
ROUNDS = (3 if IN_VM else 8) if quick() else 20
FAST_ROUNDS = (10 if IN_VM else 50) if quick() else 300
_ids = itertools.count()


def new_id(prefix: str) -> str:
    return f"{prefix}{next(_ids)}"


def drain(stream) -> int:
    n = 0
    with stream:
        while chunk := stream.read(1 << 20):
            n += len(chunk)
    return n


def add_files(root: Path, count: int, seed: int) -> None:
    """moby addFiles: ``count`` small files at the top of the layer."""
    for i in range(count):
        (root / f"file-{seed}-{i}").write_bytes(os.urandom(64) + b"%d" % i)


def add_many_files(root: Path, count: int, seed: int) -> None:
    """moby addManyFiles: ``count`` files spread over directories of 100."""
    for i in range(count):
        d = root / f"dir-{seed}-{i // 100}"
        if i % 100 == 0:
            d.mkdir(exist_ok=True)
        (d / f"file-{i}").write_bytes(b"%d-%d" % (seed, i))


def populated(drv, parent: str | None, fill, *args, rw: bool = False) -> str:
    layer = new_id("l")
    drv.create(layer, parent, rw=rw)
    root = drv.mount(layer)
    try:
        fill(root, *args)
    finally:
        drv.unmount(layer)
    return layer


def chain(drv, base: str, depth: int) -> str:
    """moby addManyLayers: ``depth`` layers on ``base``, each with one file."""
    top = base
    for i in range(depth):
        top = populated(drv, top, lambda r, n=i: (r / f"layer-{n}").write_text(str(n)))
    return top


# -- moby graphtest benchmarks ------------------------------------------------

def test_exists(benchmark, bench_driver):
    base = new_id("b")
    bench_driver.create(base)
    assert benchmark.pedantic(bench_driver.exists, (base,), rounds=FAST_ROUNDS)


def test_get_empty(benchmark, bench_driver):
    """Get of an empty layer; the Put is outside the timed part (as in moby)."""
    base = new_id("b")
    bench_driver.create(base)
    benchmark.pedantic(bench_driver.mount, (base,), teardown=lambda layer: bench_driver.unmount(layer),
                       rounds=FAST_ROUNDS)


def test_diff_base(benchmark, bench_driver):
    base = populated(bench_driver, None, add_files, 3, 1)
    assert benchmark.pedantic(lambda: drain(bench_driver.diff(base)), rounds=ROUNDS * 2) > 0


@pytest.mark.parametrize("case", ["small_upper", "many_upper", "many_bottom"])
def test_diff_n(benchmark, bench_driver, case):
    """moby DiffN(bottom, top): a 3-seeded bottom and a 6-seeded upper, whole-layer diff."""
    bottom, top = {"small_upper": (10, 10), "many_upper": (10, MANY),
                   "many_bottom": (MANY, 10)}[case]
    benchmark.extra_info.update(bottom_files=bottom, upper_files=top)
    base = populated(bench_driver, None, add_many_files, bottom, 3)
    upper = populated(bench_driver, base, add_many_files, top, 6)
    assert benchmark.pedantic(lambda: drain(bench_driver.diff(upper)), rounds=ROUNDS) > 0


def test_diff_apply_n(benchmark, bench_driver):
    """moby DiffApplyN(100): diff the upper and apply it to a fresh layer on the base."""
    base = populated(bench_driver, None, add_many_files, 100, 3)
    upper = populated(bench_driver, base, add_many_files, 100, 6)

    def setup():
        target = new_id("a")
        bench_driver.create(target, base)
        return (target,), {}

    def diff_apply(target):
        return bench_driver.apply_diff(target, base, bench_driver.diff(upper, base))

    benchmark.pedantic(diff_apply, setup=setup, rounds=ROUNDS)


def test_deep_layer_diff(benchmark, bench_driver):
    base = populated(bench_driver, None, add_files, 50, 1)
    top = chain(bench_driver, base, DEPTH)
    assert benchmark.pedantic(lambda: drain(bench_driver.diff(top)), rounds=ROUNDS) > 0


def test_deep_layer_read(benchmark, bench_driver):
    base = populated(bench_driver, None, lambda r: (r / "testfile.txt").write_bytes(b"x" * 4096))
    top = chain(bench_driver, base, DEPTH)
    root = bench_driver.mount(top)
    try:
        data = benchmark.pedantic((root / "testfile.txt").read_bytes, rounds=FAST_ROUNDS)
        assert data == b"x" * 4096
    finally:
        bench_driver.unmount(top)


# -- ours ---------------------------------------------------------------------

def test_create_empty(benchmark, bench_driver):
    benchmark.pedantic(lambda: bench_driver.create(new_id("c")), rounds=FAST_ROUNDS)


def test_create_snapshot(benchmark, bench_driver):
    """A child of a populated (MANY-file) layer: a copy for vfs, a snapshot elsewhere."""
    base = populated(bench_driver, None, add_many_files, MANY, 1)
    benchmark.pedantic(lambda: bench_driver.create(new_id("s"), base), rounds=ROUNDS)


def test_mount_unmount(benchmark, bench_driver):
    base = populated(bench_driver, None, add_files, 3, 1)
    child = new_id("m")
    bench_driver.create(child, base, rw=True)

    def cycle():
        bench_driver.mount(child)
        bench_driver.unmount(child)

    benchmark.pedantic(cycle, rounds=FAST_ROUNDS)


def test_remove(benchmark, bench_driver):
    base = populated(bench_driver, None, add_files, 3, 1)

    def setup():
        layer = new_id("r")
        bench_driver.create(layer, base)
        return (layer,), {}

    benchmark.pedantic(bench_driver.remove, setup=setup, rounds=ROUNDS * 4)


@pytest.fixture
def small_change(bench_driver):
    """A MANY-file layer and a child that changed one file and added one."""
    base = populated(bench_driver, None, add_many_files, MANY, 1)

    def change(root: Path) -> None:
        (root / "dir-1-0" / "file-0").write_bytes(b"changed")
        (root / "new-file").write_bytes(b"new")

    return base, populated(bench_driver, base, change, rw=True)


def test_changes(benchmark, bench_driver, small_change):
    base, child = small_change
    assert len(benchmark.pedantic(bench_driver.changes, (child, base), rounds=ROUNDS)) >= 2


def test_diff_small_change(benchmark, bench_driver, small_change):
    base, child = small_change
    assert benchmark.pedantic(lambda: drain(bench_driver.diff(child, base)), rounds=ROUNDS) > 0


def test_diff_size(benchmark, bench_driver, small_change):
    base, child = small_change
    assert benchmark.pedantic(bench_driver.diff_size, (child, base), rounds=ROUNDS) >= 10

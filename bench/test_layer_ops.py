"""Per-layer bookkeeping against the floor beside it (issue 16), per driver and medium.

    GRAPHDRIVERS_BENCH_DRIVERS=vfs,overlay2,btrfs GRAPHDRIVERS_BENCH_MEDIA=loop \
        python3 -m pytest bench/test_layer_ops.py --benchmark-enable -q

Each figure comes with what bounds it, measured in the same test on the same
filesystem, in ``extra_info``:

- ``flushes``: fsync/fdatasync/syncfs calls per operation, counted by wrapping
  ``os.fsync``, ``os.fdatasync`` and ``kernel.sync.syncfs`` (every flush of the product
  goes through them);
- ``floor_ms``: the durability floor of one operation, an append of one line to a
  file and its fdatasync (create, snapshot and remove each need one);
- ``kernel_ms`` (overlay2 mount): the kernel's own overlay mount and umount of the
  same directories, through the same syscalls and flags, without the driver;
  ``kernel_mountpoint_ms`` adds the mkdir and rmdir of the mountpoint that the
  driver does per mount, as Docker's and containers/storage's overlay drivers do
  (the rmdir detaches copies of the mount in other mount namespaces);
- ``speedup`` (parallel creates): 8 threads' create rate over one thread's.

The Debian layer is the minbase tree of bench/test_tar.py, imported once per medium.
"""
from __future__ import annotations

import contextlib
import os
import statistics
import threading
import time
from pathlib import Path
from typing import Callable, Iterator

import pytest

from test_graphtest import FAST_ROUNDS, ROUNDS, new_id
from test_tar import _source_tree

THREADS = 8


@contextlib.contextmanager
def counted_flushes() -> Iterator[list[int]]:
    """Count os.fsync, os.fdatasync and kernel.sync.syncfs calls (the product's only
    flushes) while inside."""
    from graphdrivers.kernel import sync
    count = [0]
    real = os.fsync, os.fdatasync, sync.syncfs

    def wrap(fn: Callable[[int], None]) -> Callable[[int], None]:
        def flush(fd: int) -> None:
            count[0] += 1
            fn(fd)
        return flush
    os.fsync, os.fdatasync, sync.syncfs = (wrap(f) for f in real)
    try:
        yield count
    finally:
        os.fsync, os.fdatasync, sync.syncfs = real


def flush_floor_ms(directory: Path, rounds: int = 30) -> float:
    """Median of one line appended to a file and fdatasync'ed, on ``directory``'s fs."""
    path = directory / f".floor-{os.getpid()}"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        times = []
        for i in range(rounds):
            start = time.perf_counter()
            os.write(fd, b'{"add": "%d"}\n' % i)
            os.fdatasync(fd)
            times.append(time.perf_counter() - start)
    finally:
        os.close(fd)
        os.unlink(path)
    return statistics.median(times) * 1e3


def per_op_flushes(op: Callable[[], object], n: int = 10,
                   undo: Callable[[object], None] | None = None) -> float:
    """Flushes per call of ``op`` (``undo`` of its result runs uncounted after each)."""
    total = 0
    for _ in range(n):
        with counted_flushes() as count:
            made = op()
        total += count[0]
        if undo is not None:
            undo(made)
    return total / n


def made(create: Callable[..., None], prefix: str, *args) -> Callable[[], str]:
    """An op that creates a new layer and returns its id."""
    def op() -> str:
        layer = new_id(prefix)
        create(layer, *args)
        return layer
    return op


@pytest.fixture
def debian_layer(bench_driver):
    """The Debian minbase tree as one layer (tar from test_tar's tree, applied once)."""
    import io
    import tarfile
    tree = _source_tree()
    layer = new_id("debian")
    bench_driver.create(layer)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        tar.add(tree, arcname=".")
    buf.seek(0)
    bench_driver.apply_diff(layer, None, buf)
    return layer


def test_create_empty_layer(benchmark, bench_driver):
    drv = bench_driver
    benchmark.extra_info["flushes"] = per_op_flushes(made(drv.create, "f"))
    benchmark.extra_info["floor_ms"] = flush_floor_ms(drv.home)
    benchmark.pedantic(made(drv.create, "c"), rounds=FAST_ROUNDS)


def test_snapshot_of_debian_layer(benchmark, bench_driver, debian_layer):
    drv = bench_driver          # vfs copies the whole layer: one snapshot at a time
    benchmark.extra_info["flushes"] = per_op_flushes(made(drv.create, "f", debian_layer), 3,
                                                     undo=drv.remove)
    benchmark.extra_info["floor_ms"] = flush_floor_ms(drv.home)
    last: list[str] = []

    def setup():
        while last:
            drv.remove(last.pop())
        last.append(new_id("s"))
        return (last[0], debian_layer), {}
    benchmark.pedantic(drv.create, setup=setup, rounds=ROUNDS)


def test_remove_empty_layer(benchmark, bench_driver):
    drv = bench_driver
    layers = [new_id("f") for _ in range(10)]
    for layer in layers:
        drv.create(layer)
    benchmark.extra_info["flushes"] = per_op_flushes(lambda: drv.remove(layers.pop()))
    benchmark.extra_info["floor_ms"] = flush_floor_ms(drv.home)

    def setup():
        layer = new_id("r")
        drv.create(layer)
        return (layer,), {}
    benchmark.pedantic(drv.remove, setup=setup, rounds=ROUNDS * 4)


def test_mount_unmount_of_a_child(benchmark, bench_driver, bench_env):
    drv = bench_driver
    base = new_id("b")
    drv.create(base)
    child = new_id("m")
    drv.create(child, base, rw=True)
    if bench_env.driver_name == "overlay2":
        benchmark.extra_info["kernel_ms"] = overlay_kernel_ms(drv, child)
        benchmark.extra_info["kernel_mountpoint_ms"] = overlay_kernel_ms(drv, child,
                                                                         mountpoint=True)

    def cycle():
        drv.mount(child)
        drv.unmount(child)
    benchmark.pedantic(cycle, rounds=FAST_ROUNDS)


def overlay_kernel_ms(drv, child: str, rounds: int = 100, *, mountpoint: bool = False) -> float:
    """The same overlay, mounted and unmounted by the kernel's calls alone (median);
    ``mountpoint``: with the mkdir and rmdir of the mountpoint around them."""
    from graphdrivers.kernel import mount as mnt
    from graphdrivers.overlay import mountapi
    spec = drv.layer_mounts(child, readonly=False)[0]
    options = dict(o.partition("=")[::2] for o in spec.options)
    lowers = options.pop("lowerdir").split(":")
    upper, work = options.pop("upperdir"), options.pop("workdir")
    rest = [(k, v or None) for k, v in options.items() if k not in ("rw", "ro")]
    mount_fn = mountapi.mount_new_api if drv._new_api else mountapi.mount_legacy
    target = f"{drv.home}/.kernel-mount-{os.getpid()}"
    if not mountpoint:
        os.mkdir(target)
    times = []
    try:
        for _ in range(rounds):
            start = time.perf_counter()
            if mountpoint:
                os.mkdir(target, 0o700)
            mount_fn(target, lowers, upper, work, rest, readonly=False)
            mnt.umount(target, mnt.MNT_DETACH)      # the driver's flag
            if mountpoint:
                os.rmdir(target)
            times.append(time.perf_counter() - start)
    finally:
        if not mountpoint:
            os.rmdir(target)
    return statistics.median(times) * 1e3


def test_parallel_creates(benchmark, bench_driver):
    """8 threads creating layers (containerd unpacks in parallel) against one thread."""
    drv = bench_driver
    per_thread = 25

    def rate(threads: int) -> float:
        def work():
            for _ in range(per_thread):
                drv.create(new_id("p"))
        pool = [threading.Thread(target=work) for _ in range(threads)]
        start = time.perf_counter()
        for t in pool:
            t.start()
        for t in pool:
            t.join()
        return threads * per_thread / (time.perf_counter() - start)

    single = rate(1)
    benchmark.extra_info["single_per_s"] = single
    many = benchmark.pedantic(rate, args=(THREADS,), rounds=3)
    benchmark.extra_info["speedup"] = many / single

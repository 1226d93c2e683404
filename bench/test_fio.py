"""fio workloads inside a mounted (writable) layer, per driver and backing medium.

    GRAPHDRIVERS_BENCH_DRIVERS=btrfs python3 -m pytest bench/test_fio.py --benchmark-enable -q

Each round runs one fio job (Debian's fio, ``--output-format=json``); the time
pytest-benchmark records is the whole fio run, and fio's own bandwidth, IOPS
and mean completion latency of every round go into ``extra_info["fio"]``,
which the report uses. Workloads: sequential write (a fresh file) and read,
random 4k write and read, small files each fsync'ed, and the write into a file
inherited from the parent layer the first time (copy-up / COW / thin
allocation) against the same write again (rewrite).
"""
from __future__ import annotations

import itertools
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest


def quick() -> bool:
    """GRAPHDRIVERS_BENCH_QUICK=1 (set by `graphdrivers bench run --quick`)."""
    return os.environ.get("GRAPHDRIVERS_BENCH_QUICK", "") not in ("", "0")


SIZE = (32 if quick() else 256) << 20
ROUNDS = 3 if quick() else 8
SMALL_FILES = 100 if quick() else 500
_ids = itertools.count()

pytestmark = pytest.mark.skipif(shutil.which("fio") is None, reason="fio is not installed")


def fio(directory: Path, **job) -> dict:
    """Run one fio job in ``directory``; return its summary (bw, IOPS, latency)."""
    args = ["fio", "--name=bench", f"--directory={directory}", "--ioengine=psync",
            "--output-format=json", "--group_reporting"]
    args += [f"--{k}={v}" for k, v in job.items()]
    out = subprocess.run(args, check=True, capture_output=True, text=True).stdout
    result = json.loads(out[out.index("{"):])["jobs"][0]    # fio may print notes before the JSON
    side = "write" if result["write"]["io_bytes"] else "read"
    r = result[side]
    return {"bw_MiBps": r["bw_bytes"] / (1 << 20), "iops": r["iops"],
            "clat_mean_us": r["clat_ns"]["mean"] / 1000, "io_bytes": r["io_bytes"], "side": side}


def timed_fio(benchmark, directory_for, setup=None, rounds=ROUNDS, **job):
    """benchmark.pedantic over fio runs; fio's numbers of each round into extra_info."""
    rows = benchmark.extra_info.setdefault("fio", [])

    def run(*args):
        rows.append(fio(directory_for(*args), **job))

    benchmark.pedantic(run, setup=setup, rounds=rounds)
    benchmark.extra_info["fio_job"] = job
    assert rows and all(r["io_bytes"] > 0 for r in rows)


@pytest.fixture
def layer(bench_driver):
    """A writable layer on an empty parent, mounted; yields its root."""
    base, child = f"fb{next(_ids)}", f"fc{next(_ids)}"
    bench_driver.create(base)
    bench_driver.create(child, base, rw=True)
    root = bench_driver.mount(child)
    try:
        yield root
    finally:
        bench_driver.unmount(child)


def _fresh_dir(root: Path):
    def setup():
        d = root / f"r{next(_ids)}"
        d.mkdir()
        return (d,), {}
    return setup


def test_seq_write(benchmark, layer):
    timed_fio(benchmark, lambda d: d, setup=_fresh_dir(layer),
              rw="write", bs="1M", size=SIZE, end_fsync=1)


def test_seq_read(benchmark, layer):
    fio(layer, rw="write", bs="1M", size=SIZE, end_fsync=1)        # lay the file out, untimed
    timed_fio(benchmark, lambda: layer, rw="read", bs="1M", size=SIZE)


def test_rand_write_4k(benchmark, layer):
    fio(layer, rw="write", bs="1M", size=SIZE, end_fsync=1)
    timed_fio(benchmark, lambda: layer, rw="randwrite", bs="4k", size=SIZE,
              io_size=SIZE // 4, end_fsync=1)


def test_rand_read_4k(benchmark, layer):
    fio(layer, rw="write", bs="1M", size=SIZE, end_fsync=1)
    timed_fio(benchmark, lambda: layer, rw="randread", bs="4k", size=SIZE, io_size=SIZE // 4)


def test_fsync_small_files(benchmark, layer):
    """Many 4 KiB files, each written then fsync'ed (a package install, a database)."""
    timed_fio(benchmark, lambda d: d, setup=_fresh_dir(layer), rw="write", bs="4k",
              nrfiles=SMALL_FILES, filesize="4k", size=SMALL_FILES * 4096, fsync=1,
              file_service_type="sequential")


@pytest.fixture
def inherited(bench_driver):
    """A parent layer holding an 'inherited' file of SIZE bytes (written through fio)."""
    base = f"fi{next(_ids)}"
    bench_driver.create(base)
    root = bench_driver.mount(base)
    try:
        fio(root, rw="write", bs="1M", size=SIZE, filename="inherited", end_fsync=1)
    finally:
        bench_driver.unmount(base)
    return base


def test_first_write(benchmark, bench_driver, inherited):
    """Overwrite the parent's file in a fresh child: copy-up (overlay2), COW (btrfs),
    new thin blocks (devicemapper), a plain write (vfs, which copied at create)."""
    mounted = []

    def setup():
        child = f"fw{next(_ids)}"
        bench_driver.create(child, inherited, rw=True)
        mounted.append(child)
        return (bench_driver.mount(child),), {}

    try:
        timed_fio(benchmark, lambda root: root, setup=setup, rw="write", bs="1M",
                  size=SIZE, filename="inherited", end_fsync=1)
    finally:
        for child in mounted:
            bench_driver.unmount(child)


def test_rewrite(benchmark, bench_driver, inherited):
    """The same overwrite again in a child that already wrote the file once."""
    child = f"rw{next(_ids)}"
    bench_driver.create(child, inherited, rw=True)
    root = bench_driver.mount(child)
    try:
        fio(root, rw="write", bs="1M", size=SIZE, filename="inherited", end_fsync=1)
        timed_fio(benchmark, lambda: root, rw="write", bs="1M", size=SIZE,
                  filename="inherited", end_fsync=1)
    finally:
        bench_driver.unmount(child)

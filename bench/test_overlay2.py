"""overlay2 benchmarks (pytest-benchmark), side by side in one run.

    python3 -m pytest bench/test_overlay2.py --benchmark-enable -q \
        --benchmark-json=overlay2.json --benchmark-columns=median,mean,min,max,rounds

Rows:
- create / remove of an empty layer, mount+unmount of a child layer, for both
  mount methods (new mount API and mount(2));
- diff and changes of a 1-file change on top of a 10,000-file layer, native
  against naive (the test switch), plus diff_size;
- a 500-deep chain: mount + read of a base-layer file + unmount, and a warm read.
"""
from __future__ import annotations

import itertools
import os
import shutil
from pathlib import Path

import pytest

from graphdrivers.overlay import mountapi
from graphdrivers.overlay.driver import Overlay2Driver

FILES = 10_000
DEPTH = 500


def _driver(home: Path, method: str | None = None, **kw) -> Overlay2Driver:
    home.mkdir(parents=True, exist_ok=True)
    return Overlay2Driver(home, None, mount_method=method, **kw)


def _methods() -> list[str]:
    probe = Path(os.environ.get("TMPDIR", "/tmp"))
    return ["new", "legacy"] if mountapi.supports_lowerdir_plus(probe)[0] else ["legacy"]


@pytest.fixture(params=_methods())
def drv(request, tmp_path):
    d = _driver(tmp_path / "home", request.param)
    d.create("base")
    (d.home / "base/diff/f").write_text("base")
    try:
        yield d
    finally:
        d.cleanup()


def test_create_layer(benchmark, drv):
    ids = (f"c{n}" for n in itertools.count())
    made = []

    def setup():
        made.append(next(ids))
        return (made[-1], "base"), {}

    benchmark.pedantic(drv.create, setup=setup, rounds=300)
    for layer in made:
        drv.remove(layer)


def test_remove_layer(benchmark, drv):
    ids = (f"r{n}" for n in itertools.count())

    def setup():
        layer = next(ids)
        drv.create(layer, "base")
        return (layer,), {}

    benchmark.pedantic(drv.remove, setup=setup, rounds=300)


def test_mount_unmount(benchmark, drv):
    drv.create("c", "base", rw=True)

    def cycle():
        drv.mount("c")
        drv.unmount("c")

    benchmark.pedantic(cycle, rounds=200, warmup_rounds=5)


@pytest.fixture(scope="module")
def big(tmp_path_factory):
    """A 10,000-file base layer and a child with one changed file; native and naive drivers."""
    home = tmp_path_factory.mktemp("big") / "home"
    native = _driver(home)
    naive = _driver(home, naive_diff=True)
    native.create("base")
    root = native.home / "base/diff"
    for d in range(100):
        (root / f"d{d}").mkdir()
        for f in range(FILES // 100):
            (root / f"d{d}/f{f}").write_bytes(b"x" * 100)
    native.create("c", "base", rw=True)
    merged = native.mount("c")
    (merged / "d42/f7").write_bytes(b"changed")
    native.unmount("c")
    try:
        yield {"native": native, "naive": naive}
    finally:
        naive.cleanup()
        native.cleanup()
        shutil.rmtree(home, ignore_errors=True)


def _drain(stream) -> int:
    total = 0
    with stream:
        while chunk := stream.read(1 << 16):
            total += len(chunk)
    return total


@pytest.mark.parametrize("path", ["native", "naive"])
def test_diff_one_change_on_10k_files(benchmark, big, path):
    drv = big[path]
    size = benchmark.pedantic(lambda: _drain(drv.diff("c")), rounds=20 if path == "naive" else 200)
    assert size > 0


@pytest.mark.parametrize("path", ["native", "naive"])
def test_changes_one_change_on_10k_files(benchmark, big, path):
    drv = big[path]
    changes = benchmark.pedantic(lambda: drv.changes("c"),
                                 rounds=20 if path == "naive" else 200)
    assert "/d42/f7" in {c.path for c in changes}


@pytest.mark.parametrize("path", ["native", "naive"])
def test_diff_size_one_change_on_10k_files(benchmark, big, path):
    drv = big[path]
    assert benchmark.pedantic(lambda: drv.diff_size("c"),
                              rounds=20 if path == "naive" else 200) == len(b"changed")


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    if "new" not in _methods():
        pytest.skip("a 500-deep chain needs the new mount API (Linux >= 6.8)")
    home = tmp_path_factory.mktemp("chain") / "home"
    drv = _driver(home, "new")
    drv.create("c0")
    (drv.home / "c0/diff/base-file").write_bytes(b"b" * 4096)
    for n in range(1, DEPTH + 1):
        drv.create(f"c{n}", f"c{n - 1}")
        (drv.home / f"c{n}/diff/f{n}").write_text(str(n))
    try:
        yield drv
    finally:
        drv.cleanup()
        shutil.rmtree(home, ignore_errors=True)


def test_chain500_mount_read_unmount(benchmark, chain):
    def cycle():
        root = chain.mount(f"c{DEPTH}")
        data = (root / "base-file").read_bytes()
        chain.unmount(f"c{DEPTH}")
        return data

    assert len(benchmark.pedantic(cycle, rounds=30)) == 4096


def test_chain500_warm_read_of_base_file(benchmark, chain):
    root = chain.mount(f"c{DEPTH}")
    try:
        assert len(benchmark(lambda: (root / "base-file").read_bytes())) == 4096
    finally:
        chain.unmount(f"c{DEPTH}")


def test_chain500_list_every_layer_file(benchmark, chain):
    root = chain.mount(f"c{DEPTH}")
    try:
        assert len(benchmark.pedantic(lambda: os.listdir(root), rounds=50)) == DEPTH + 1
    finally:
        chain.unmount(f"c{DEPTH}")

"""btrfs benchmarks (pytest-benchmark), side by side in one run.

    python3 -m pytest bench/test_btrfs.py --benchmark-enable -q \
        --benchmark-json=btrfs.json --benchmark-columns=median,mean,min,max,rounds

Rows:
- create (a snapshot of a 10,000-file layer), remove, mount+unmount;
- changes / diff / diff_size of a 1-file change on a 10,000-file layer, native
  (btrfs generations) against naive (``btrfs.native_diff=false``), and native
  again on a layer whose every file was read first (atime updates). Every round
  first rewrites that file, so the native path pays its transaction commit;
- one snapshot+delete cycle through libbtrfsutil, raw ioctls and the ``btrfs``
  command (200 rounds each: the 200-cycle total is mean x 200).
Everything runs on a btrfs made on a loop device for this module.
"""
from __future__ import annotations

import itertools
import os
import shutil
import subprocess
from pathlib import Path

import pytest

import graphdrivers
from graphdrivers.btrfs import subvol
from graphdrivers.btrfs.testing import filesystem

FILES = 10_000
CYCLES = 200


@pytest.fixture(scope="module")
def fs(tmp_path_factory):
    with filesystem(tmp_path_factory.mktemp("bench-btrfs"), size=4 << 30) as target:
        yield target


def _layer_pair(drv, base: str, child: str) -> None:
    """``base`` with 10,000 files in 100 directories, and ``child`` snapshotted from it."""
    drv.create(base)
    root = drv.mount(base)
    for d in range(FILES // 100):
        (root / f"d{d:03}").mkdir()
        for f in range(100):
            (root / f"d{d:03}" / f"f{f:03}").write_bytes(b"x" * 100)
    drv.unmount(base)
    drv.create(child, base)


@pytest.fixture(scope="module")
def big(fs):
    """A driver with one base/child pair per diff mode, so that one mode's reads
    (the naive walk updates directory atimes) do not change the other's trees."""
    home = fs / "home"
    drv = graphdrivers.load("btrfs", home)
    for mode in ("native", "naive", "native-after-read"):
        _layer_pair(drv, f"base-{mode}", f"child-{mode}")
    # a container that read every file and directory of its layer
    for dirpath, _dirs, files in os.walk(drv.home / "subvolumes" / "child-native-after-read"):
        for name in files:
            with open(os.path.join(dirpath, name), "rb") as f:
                f.read()
    drv.create("base", "base-native")
    drv.create("child", "base")
    try:
        yield drv, home
    finally:
        drv.cleanup()


def _one_file_change(drv, child, counter=itertools.count()):
    def setup():
        path = drv.home / "subvolumes" / child / "d042" / "f007"
        path.write_bytes(b"changed %d" % next(counter))
        return (), {}
    return setup


@pytest.fixture(params=["native", "naive", "native-after-read"])
def mode_driver(request, big):
    _, home = big
    native = request.param.startswith("native")
    drv = graphdrivers.load("btrfs", home, {"btrfs.native_diff": str(native).lower()})
    try:
        yield drv, f"child-{request.param}"
    finally:
        drv.cleanup()


def test_changes_1_of_10000(benchmark, mode_driver):
    drv, child = mode_driver
    result = benchmark.pedantic(lambda: drv.changes(child), setup=_one_file_change(drv, child),
                                rounds=30)
    assert [c.path for c in result] == ["/d042", "/d042/f007"]


def test_diff_1_of_10000(benchmark, mode_driver):
    drv, child = mode_driver

    def diff():
        stream = drv.diff(child)
        try:
            return len(stream.read())
        finally:
            stream.close()
    size = benchmark.pedantic(diff, setup=_one_file_change(drv, child), rounds=30)
    assert 0 < size < 64 * 1024


def test_diff_size_1_of_10000(benchmark, mode_driver):
    drv, child = mode_driver
    benchmark.pedantic(lambda: drv.diff_size(child), setup=_one_file_change(drv, child),
                       rounds=30)


def test_create_snapshot(benchmark, big):
    drv, _ = big
    ids = (f"c{n}" for n in itertools.count())
    made = []

    def setup():
        made.append(next(ids))
        return (made[-1], "base"), {}

    benchmark.pedantic(drv.create, setup=setup, rounds=100)
    for layer in made:
        drv.remove(layer)


def test_remove(benchmark, big):
    drv, _ = big
    ids = (f"r{n}" for n in itertools.count())

    def setup():
        layer = next(ids)
        drv.create(layer, "base")
        return (layer,), {}

    benchmark.pedantic(drv.remove, setup=setup, rounds=100)


def test_mount_unmount(benchmark, big):
    drv, _ = big

    def cycle():
        drv.mount("child")
        drv.unmount("child")
    benchmark(cycle)


def _cli_cycle(src: Path, dst: Path) -> None:
    subprocess.run(["btrfs", "subvolume", "snapshot", str(src), str(dst)], check=True,
                   stdout=subprocess.DEVNULL)
    subprocess.run(["btrfs", "subvolume", "delete", str(dst)], check=True,
                   stdout=subprocess.DEVNULL)


def _api_cycle(src: Path, dst: Path) -> None:
    subvol.snapshot(src, dst)
    subvol.delete(dst)


@pytest.mark.parametrize("how", ["libbtrfsutil", "ioctl", "btrfs-cli"])
def test_snapshot_delete_cycle(benchmark, fs, how, monkeypatch):
    src = fs / "cycle-src"
    if not src.exists():
        subvol.create(src)
        (src / "f").write_text("x")
    dst = fs / "cycle-dst"
    if how == "btrfs-cli":
        if shutil.which("btrfs") is None:
            pytest.skip("btrfs-progs not installed")
        run = _cli_cycle
    else:
        if how == "libbtrfsutil" and subvol.backend() == "ioctl":
            pytest.skip("the btrfsutil binding is not installed")
        monkeypatch.setattr(subvol, "FORCE_IOCTL", how == "ioctl")
        run = _api_cycle
    benchmark.pedantic(run, args=(src, dst), rounds=CYCLES)

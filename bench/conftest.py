"""Fixtures for the driver-on-medium benchmarks (test_graphtest.py, test_fio.py).

Tests that take ``bench_driver`` are parametrized over driver x medium, chosen
by environment variables (``graphdrivers bench run`` sets them):

  GRAPHDRIVERS_BENCH_DRIVERS   vfs,overlay2,btrfs[,devicemapper]   (default: all available)
  GRAPHDRIVERS_BENCH_MEDIA     loop,block[,loop-dio]              (default: loop,block)
  GRAPHDRIVERS_BENCH_DEVICE    /dev/sdX instead of a zram device (wiped!)
  GRAPHDRIVERS_BENCH_DESTROY   1 = the operator agreed to wipe that device
  GRAPHDRIVERS_BENCH_DM_BLOCKSIZES  64KB,512KB  (devicemapper pool block sizes)
  GRAPHDRIVERS_BENCH_QUICK     1 = small sizes and few rounds
  GRAPHDRIVERS_BENCH_SIZE      medium size (default 1G quick, 4G otherwise)

On zram all media stay open and each case runs on every medium back to back
(same load); on an operator's device only one medium exists at a time and
pytest groups the cases by medium. A driver is shared by the tests of one
medium; each test removes the layers it made.
"""
from __future__ import annotations

import contextlib
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import graphdrivers  # noqa: E402
from graphdrivers.options import parse_size  # noqa: E402

import media  # noqa: E402

# the filesystem each driver's home needs (overlay2 and vfs as Docker runs them on ext4)
FSTYPE = {"btrfs": "btrfs", "overlay2": "ext4", "vfs": "ext4"}


def quick() -> bool:
    return os.environ.get("GRAPHDRIVERS_BENCH_QUICK", "") not in ("", "0")


def _list(var: str, default: list[str]) -> list[str]:
    value = os.environ.get(var, "")
    return [v for v in value.split(",") if v] or default


def bench_drivers() -> list[str]:
    return _list("GRAPHDRIVERS_BENCH_DRIVERS", graphdrivers.available())


def bench_media(driver: str) -> list[str]:
    kinds = _list("GRAPHDRIVERS_BENCH_MEDIA", ["loop", "block"])
    if driver != "devicemapper":
        return kinds
    sizes = _list("GRAPHDRIVERS_BENCH_DM_BLOCKSIZES", ["64KB"])
    # the default block size keeps the plain name, so loop/block pairs line up
    return [k if s.upper() == "64KB" else f"{k}+{s}" for s in sizes for k in kinds]


def medium_size() -> int:
    return parse_size(os.environ.get("GRAPHDRIVERS_BENCH_SIZE") or ("1G" if quick() else "4G"))


@dataclass
class BenchEnv:
    driver_name: str
    medium: str
    driver: object
    description: dict = field(default_factory=dict)


class _Media:
    """The open media (and their drivers), keyed by (driver, medium).

    On zram every medium stays open for the whole session, so pytest can run
    a case on loop and on block back to back (the machine's load drifts over
    minutes; adjacent runs see the same load). An operator's device can hold
    only one medium: the previous one is closed before the next opens.
    """

    def __init__(self) -> None:
        self.open: dict[tuple[str, str], tuple[BenchEnv, contextlib.ExitStack]] = {}

    def close(self, keep: tuple[str, str] | None = None) -> None:
        for key in [k for k in self.open if k != keep]:
            self.open.pop(key)[1].close()


def single_medium() -> bool:
    return bool(os.environ.get("GRAPHDRIVERS_BENCH_DEVICE"))


def _open_host(stack: contextlib.ExitStack, name: str, kind: str, work: Path) -> BenchEnv:
    device = os.environ.get("GRAPHDRIVERS_BENCH_DEVICE") or None
    if device:
        media.check_operator_device(device, os.environ.get("GRAPHDRIVERS_BENCH_DESTROY") == "1")
    try:
        m = stack.enter_context(media.medium(kind, FSTYPE.get(name, "ext4"), work, medium_size(), device))
    except (media.MediumError, OSError) as exc:
        pytest.skip(f"{name} on {kind}: {exc}")
    try:
        drv = graphdrivers.load(name, m.mountpoint / "home", {})
    except graphdrivers.NotSupported as exc:
        pytest.skip(f"{name} cannot run here: {exc}")
    stack.callback(drv.cleanup)
    return BenchEnv(name, kind, drv, m.describe())


def _open_devicemapper(stack: contextlib.ExitStack, kind: str, work: Path) -> BenchEnv:
    """Loop pool: sparse files on ext4 on the first VM disk; block pool: the other two disks."""
    from graphdrivers.devmapper.testing import backend
    disks = [d for d in os.environ.get("GRAPHDRIVERS_TEST_DISKS", "").split(",") if d]
    base, _, blocksize = kind.partition("+")
    options = {"dm.basesize": "1GB", "dm.blocksize": blocksize or "64KB"}
    desc: dict = {"kind": base, "fstype": "xfs (dm.fs default)", "blocksize": blocksize or "64KB"}
    if len(disks) < 3:
        pytest.skip("devicemapper benchmarks need 3 VM disks (scripts/vm-test)")
    if base == "block":
        for disk in disks[1:3]:     # a pool from an earlier medium must not be picked up
            with open(disk, "r+b") as f:
                f.write(b"\0" * (1 << 20))
        options.update({"dm.datadev": disks[1], "dm.metadatadev": disks[2]})
        desc.update(backing="virtio disks", device=f"data {disks[1]}, metadata {disks[2]}")
        home = work / "home"
    else:
        media.mkfs("ext4", disks[0])
        host = stack.enter_context(media.mounted(disks[0], work / "host", "ext4"))
        options.update({"dm.loopdatasize": "3GB", "dm.loopmetadatasize": "64MB",
                        "dm.loopdirectio": "true" if base == "loop-dio" else "false"})
        desc.update(backing="virtio disk", device=f"sparse files on ext4 on {disks[0]}")
        home = host / "home"
    prepared = stack.enter_context(backend(work, options))
    try:
        drv = graphdrivers.load("devicemapper", home, prepared[1])
    except graphdrivers.NotSupported as exc:
        pytest.skip(f"devicemapper cannot run here: {exc}")
    stack.callback(drv.cleanup)
    return BenchEnv("devicemapper", kind, drv, desc)


@pytest.fixture(scope="session")
def _bench_media():
    media_ = _Media()
    try:
        yield media_
    finally:
        media_.close()


@pytest.fixture(scope="session")    # the parametrization below sets the real scope
def bench_env(request, tmp_path_factory, _bench_media) -> BenchEnv:
    name, kind = request.param
    if (name, kind) not in _bench_media.open:
        if single_medium():
            _bench_media.close()
        stack = contextlib.ExitStack()
        work = tmp_path_factory.mktemp(f"bench-{name}-{kind}")
        try:
            env = (_open_devicemapper(stack, kind, work) if name == "devicemapper"
                   else _open_host(stack, name, kind, work))
        except BaseException:
            stack.close()
            raise
        _bench_media.open[(name, kind)] = (env, stack)
    return _bench_media.open[(name, kind)][0]


def pytest_addoption(parser):
    # the VM runner (scripts/vm-test) carries no environment into the guest, so
    # the same settings can come as pytest options: --bench-env KEY=VALUE
    parser.addoption("--bench-env", action="append", default=[], metavar="KEY=VALUE",
                     help="set a GRAPHDRIVERS_BENCH_* variable for this run")


def pytest_configure(config):
    for item in config.getoption("--bench-env") or []:
        key, _, value = item.partition("=")
        os.environ[key] = value


def pytest_generate_tests(metafunc):
    if "bench_env" in metafunc.fixturenames:
        pairs = [(d, k) for d in bench_drivers() for k in bench_media(d)]
        # function scope keeps pytest from grouping by medium: each case runs on
        # loop and on block back to back; one device at a time must be grouped
        metafunc.parametrize("bench_env", pairs, indirect=True,
                             scope="session" if single_medium() else "function",
                             ids=[f"{d}-{k}" for d, k in pairs])


def _remove_all(drv, keep: set[str]) -> None:
    """Remove the layers made since ``keep`` was taken, children before parents."""
    left = [l for l in drv.layers() if l not in keep]
    while left:
        parents = {drv.parent(l) for l in left}
        leaves = [l for l in left if l not in parents] or left
        for layer in leaves:
            drv.remove(layer)
        left = [l for l in left if l not in leaves]


@pytest.fixture
def bench_driver(bench_env, benchmark):
    """The driver of this medium; the layers a test makes are removed afterwards."""
    drv = bench_env.driver
    before = set(drv.layers())
    benchmark.extra_info["driver"] = bench_env.driver_name
    benchmark.extra_info["medium"] = bench_env.medium
    benchmark.extra_info["media"] = bench_env.description
    try:
        yield drv
    finally:
        _remove_all(drv, before)

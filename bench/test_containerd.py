"""`graphdrivers snapshotter` under containerd 1.6, against containerd's own overlayfs.

    python3 -m pytest bench/test_containerd.py --benchmark-enable -q \
        --benchmark-columns=median,mean,min,max,rounds

Rows:
- a gRPC Stat round trip to the snapshotter (overlay2), one channel, as
  containerd makes it (its own client; the call's cost is the server's);
- Prepare + Commit of an empty snapshot on overlay2;
- ``ctr image import`` + unpack of a Debian minbase image (``debootstrap
  --variant=minbase bookworm``, cached under /var/tmp/graphdrivers-bench, as
  bench/test_tar.py makes it) through graphdrivers-overlay2 and through the
  built-in overlayfs of the same containerd, alternating, in the same run.

Everything runs on a tmpfs the suite mounts (disk writeback makes single runs
noise), with containerd and the snapshotter in their own mount namespace
(tests/containerd/stack.py). The import summary (seconds per snapshotter and
the ratio) is printed and written to ``<cache>/containerd-results.json``.
"""
from __future__ import annotations

import itertools
import json
import os
import statistics
import subprocess
import time
from pathlib import Path

import grpc
import pytest

from containerd import image, stack
from containerd.engine import missing_tools, snapshot_list
from graphdrivers.kernel import mount as mnt
from graphdrivers.servers.snapshotter import snapshots_pb2 as pb
from graphdrivers.servers.snapshotter import snapshots_pb2_grpc
from test_tar import CACHE, _source_tree

ROUNDS = int(os.environ.get("GRAPHDRIVERS_BENCH_ROUNDS", "5"))
RESULTS: dict[str, dict] = {}
WHY = missing_tools()
pytestmark = pytest.mark.skipif(WHY is not None, reason=f"no containerd here: {WHY}")


@pytest.fixture(scope="module")
def area():
    """A tmpfs for homes, containerd's root and the images."""
    work = CACHE / "containerd-work"
    work.mkdir(parents=True, exist_ok=True)
    mnt.mount("tmpfs", work, "tmpfs", 0, "size=4g,mode=0755")
    try:
        yield work
    finally:
        mnt.unmount_all_under(work)        # the tmpfs itself included
        if RESULTS:
            _report()


@pytest.fixture(scope="module")
def overlay2_stack(area):
    with stack.running(area / "e2e", "overlay2", area / "home", {}) as running:
        yield running


@pytest.fixture
def stub(overlay2_stack):
    with grpc.insecure_channel(f"unix:{overlay2_stack.snapshotter.sock}") as channel:
        yield snapshots_pb2_grpc.SnapshotsStub(channel)


NAMES = itertools.count()


def test_stat_round_trip(benchmark, stub):
    key = f"bench/stat/{next(NAMES)}"
    stub.Prepare(pb.PrepareSnapshotRequest(key=key))
    try:
        request = pb.StatSnapshotRequest(key=key)
        benchmark.pedantic(stub.Stat, args=(request,), rounds=2000, warmup_rounds=50)
    finally:
        stub.Remove(pb.RemoveSnapshotRequest(key=key))
    RESULTS["stat_median_ms"] = {"value": benchmark.stats.stats.median * 1e3}


def test_prepare_commit_empty_overlay2(benchmark, stub):
    made: list[str] = []

    def prepare_commit():
        n = next(NAMES)
        stub.Prepare(pb.PrepareSnapshotRequest(key=f"bench/active/{n}"))
        stub.Commit(pb.CommitSnapshotRequest(name=f"bench/committed/{n}", key=f"bench/active/{n}"))
        made.append(f"bench/committed/{n}")

    try:
        benchmark.pedantic(prepare_commit, rounds=300, warmup_rounds=10)
    finally:
        for name in made:
            stub.Remove(pb.RemoveSnapshotRequest(key=name))
    RESULTS["prepare_commit_median_ms"] = {"value": benchmark.stats.stats.median * 1e3}


def minbase_image(area: Path) -> image.Image:
    """The minbase tree as a one-layer docker-save image (GNU tar, as a build would make it)."""
    layer = area / "minbase-layer.tar"
    subprocess.run(["tar", "--numeric-owner", "--xattrs", "--xattrs-include=*", "--format=pax",
                    "-C", str(_source_tree()), "-cf", str(layer), "."], check=True)
    try:
        return image.docker_save(area / "minbase.tar", built=[], ref="localhost/minbase:1",
                                 extra=[layer.read_bytes()])
    finally:
        layer.unlink()


def _backend_keys(running: stack.Stack, snapshotter: str) -> list[str]:
    """What the snapshotter itself still holds (containerd removes from it in its
    garbage collection, after `rm`): the overlayfs root's snapshot directories,
    or graphdrivers' own List."""
    if snapshotter == "overlayfs":
        root = running.containerd.work / "root" / "io.containerd.snapshotter.v1.overlayfs"
        return os.listdir(root / "snapshots")
    with grpc.insecure_channel(f"unix:{running.snapshotter.sock}") as channel:
        replies = snapshots_pb2_grpc.SnapshotsStub(channel).List(pb.ListSnapshotsRequest())
        return [info.name for reply in replies for info in reply.info]


def _import_seconds(running: stack.Stack, snapshotter: str, img: image.Image) -> float:
    """One timed import + unpack; then everything removed, and the collector
    waited for, so that its removals do not overlap the next timed run."""
    engine = running.containerd
    started = time.monotonic()
    engine.ctr("image", "import", "--snapshotter", snapshotter, str(img.path), timeout=600)
    seconds = time.monotonic() - started
    engine.ctr("image", "rm", img.ref)
    for key, _, _ in snapshot_list(engine, snapshotter):   # the collector may be first
        engine.ctr_result("snapshots", "--snapshotter", snapshotter, "rm", key)
    deadline = time.monotonic() + 60
    while _backend_keys(running, snapshotter) and time.monotonic() < deadline:
        time.sleep(0.2)
    return seconds


def test_import_minbase_overlay2_vs_overlayfs(overlay2_stack, area, capsys):
    img = minbase_image(area)
    name = overlay2_stack.snapshotter.name
    seconds: dict[str, list[float]] = {"overlayfs": [], name: []}
    for _ in range(ROUNDS):            # alternating: both see the same drift in load
        for snapshotter in seconds:
            seconds[snapshotter].append(_import_seconds(overlay2_stack, snapshotter, img))
    medians = {k: statistics.median(v) for k, v in seconds.items()}
    RESULTS["import_minbase"] = {"image_bytes": img.path.stat().st_size, "rounds": ROUNDS,
                                 "median_s": medians, "all_s": seconds,
                                 "ratio": medians[name] / medians["overlayfs"]}
    with capsys.disabled():
        print(f"\nimport+unpack of minbase: overlayfs {medians['overlayfs']:.3f} s, "
              f"{name} {medians[name]:.3f} s, ratio {RESULTS['import_minbase']['ratio']:.2f}")


def _report() -> None:
    out = CACHE / "containerd-results.json"
    out.write_text(json.dumps(RESULTS, indent=2) + "\n")
    print(f"\ncontainerd bench: {json.dumps(RESULTS)}\n(written to {out})")

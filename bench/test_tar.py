"""Layer tar throughput against GNU tar, in the same run, on a real root filesystem.

    python3 -m pytest bench/test_tar.py --benchmark-enable

The layer is a Debian minbase tree made with ``debootstrap --variant=minbase
bookworm`` (about 35 s, cached under /var/tmp/graphdrivers-bench), else a copy
of /usr. The work happens on a tmpfs the suite mounts (as root; else on the
cache's own filesystem, set GRAPHDRIVERS_BENCH_FS=disk to force that): disk
writeback makes single runs noise. Both tools read and write the same places:
apply_tar against ``tar -x`` of the same tar, export_tree drained into a file
against ``tar -c`` into a file (never /dev/null, which GNU tar does not write).
The summary (files, bytes, seconds, ratios) is printed and written to
``<cache>/tar-results.json``.
"""
from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from graphdrivers.kernel import mount as mnt
from graphdrivers.archive import apply_tar, export_tree
from graphdrivers.vfs.copy import copy_tree

CACHE = Path(os.environ.get("GRAPHDRIVERS_BENCH_DIR", "/var/tmp/graphdrivers-bench"))
GNU = ["tar", "--numeric-owner", "--xattrs", "--xattrs-include=*"]
RESULTS: dict[str, dict] = {}
ROUNDS = int(os.environ.get("GRAPHDRIVERS_BENCH_ROUNDS", "5"))


def _source_tree() -> Path:
    rootfs = CACHE / "rootfs"
    if rootfs.is_dir():
        return rootfs
    CACHE.mkdir(parents=True, exist_ok=True)
    partial = CACHE / "rootfs.tmp"
    shutil.rmtree(partial, ignore_errors=True)
    if shutil.which("debootstrap") and os.geteuid() == 0:
        done = subprocess.run(["debootstrap", "--variant=minbase", "bookworm", str(partial)],
                              capture_output=True)
        if done.returncode == 0:
            partial.rename(rootfs)
            return rootfs
        shutil.rmtree(partial, ignore_errors=True)
    usr = CACHE / "usr-copy"
    if not usr.is_dir():
        shutil.copytree("/usr", CACHE / "usr-copy.tmp", symlinks=True)
        (CACHE / "usr-copy.tmp").rename(usr)
    return usr


def _count(root: Path) -> tuple[int, int]:
    files = size = 0
    for dirpath, dirnames, filenames in os.walk(root):
        files += len(dirnames) + len(filenames)
        for name in filenames:
            st = os.lstat(os.path.join(dirpath, name))
            if not os.path.islink(os.path.join(dirpath, name)):
                size += st.st_size
    return files, size


@pytest.fixture(scope="session")
def work():
    """A scratch filesystem for the runs (tmpfs when we may mount one)."""
    area = CACHE / "work"
    area.mkdir(parents=True, exist_ok=True)
    mounted = False
    if os.geteuid() == 0 and os.environ.get("GRAPHDRIVERS_BENCH_FS") != "disk":
        mnt.mount("tmpfs", area, "tmpfs", 0, "size=6g,mode=0755")
        mounted = True
    try:
        yield area
    finally:
        if mounted:
            mnt.umount(area, mnt.MNT_DETACH)
        else:
            shutil.rmtree(area, ignore_errors=True)
        if RESULTS:
            _report()


@pytest.fixture(scope="session")
def layer(work):
    """(tree, tar of it made by GNU tar) on the scratch filesystem."""
    src = _source_tree()
    tree = work / "tree"
    tree.mkdir()
    copy_tree(src, tree)
    tar = work / "layer.tar"
    subprocess.run(GNU + ["--format=pax", "-C", str(tree), "-cf", str(tar), "."], check=True)
    files, size = _count(tree)
    RESULTS["layer"] = {"source": str(src), "entries": files, "file_bytes": size,
                        "tar_bytes": tar.stat().st_size}
    return tree, tar


def _fresh(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir()


CPU: dict[str, list[float]] = {}


def _cpu() -> float:
    """CPU seconds (user + system) of this process and its waited-for children."""
    total = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        usage = resource.getrusage(who)
        total += usage.ru_utime + usage.ru_stime
    return total


def _cpu_timed(name: str, fn):
    """Also record CPU time per round: the machine is shared, so wall time is noisy."""
    def run():
        start = _cpu()
        result = fn()
        CPU.setdefault(name, []).append(_cpu() - start)
        return result
    return run


def _record(name: str, benchmark) -> None:
    stats = benchmark.stats.stats if benchmark.stats else None
    if stats is not None:
        RESULTS[name] = {"min_s": stats.min, "median_s": stats.median, "rounds": stats.rounds,
                         "min_cpu_s": min(CPU.get(name, [0.0]))}


def test_apply_ours(benchmark, layer, work):
    tree, tar = layer
    dst = work / "apply-ours"

    def run():
        with open(tar, "rb") as stream:
            return apply_tar(dst, stream)
    size = benchmark.pedantic(_cpu_timed("apply_tar", run), setup=lambda: _fresh(dst),
                              rounds=ROUNDS)
    assert size > 0
    _record("apply_tar", benchmark)


def test_apply_gnu_tar(benchmark, layer, work):
    tree, tar = layer
    dst = work / "apply-gnu"
    benchmark.pedantic(_cpu_timed("tar -x", lambda: subprocess.run(
        GNU + ["-xpf", str(tar), "-C", str(dst)], check=True)),
        setup=lambda: _fresh(dst), rounds=ROUNDS)
    _record("tar -x", benchmark)


def test_apply_gnu_tar_durable(benchmark, layer, work):
    """``tar -x`` then ``sync -f`` (one syncfs): GNU tar with the durability apply_tar
    gives (it returns once the layer is on stable storage); on a tmpfs, the same as
    ``tar -x``."""
    tree, tar = layer
    dst = work / "apply-gnu-durable"

    def run():
        subprocess.run(GNU + ["-xpf", str(tar), "-C", str(dst)], check=True)
        subprocess.run(["sync", "-f", str(dst)], check=True)
    benchmark.pedantic(_cpu_timed("tar -x + sync -f", run), setup=lambda: _fresh(dst),
                       rounds=ROUNDS)
    _record("tar -x + sync -f", benchmark)


def test_export_ours(benchmark, layer, work):
    tree, _ = layer
    out = work / "export-ours.tar"

    def run():
        # drained the ordinary way: shutil's 64 KiB reads into an unbuffered file
        with export_tree(tree) as stream, open(out, "wb", buffering=0) as f:
            shutil.copyfileobj(stream, f)
    benchmark.pedantic(_cpu_timed("export_tree", run), setup=lambda: out.unlink(missing_ok=True),
                       rounds=ROUNDS)
    _record("export_tree", benchmark)


def test_export_gnu_tar(benchmark, layer, work):
    tree, _ = layer
    out = work / "export-gnu.tar"
    benchmark.pedantic(_cpu_timed("tar -c", lambda: subprocess.run(
        GNU + ["--format=pax", "-C", str(tree), "-cf", str(out), "."], check=True)),
        setup=lambda: out.unlink(missing_ok=True), rounds=ROUNDS)
    _record("tar -c", benchmark)


@pytest.fixture(scope="session")
def vfs(work):
    import graphdrivers
    driver = graphdrivers.load("vfs", work / "vfs-home")
    yield driver
    driver.cleanup()


def test_vfs_apply_diff(benchmark, layer, vfs):
    """The same through the driver: Driver.apply_diff into a fresh vfs layer."""
    tree, tar = layer

    def setup():
        if vfs.exists("bench"):
            vfs.remove("bench")
        vfs.create("bench")

    def run():
        with open(tar, "rb") as stream:
            return vfs.apply_diff("bench", None, stream)
    assert benchmark.pedantic(_cpu_timed("vfs.apply_diff", run), setup=setup, rounds=ROUNDS) > 0
    _record("vfs.apply_diff", benchmark)


def test_vfs_diff(benchmark, layer, vfs, work):
    """Driver.diff of that whole layer, drained into a file."""
    out = work / "vfs-diff.tar"
    if not vfs.exists("bench"):
        vfs.create("bench")
        with open(layer[1], "rb") as stream:
            vfs.apply_diff("bench", None, stream)

    def run():
        with vfs.diff("bench") as stream, open(out, "wb", buffering=0) as f:
            shutil.copyfileobj(stream, f)
    benchmark.pedantic(_cpu_timed("vfs.diff", run), setup=lambda: out.unlink(missing_ok=True),
                       rounds=ROUNDS)
    _record("vfs.diff", benchmark)


_PIPELINE = """
import resource, sys
from graphdrivers.archive import apply_tar, export_tree
size = apply_tar(sys.argv[2], export_tree(sys.argv[1]))
print(size, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def test_peak_memory_of_a_1gb_layer(layer, work):
    """export_tree piped into apply_tar for a layer of ~1 GB, in a fresh process."""
    tree, _ = layer
    big = work / "big"
    big.mkdir()
    copy_tree(tree, big)
    block = os.urandom(1 << 20)
    for i in range(4):
        with open(big / f"blob{i}", "wb") as f:
            for _ in range(200):
                f.write(block)
    dst = work / "big-copy"
    dst.mkdir()
    out = subprocess.run([sys.executable, "-c", _PIPELINE, str(big), str(dst)], check=True,
                         capture_output=True, text=True).stdout.split()
    size, peak_kb = int(out[0]), int(out[1])
    RESULTS["memory"] = {"layer_bytes": size, "peak_rss_mb": round(peak_kb / 1024, 1)}
    assert size > 950 << 20
    assert peak_kb < 100 * 1024
    shutil.rmtree(big)
    shutil.rmtree(dst)


def _report() -> None:
    r = RESULTS
    lines = ["", "== layer tar throughput ==", json.dumps(r.get("layer", {}))]
    for ours, theirs in (("apply_tar", "tar -x"), ("apply_tar", "tar -x + sync -f"),
                         ("export_tree", "tar -c"),
                         ("vfs.apply_diff", "tar -x"), ("vfs.diff", "tar -c")):
        if ours in r and theirs in r:
            ratio = r[theirs]["min_s"] / r[ours]["min_s"]
            cpu_ratio = r[theirs]["min_cpu_s"] / max(r[ours]["min_cpu_s"], 1e-9)
            r[f"{ours} vs {theirs}"] = {"throughput_ratio": round(ratio, 2),
                                        "cpu_ratio": round(cpu_ratio, 2)}
            lines.append(f"{ours}: {r[ours]['min_s']:.3f} s ({r[ours]['min_cpu_s']:.3f} s CPU)   "
                         f"{theirs}: {r[theirs]['min_s']:.3f} s ({r[theirs]['min_cpu_s']:.3f} s CPU)"
                         f"   throughput {ratio:.2f}x GNU tar, CPU {cpu_ratio:.2f}x (min of rounds)")
    if "memory" in r:
        lines.append(f"1 GB layer export|apply peak RSS: {r['memory']['peak_rss_mb']} MB")
    print("\n".join(lines), file=sys.stderr)
    with open(CACHE / "tar-results.json", "w") as f:
        json.dump(r, f, indent=1)

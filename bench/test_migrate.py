"""``graphdrivers migrate`` into overlay2 against a plain apply_diff of the same data.

    python3 -m pytest bench/test_migrate.py -s

The source is a vfs home holding the Debian minbase layer (bench/test_tar.py's tree,
cached under GRAPHDRIVERS_BENCH_DIR) and 20 small layers on it (a few files added,
one changed, one deleted each). Both sides sit on one XFS filesystem on a zram device
(bench/media.py), so vfs' copies of the parent are reflinks and the disk is out of the
measurement. In each round, alternately:

- apply: a fresh overlay2 home; create + apply_diff of the 21 layer tars (read from
  files on the same filesystem), the work migrate's copy step does at least;
- migrate: a fresh overlay2 home; graphdrivers.migrate.migrate (diff of each vfs
  layer, apply, verification of every layer against its source).

The medians and their ratio (target: under 2) are printed and written to
``<bench dir>/migrate-results.json``; ``uptime`` goes with them. The same is run
from an overlay2 source (native diffs) to show what the migration itself adds.
"""
from __future__ import annotations

import io
import json
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import graphdrivers  # noqa: E402
from graphdrivers import migrate  # noqa: E402

import media  # noqa: E402
from test_tar import CACHE, _source_tree  # noqa: E402

ROUNDS = int(os.environ.get("GRAPHDRIVERS_BENCH_ROUNDS", "3"))
SMALL = 20


def _small_tar(n: int) -> bytes:
    """Layer n: eight files of 1-32 KiB added, /etc/motd changed, a file of n-1 deleted."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        entries = [(f"srv/layer{n}/f{i}", os.urandom(1024 << (i % 6))) for i in range(8)]
        entries.append(("etc/motd", f"layer {n}\n".encode()))
        for name, data in entries:
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), 1_700_000_000 + n, 0o644
            tar.addfile(info, io.BytesIO(data))
        if n > 1:
            info = tarfile.TarInfo(f"srv/layer{n - 1}/.wh.f0")
            tar.addfile(info, io.BytesIO(b""))
    return buf.getvalue()


@pytest.fixture(scope="module")
def area(tmp_path_factory):
    work = tmp_path_factory.mktemp("bench-migrate")
    with media.medium("block", "xfs", work, 3 << 30) as medium:
        yield medium.mountpoint


@pytest.fixture(scope="module")
def tars(area) -> list[Path]:
    """The 21 layer tars: minbase (GNU tar, as a build makes it) and the small ones."""
    tree = _source_tree()
    out = area / "tars"
    out.mkdir()
    base = out / "00-debian.tar"
    subprocess.run(["tar", "--numeric-owner", "--xattrs", "--xattrs-include=*", "--format=pax",
                    "-C", str(tree), "-cf", str(base), "."], check=True)
    paths = [base]
    for n in range(1, SMALL + 1):
        path = out / f"{n:02}.tar"
        path.write_bytes(_small_tar(n))
        paths.append(path)
    return paths


def _apply_all(drv, tars: list[Path]) -> int:
    total, parent = 0, None
    for n, tar in enumerate(tars):
        layer = f"l{n:02}"
        drv.create(layer, parent)
        with open(tar, "rb") as f:
            total += drv.apply_diff(layer, parent, f)
        parent = layer
    return total


@pytest.fixture(scope="module", params=["vfs", "overlay2"])
def source(request, area, tars):
    """The source home: vfs (the issue's case: naive diffs) or overlay2 (native diffs,
    into another overlay2 home: what the framework itself costs)."""
    drv = graphdrivers.load(request.param, area / f"src-{request.param}")
    _apply_all(drv, tars)
    yield drv
    drv.cleanup()


def _fresh_overlay2(area: Path, name: str):
    home = area / name
    shutil.rmtree(home, ignore_errors=True)
    subprocess.run(["sync"], check=True)
    return graphdrivers.load("overlay2", home)


def test_migrate_to_overlay2_against_apply(area, tars, source):
    times: dict[str, list[float]] = {"apply": [], "migrate": []}
    cpu: dict[str, list[float]] = {"apply": [], "migrate": []}   # this process's CPU: less load-bound
    summary = {}
    for r in range(ROUNDS):
        for what in ("apply", "migrate") if r % 2 == 0 else ("migrate", "apply"):
            target = _fresh_overlay2(area, f"{what}-{r}")
            start, start_cpu = time.perf_counter(), time.process_time()
            if what == "apply":
                applied = _apply_all(target, tars)
            else:
                summary = migrate.migrate(source, target)
            times[what].append(time.perf_counter() - start)
            cpu[what].append(time.process_time() - start_cpu)
            target.cleanup()
            shutil.rmtree(area / f"{what}-{r}", ignore_errors=True)
    assert summary["copied"] == SMALL + 1 and summary["bytes"] == applied
    medians = {k: statistics.median(v) for k, v in times.items()}
    cpu_medians = {k: statistics.median(v) for k, v in cpu.items()}
    result = {"layers": SMALL + 1, "bytes": applied, "rounds": ROUNDS, "seconds": times,
              "median_s": medians, "ratio": medians["migrate"] / medians["apply"],
              "cpu_s": cpu, "cpu_ratio": cpu_medians["migrate"] / cpu_medians["apply"],
              "uptime": subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()}
    CACHE.mkdir(parents=True, exist_ok=True)
    out = CACHE / "migrate-results.json"
    results = json.loads(out.read_text()) if out.exists() else {}
    results[f"{source.name}->overlay2"] = result
    out.write_text(json.dumps(results, indent=1) + "\n")
    print(f"\nmigrate {source.name}->overlay2 of minbase + {SMALL} layers ({applied / 1e6:.0f} MB): "
          f"apply {medians['apply']:.3f} s, migrate {medians['migrate']:.3f} s, "
          f"ratio {result['ratio']:.2f}; CPU {cpu_medians['apply']:.3f} s / "
          f"{cpu_medians['migrate']:.3f} s, ratio {result['cpu_ratio']:.2f} ({result['uptime']})")

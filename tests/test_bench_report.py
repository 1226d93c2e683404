"""Smoke tests of `graphdrivers bench`: the report from a tiny synthetic run,
and the runner's refusal to wipe a device without consent. No benchmark runs."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from graphdrivers.benchmarking import runner as bench
from graphdrivers.benchmarking import report as bench_report


def _bench(name: str, driver: str, medium: str, median: float, fio: list[dict] | None = None) -> dict:
    extra = {"driver": driver, "medium": medium,
             "media": {"kind": medium, "fstype": "ext4", "backing": "zram", "device": "/dev/zram9"}}
    if fio:
        extra["fio"] = fio
    return {"name": f"{name}[{driver}-{medium}]", "params": {"bench_env": [driver, medium]},
            "extra_info": extra,
            "stats": {"median": median, "q1": median * 0.9, "q3": median * 1.1,
                      "min": median * 0.8, "max": median * 1.2, "rounds": 5}}


def _write_run(out: Path) -> None:
    raw = out / "raw"
    raw.mkdir(parents=True)
    graphtest = [_bench("test_create_empty", "vfs", "loop", 0.003),
                 _bench("test_create_empty", "vfs", "block", 0.001),
                 _bench("test_exists", "vfs", "loop", 1e-6),
                 _bench("test_exists", "vfs", "block", 1e-6)]
    fio = [_bench("test_seq_write", "vfs", "loop", 0.5, [{"bw_MiBps": 100.0, "iops": 100.0}] * 3),
           _bench("test_seq_write", "vfs", "block", 0.2, [{"bw_MiBps": 250.0, "iops": 250.0}] * 3)]
    (raw / "graphtest.json").write_text(json.dumps({"machine_info": {}, "benchmarks": graphtest}))
    (raw / "fio.json").write_text(json.dumps({"machine_info": {}, "benchmarks": fio}))


def test_report_from_synthetic_run(tmp_path):
    pytest.importorskip("matplotlib")
    _write_run(tmp_path)
    assert bench.main(["report", str(tmp_path)]) == 0
    report = (tmp_path / "report.md").read_text()
    # loop 3 ms vs block 1 ms -> 3.00; fio 250 vs 100 MiB/s -> 2.50; equal -> 1.00
    assert "| graphtest | create_empty | 3.00 |" in report
    assert "| fio | seq_write | 2.50 |" in report
    assert "| graphtest | exists | 1.00 |" in report
    assert "/dev/zram9" in report
    for png in ("ratios_graphtest.png", "values_graphtest.png", "ratios_fio.png", "values_fio.png"):
        assert (tmp_path / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png
        assert f"]({png})" in report


def test_ratio_pairs_devicemapper_block_sizes():
    r = lambda medium, m: bench_report.Result("graphtest", "remove", "devicemapper", medium, "s",
                                              m, m, m, m, m, 3)
    rat = bench_report.ratios([r("loop", 4.0), r("block", 2.0), r("loop-dio", 3.0),
                               r("loop+512KB", 9.0), r("block+512KB", 3.0)])
    assert rat[("graphtest", "remove", "devicemapper")] == {
        "loop/block": 2.0, "loop-dio/block": 1.5, "loop/block @512KB": 3.0}


def test_run_refuses_block_device_without_consent(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "graphdrivers.cli", "bench", "run", "--quick",
                           "--block-device", "/dev/sdz", "--out", str(tmp_path)],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert "--yes-destroy-data" in proc.stderr
    assert not (tmp_path / "raw").exists()


def test_run_finds_the_checkouts_suites():
    """The editable install's runner finds bench/ (it moved into a subpackage once and lost it)."""
    root = bench.repo_root()
    assert root == Path(__file__).resolve().parents[1]
    assert bench.suites_dir() == root / "bench"
    for path in bench.SUITES.values():
        assert (bench.suites_dir() / path).is_file(), path

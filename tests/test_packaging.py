"""The wheel stands alone: built from this checkout, installed into a fresh virtualenv
outside it, its ``graphdrivers`` (including ``bench``, whose suites ship as
graphdrivers/benchmarking/suites) runs with no source tree in reach. And the files a
distribution needs: LICENSE as setup.cfg names it, CHANGELOG, py.typed."""
from __future__ import annotations

import configparser
import json
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_license_changelog_and_py_typed():
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    assert cfg["metadata"]["license"] == "Apache-2.0"
    assert cfg["metadata"]["license_files"].strip() == "LICENSE"
    text = (ROOT / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert "## [Unreleased]" in (ROOT / "CHANGELOG.md").read_text()
    assert (ROOT / "drivers" / "py.typed").exists()
    assert "py.typed" in cfg["options.package_data"]["graphdrivers"]


@pytest.fixture(scope="module")
def wheel() -> Path:
    out = Path(tempfile.mkdtemp(prefix="gd-wheel-", dir="/work" if os.path.isdir("/work") else None))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(out),
                    str(ROOT)], check=True, capture_output=True, timeout=600)
    found = list(out.glob("graphdrivers-*.whl"))
    assert len(found) == 1, found
    yield found[0]
    import shutil
    shutil.rmtree(out, ignore_errors=True)


def test_wheel_contents(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    for needed in ("graphdrivers/py.typed", "graphdrivers/benchmarking/suites/conftest.py",
                   "graphdrivers/benchmarking/suites/test_graphtest.py",
                   "graphdrivers/benchmarking/suites/media.py",
                   "graphdrivers/servers/snapshotter/snapshots.proto",
                   "graphdrivers/devmapper/driver.py", "graphdrivers/cli/config.py"):
        assert needed in names, needed
    assert any(n.endswith(".dist-info/licenses/LICENSE") or n.endswith(".dist-info/LICENSE")
               for n in names)


@pytest.mark.slow
def test_wheel_in_a_fresh_venv_runs_bench_outside_the_checkout(wheel):
    work = Path(tempfile.mkdtemp(prefix="gd-venv-", dir="/work" if os.path.isdir("/work") else None))
    try:
        venv = work / "venv"
        subprocess.run(["/usr/bin/python3", "-m", "venv", str(venv)], check=True, timeout=300)
        subprocess.run([str(venv / "bin" / "pip"), "install", "-q", f"{wheel}[test,bench]"],
                       check=True, capture_output=True, timeout=900)
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
        exe = str(venv / "bin" / "graphdrivers")
        where = subprocess.run([str(venv / "bin" / "python"), "-c",
                                "import graphdrivers; print(graphdrivers.__file__)"],
                               cwd=work, env=env, capture_output=True, text=True, check=True)
        assert where.stdout.startswith(str(venv)), where.stdout     # not the checkout
        out = work / "bench-out"
        result = subprocess.run([exe, "bench", "run", "--quick", "--drivers", "vfs", "--out",
                                 str(out)], cwd=work, env=env, capture_output=True, text=True,
                                timeout=1200)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        assert f"rootdir: {venv}" in result.stdout + result.stderr
        raw = json.loads((out / "raw" / "graphtest.json").read_text())
        assert raw["benchmarks"], "no benchmark ran"
        assert (out / "report.md").exists()
    finally:
        import shutil
        shutil.rmtree(work, ignore_errors=True)

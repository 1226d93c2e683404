"""The conformance suite as a third-party driver package runs it (docs/testing.md).

The example package docs/examples/examplefs (vfs under a name of its own, with a
home maker) is installed with a copy of this checkout, not editable, into a fresh
virtualenv outside the checkout, and runs the installed suite with
``pytest --pyargs graphdrivers.testing.conformance --graphdriver examplefs``.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "docs" / "examples" / "examplefs"
DOC = ROOT / "docs" / "testing.md"
# what a copy of the checkout leaves out: local state, not sources
NOT_SOURCES = shutil.ignore_patterns(".git", ".venv", "*.egg-info", "build", "dist", "__pycache__",
                                     ".pytest_cache", ".hypothesis", ".benchmarks")


def _clean_env() -> dict[str, str]:
    """This process's environment less what would leak the checkout into the other run."""
    drop = {"GRAPHDRIVERS_TEST_DRIVERS", "PYTHONPATH", "VIRTUAL_ENV", "PYTEST_ADDOPTS",
            "PYTEST_PLUGINS", "PYTEST_DISABLE_PLUGIN_AUTOLOAD"}
    return {k: v for k, v in os.environ.items() if k not in drop}


def _run(*args: str | Path, cwd: Path, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run([str(a) for a in args], cwd=cwd, env=_clean_env(), text=True,
                          capture_output=True, timeout=timeout)


def _names(test_id: str, driver: str) -> bool:
    """Whether a test id's parameters name ``driver`` (``test_x[vfs]``, ``test_x[vfs-0]``)."""
    return re.search(rf"[\[-]{re.escape(driver)}[\]-]", test_id) is not None


def _collected(*args: str, cwd: Path = ROOT, python: str = sys.executable) -> list[str]:
    result = _run(python, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
                  *args, cwd=cwd)
    assert result.returncode == 0, result.stdout + result.stderr
    return [line for line in result.stdout.splitlines() if "::" in line]


def test_the_docs_show_the_example_package_as_it_is():
    """docs/testing.md quotes every file of the example verbatim (this test installs that one)."""
    doc = DOC.read_text()
    for path in sorted(p for p in EXAMPLE.rglob("*") if p.is_file()):
        assert path.read_text() in doc, f"docs/testing.md does not show {path.relative_to(ROOT)}"


def test_graphdriver_option_selects_the_drivers(tmp_path):
    """--graphdriver picks the drivers, overriding GRAPHDRIVERS_TEST_DRIVERS; ids name them."""
    vfs = _collected("tests/conformance", "--graphdriver", "vfs")
    assert vfs and all(_names(test, "vfs") for test in vfs), vfs[:5]
    assert vfs[0].startswith("tests/conformance/test_")
    both = _collected("tests/conformance", "--graphdriver", "vfs,overlay2")
    assert len(both) == 2 * len(vfs)
    assert _collected("tests/conformance", "--graphdriver", "vfs", "--graphdriver", "overlay2") \
        == both


@pytest.mark.slow
def test_a_third_party_driver_passes_the_installed_suite(tmp_path):
    src, example, venv, work = (tmp_path / name for name in ("src", "examplefs", "venv", "work"))
    shutil.copytree(ROOT, src, symlinks=True, ignore=NOT_SOURCES)
    shutil.copytree(EXAMPLE, example, ignore=NOT_SOURCES)
    work.mkdir()
    result = _run(sys.executable, "-m", "venv", venv, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    python = venv / "bin" / "python"
    result = _run(python, "-m", "pip", "install", "-q", f"{src}[test]", example, cwd=work)
    assert result.returncode == 0, result.stdout + result.stderr

    # the installed package, not this checkout, and the example's home maker
    result = _run(python, "-c", "import graphdrivers.testing.homes as h, examplefs.testing as t; "
                  "print(h.__file__); print(h.home_maker('examplefs') is t.home)", cwd=work)
    assert result.returncode == 0, result.stderr
    where, maker_found = result.stdout.split()
    assert Path(where).is_relative_to(venv) and maker_found == "True"

    suite = ["--pyargs", "graphdrivers.testing.conformance", "--graphdriver", "examplefs"]
    ids = _collected(*suite, cwd=work, python=str(python))
    assert ids and all(_names(test, "examplefs") for test in ids), ids[:5]
    assert len(ids) == len(_collected("tests/conformance", "--graphdriver", "vfs"))
    result = _run(python, "-m", "pytest", "-q", "-p", "no:cacheprovider", *suite, cwd=work)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
    assert re.search(r"\d+ passed", result.stdout), result.stdout[-2000:]

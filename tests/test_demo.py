"""scripts/demo on the host: it runs, and it cleans up after itself even when a step fails."""
from __future__ import annotations

import pytest

from demo_run import assert_nothing_left, corrupt_tar, run_demo


@pytest.fixture
def workdir(tmp_path):
    path = tmp_path / "work"
    path.mkdir()
    return path


def test_demo_runs_and_leaves_nothing(workdir, tmp_path):
    source = tmp_path / "tree"
    (source / "etc").mkdir(parents=True)
    for name in ("issue", "issue.net", "hostname"):
        (source / "etc" / name).write_text(f"{name}\n")
    result = run_demo(workdir, "--source", str(source), "--size", "1G")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "demo finished" in result.stdout
    assert "D /" in result.stdout and "A /demo/hello.txt" in result.stdout   # the changes step
    assert_nothing_left(workdir)


def test_a_failing_step_still_cleans_up(workdir, tmp_path):
    result = run_demo(workdir, "--tar", str(corrupt_tar(tmp_path / "bad.tar")), "--size", "1G")
    assert result.returncode != 0
    assert "demo FAILED" in result.stdout
    assert_nothing_left(workdir)

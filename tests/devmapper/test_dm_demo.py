"""scripts/demo --driver devicemapper in the VM: a loop-lvm pool built, grown online, released."""
from __future__ import annotations

import pytest

from graphdrivers.devmapper.testing import require_dm
from demo_run import assert_nothing_left, corrupt_tar, run_demo

pytestmark = pytest.mark.devicemapper


@pytest.fixture
def workdir(tmp_path):
    require_dm()
    from graphdrivers.devmapper import dm
    before = set(dm.list_devices())
    path = tmp_path / "work"
    path.mkdir()
    yield path
    assert set(dm.list_devices()) == before   # no pool, no thin device left


def test_devicemapper_demo(workdir, tmp_path):
    source = tmp_path / "tree"
    (source / "etc").mkdir(parents=True)
    for name in ("issue", "issue.net"):
        (source / "etc" / name).write_text(f"{name}\n")
    result = run_demo(workdir, "--driver", "devicemapper", "--source", str(source))
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    assert "Data total: 107.4 GB" in out                   # Docker's 100 GB sparse default
    assert "Data total: 161.1 GB" in out                   # after the online resize to 150GB
    assert "kept working through the resize" in out
    assert "thin pool" in out and "released" in out
    assert_nothing_left(workdir)


def test_devicemapper_demo_failing_step_releases_the_pool(workdir, tmp_path):
    result = run_demo(workdir, "--driver", "devicemapper",
                      "--tar", str(corrupt_tar(tmp_path / "bad.tar")))
    assert result.returncode != 0
    assert "demo FAILED" in result.stdout
    assert_nothing_left(workdir)

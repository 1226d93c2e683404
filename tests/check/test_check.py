"""`graphdrivers check [--repair]` (issue 17, part 1): each kind of damage made for
real, found, repaired; a second check finds nothing; intact layers keep their content.

The tests run for every selected driver (devicemapper in the VM); what only one
backend can have (overlay2's l/ links, btrfs qgroups, thin devices) is in
test_backends.py and tests/devmapper/test_check.py.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from graphdrivers import check
from graphdrivers.check import findings as F
from graphdrivers.check import quarantine
from graphdrivers.kernel import loop
from graphdrivers.kernel.mount import mounts_under
from graphdrivers.store.layers import LayerRecord

from check.damage import append_record_line, bind_leak, build, hashes, kill_inside_apply

INTACT = ["base", "child", "leaf", "other", "other2"]


def kinds(found):
    return sorted((f.kind, f.subject) for f in found if f.outstanding)


def cli(home, name, *args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "graphdrivers.cli", "--home", str(home),
                           "--driver", name, "check", *args],
                          capture_output=True, text=True, timeout=600)


@pytest.fixture
def built(driver):
    build(driver)
    return driver


def test_a_healthy_home_has_no_findings(built, driver_name, home_and_options):
    assert check.inspect(built) == []
    result = cli(home_and_options[0], driver_name, "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["findings"] == []


def test_layer_without_data_is_quarantined_with_what_is_built_on_it(
        built, driver_name, home_and_options):
    before = hashes(built, ["base", "other", "other2"])
    destroy_data(built, "child")
    found = check.inspect(built)
    assert kinds(found) == [(F.LAYER_WITHOUT_DATA, "child")]
    assert "leaf" in found[0].repair and "quarantine" in found[0].repair
    result = cli(home_and_options[0], driver_name, "--repair", "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    drv = built
    assert check.inspect(drv) == []
    assert cli(home_and_options[0], driver_name).returncode == 0
    assert sorted(drv.layers()) == ["base", "other", "other2"]
    assert hashes(drv, ["base", "other", "other2"]) == before
    entries = [p.name.split("-", 1)[1] for p in quarantine.entries(drv.home)]
    assert sorted(entries) == ["child", "leaf"]
    moved = json.loads((quarantine.entries(drv.home)[0] / "record.json").read_text())
    assert moved["record"]["add"] in ("child", "leaf") and moved["reason"]


def test_data_without_a_layer(built, driver_name, home_and_options):
    """Made after load (the in-process inspection finds it), and before a new load (the
    CLI's load deletes it and the report says so)."""
    before = hashes(built)
    make_orphan(built, "orphan1")
    found = check.inspect(built)
    assert kinds(found) == [(F.DATA_WITHOUT_LAYER, "orphan1")]
    assert [f.state for f in check.repair(built)] == [F.REPAIRED]
    assert check.inspect(built) == []
    make_orphan(built, "orphan2")
    result = cli(home_and_options[0], driver_name, "--json")
    report = json.loads(result.stdout)
    assert result.returncode == 0 and report["clean"]
    assert [(f["kind"], f["subject"], f["state"]) for f in report["findings"]] == \
        [(F.RECOVERED, "orphan2", F.FIXED_AT_LOAD)]
    assert cli(home_and_options[0], driver_name, "--json").stdout.count('"kind"') == 0
    assert hashes(built) == before


def test_broken_parent_chain(built, driver_name, home_and_options):
    """The records lose a parent (a bad edit of the log): the chain built on it is damaged."""
    before = hashes(built)
    append_record_line(built, {"add": "stray", "parent": "ghost", "rw": False})
    found = check.inspect(built)
    assert (F.BROKEN_PARENT, "stray") in kinds(found)
    result = cli(home_and_options[0], driver_name, "--repair")
    assert result.returncode == 0, result.stdout + result.stderr
    assert check.inspect(built) == []
    assert cli(home_and_options[0], driver_name).returncode == 0
    assert sorted(built.layers()) == sorted(INTACT)
    assert hashes(built) == before


def test_half_applied_layer_left_by_a_kill(built, driver_name, home_and_options):
    home, options = home_and_options
    before = hashes(built)
    built.create("victim", "child")
    kill_inside_apply(driver_name, home, options)
    drv = built
    assert "victim" in drv.layers()           # a new load keeps it: nothing on disk tells
    expected = [(F.HALF_MADE, "victim")]
    if driver_name == "devicemapper":         # its apply mounts the device: the kill leaks it
        expected.append((F.LEAKED_MOUNT, f"{drv.home}/mnt/victim"))
    assert kinds(check.inspect(drv)) == expected
    result = cli(home, driver_name, "--json")
    assert result.returncode == check_exit_findings(), result.stderr
    assert sorted(f["kind"] for f in json.loads(result.stdout)["findings"]) == \
        [kind for kind, _ in expected]
    assert {f.state for f in check.repair(drv)} == {F.REPAIRED}
    assert check.inspect(drv) == []
    assert cli(home, driver_name).returncode == 0
    assert "victim" not in drv.layers()
    assert hashes(drv) == before
    drv.create("victim", "child")              # the id is free again


def test_leaked_mount(built, driver_name, home_and_options, tmp_path):
    before = hashes(built)
    source = tmp_path / "src"
    source.mkdir()
    target = leak_target(built, "leaf")
    bind_leak(source, target)
    try:
        found = check.inspect(built)
        assert kinds(found) == [(F.LEAKED_MOUNT, str(target))]
        result = cli(home_and_options[0], driver_name, "--repair")
        assert result.returncode == 0, result.stdout + result.stderr
        assert str(target) not in mounts_under(built.home)
        assert check.inspect(built) == []
        target.rmdir()
        assert hashes(built) == before
    finally:
        if str(target) in mounts_under(built.home):
            os.system(f"umount -l {target}")


def test_leaked_loop_device(built, driver_name, home_and_options):
    image = Path(built.home) / ".leaked.img"     # no layer name: only the loop is wrong
    image.write_bytes(b"\0" * (1 << 20))
    device = loop.attach(image, autoclear=False)
    device.close()
    try:
        found = check.inspect(built)
        assert (F.LEAKED_LOOP, device.path) in kinds(found)
        result = cli(home_and_options[0], driver_name, "--repair")
        assert result.returncode == 0, result.stdout + result.stderr
        assert loop.find(image) == []
    finally:
        if loop.find(image):
            loop.detach(device.path)
        image.unlink()
    assert check.inspect(built) == []


def test_stale_mark_of_a_removed_layer_is_dropped(built):
    mark = Path(built.home_run.dir) / "inflight" / "gone"
    mark.parent.mkdir(parents=True, exist_ok=True)
    mark.write_text("1-1-1")            # left by a process that ended, for no layer
    assert kinds(check.inspect(built)) == [(F.STALE_MARK, "gone")]
    check.repair(built)
    assert check.inspect(built) == [] and not mark.exists()


def check_exit_findings() -> int:
    from graphdrivers.cli.check import FINDINGS_LEFT
    return FINDINGS_LEFT


# -- per-backend ways of making the damage (real, as a crash or an operator makes it) ---
def destroy_data(drv, layer: str) -> None:
    if drv.name == "vfs":
        _rmtree(Path(drv.home) / "dir" / layer)
    elif drv.name == "overlay2":
        _rmtree(Path(drv.home) / layer / "diff")
    elif drv.name == "btrfs":
        from graphdrivers.btrfs import subvol
        subvol.delete(Path(drv.home) / "subvolumes" / layer)
    elif drv.name == "devicemapper":      # the pool loses the thin device
        drv.devices.deactivate(layer)
        drv.pool.delete_thin(drv.store.layer(layer).device_id)
    else:
        pytest.fail(f"no way to destroy {drv.name} data")


def make_orphan(drv, layer: str) -> None:
    """Data of the backend's own scheme for an id that has no record."""
    drv._create_data(LayerRecord(layer), None, None, "")


def leak_target(drv, layer: str) -> Path:
    if drv.name == "devicemapper":      # its own mount point, as a crashed process leaves it
        return Path(drv.home) / "mnt" / f"{layer}-leak"
    if drv.name == "overlay2":
        return Path(drv.home) / layer / "diff" / "leak"
    root = {"vfs": "dir", "btrfs": "subvolumes"}[drv.name]
    return Path(drv.home) / root / layer / "leak"


def _rmtree(path: Path) -> None:
    import shutil
    shutil.rmtree(path)


# -- live work is not damage ------------------------------------------------------------
LIVE_CHILD = str(Path(__file__).with_name("live_child.py"))


def _live(driver_name, home_and_options, *args) -> subprocess.Popen:
    home, options = home_and_options
    child = subprocess.Popen([sys.executable, LIVE_CHILD, driver_name, str(home),
                              json.dumps(options), *args],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert child.stdout.readline() == b"ready\n"
    return child


def test_a_live_process_s_mount_is_not_leaked_until_it_dies(built, driver_name,
                                                            home_and_options):
    child = _live(driver_name, home_and_options, "mount", "leaf")
    try:
        assert check.inspect(built) == []
        assert cli(home_and_options[0], driver_name, "--repair").returncode == 0
        assert "leaf" in built.layers()
    finally:
        child.kill()
        child.wait()
    leaked = kinds(check.inspect(built))
    if driver_name in ("overlay2", "devicemapper"):     # the others mount nothing
        assert [k for k, _ in leaked] == [F.LEAKED_MOUNT]
        check.repair(built)
    assert check.inspect(built) == []


def test_an_apply_in_flight_is_not_half_made_until_its_process_dies(built, driver_name,
                                                                   home_and_options):
    from robustness.layers import make_tar
    before = hashes(built)
    built.create("victim", "child")
    tar = make_tar({f"f{i:03}": bytes([i]) * 65536 for i in range(40)})
    child = _live(driver_name, home_and_options, "apply", "victim", "child")
    try:
        child.stdin.write(tar[:len(tar) // 2])
        child.stdin.flush()
        mark = Path(built.home_run.dir) / "inflight" / "victim"
        for _ in range(600):                # the child is inside apply_diff once it is there
            if mark.exists():
                break
            time.sleep(0.05)
        assert mark.exists()
        assert check.inspect(built) == []     # its process lives: work in progress
    finally:
        child.kill()
        child.wait()
    assert (F.HALF_MADE, "victim") in kinds(check.inspect(built))
    check.repair(built)
    assert check.inspect(built) == []
    assert hashes(built) == before

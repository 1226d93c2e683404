"""What only one host backend can have wrong, found and repaired by `check` (issue 17):
vfs entries that are no layer, overlay2's short links and layout files, btrfs
subvolumes and qgroups. devicemapper's are in tests/devmapper/test_check.py (VM)."""
from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

import graphdrivers
from graphdrivers import check
from graphdrivers.check import findings as F
from graphdrivers.testing.homes import driver_home
from graphdrivers.testing.selection import skip_unless_requested

from check.damage import build, hashes


@contextlib.contextmanager
def loaded(name, tmp_path, options=None, before_load=None):
    if name not in graphdrivers.available():
        pytest.skip(f"{name} is not installed")
    with driver_home(name, tmp_path) as (home, base_options):
        try:
            graphdrivers.registry.driver_class(name).probe(Path(home) / name)
        except graphdrivers.NotSupported as exc:
            skip_unless_requested(name, exc)
        if before_load is not None:
            before_load(Path(home))
        drv = graphdrivers.load(name, home, {**base_options, **(options or {})})
        try:
            build(drv)
            yield drv
        finally:
            drv.cleanup()


def kinds(found):
    return sorted((f.kind, f.subject) for f in found if f.outstanding)


def repaired_clean(drv) -> None:
    report = check.repair(drv)
    assert report and all(f.state == F.REPAIRED for f in report), \
        [(f.kind, f.subject, f.state, f.error) for f in report]
    assert check.inspect(drv) == []
    result = subprocess.run([sys.executable, "-m", "graphdrivers.cli", "--home",
                             str(Path(drv.home).parent), "--driver", drv.name, "check"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr


def test_vfs_entries_that_are_no_layer(tmp_path):
    with loaded("vfs", tmp_path) as drv:
        before = hashes(drv)
        (Path(drv.home) / "dir" / "not a layer").mkdir()
        (Path(drv.home) / "dir" / "stray-file").write_text("x")
        # a file with a layer's name is no layer's data: a new load used to fail on it
        graphdrivers.load("vfs", Path(drv.home).parent).release()
        assert kinds(check.inspect(drv)) == [
            (F.DATA_WITHOUT_LAYER, f"{drv.home}/dir/not a layer"),
            (F.DATA_WITHOUT_LAYER, f"{drv.home}/dir/stray-file")]
        repaired_clean(drv)
        assert hashes(drv) == before


def test_overlay2_parent_link_pointing_at_another_layer(tmp_path):
    with loaded("overlay2", tmp_path) as drv:
        before = hashes(drv)
        links = Path(drv.home) / "l"
        base_link = links / drv.layer_store.get("base").fields["link"]
        os.unlink(base_link)
        os.symlink("../other/diff", base_link)      # base's children now stack other's files
        assert hashes(drv, ["child"]) != {"child": before["child"]}
        assert kinds(check.inspect(drv)) == [(F.BROKEN_PARENT, str(base_link))]
        repaired_clean(drv)
        assert os.readlink(base_link) == "../base/diff"
        assert hashes(drv) == before


def test_overlay2_stray_and_missing_links_and_layout_files(tmp_path):
    with loaded("overlay2", tmp_path) as drv:
        before = hashes(drv)
        links = Path(drv.home) / "l"
        leaf_link = links / drv.layer_store.get("leaf").fields["link"]
        os.unlink(leaf_link)                                   # lost after load
        os.symlink("../child/diff", links / "STRAYLINKSTRAYLINKSTRAYLIN")
        (Path(drv.home) / "child" / "lower").write_text("l/NOSUCHLINK")
        (Path(drv.home) / "leaf" / "link").write_text("WRONG")
        (Path(drv.home) / "stray").write_text("not a layer dir")
        assert kinds(check.inspect(drv)) == sorted([
            (F.BROKEN_PARENT, str(leaf_link)),
            (F.DATA_WITHOUT_LAYER, str(links / "STRAYLINKSTRAYLINKSTRAYLIN")),
            ("bad-layout-file", f"{drv.home}/child/lower"),
            ("bad-layout-file", f"{drv.home}/leaf/link"),
            (F.DATA_WITHOUT_LAYER, f"{drv.home}/stray")])
        repaired_clean(drv)
        assert hashes(drv) == before


def test_overlay2_leaked_layer_mount_from_the_cli(tmp_path):
    """`layer mount` leaves the overlay mounted with no holder once it exits."""
    with loaded("overlay2", tmp_path) as drv:
        before = hashes(drv)
        home = str(Path(drv.home).parent)
        out = subprocess.run([sys.executable, "-m", "graphdrivers.cli", "--home", home,
                              "--driver", "overlay2", "layer", "mount", "leaf"],
                             capture_output=True, text=True, check=True).stdout.strip()
        assert out == f"{drv.home}/leaf/merged"
        assert kinds(check.inspect(drv)) == [(F.LEAKED_MOUNT, out)]
        repaired_clean(drv)
        assert hashes(drv) == before


def _simple_quotas(home: Path) -> None:
    """Simple quotas (btrfs >= 6.7): a subvolume's qgroup keeps the extents it wrote
    while a snapshot shares them, so it outlives the subvolume (as every qgroup did
    before 6.10 with full quotas: moby#29325)."""
    from graphdrivers.btrfs import ioctl
    home.mkdir(parents=True, exist_ok=True)
    fd = os.open(home, os.O_RDONLY | os.O_DIRECTORY)
    try:
        ioctl.quota_ctl(fd, 4)              # BTRFS_QUOTA_CTL_ENABLE_SIMPLE_QUOTA
    except OSError as exc:
        pytest.skip(f"no simple quotas in this kernel: {exc}")
    finally:
        os.close(fd)


def test_btrfs_orphan_qgroup_and_stray_subvolumes(tmp_path):
    from graphdrivers.btrfs import quota, subvol
    with loaded("btrfs", tmp_path, {"btrfs.min_space": "1M"}, _simple_quotas) as drv:
        before = hashes(drv)
        strays = Path(drv.home) / "subvolumes"
        gone = strays / ".gone"                 # no layer name: load leaves these alone
        subvol.create(gone)
        (gone / "data").write_bytes(os.urandom(1 << 20))
        subvol.sync(drv.home)
        gone_id = subvol.subvolume_id(gone)
        subvol.snapshot(gone, strays / ".kept")
        subvol.create(strays / ".kept" / "nested")
        subvol.delete(gone)
        for _ in range(100):                    # until the cleaner dropped it
            subvol.sync(drv.home)
            if gone_id not in subvol.subvolume_ids(drv.home):
                break
        assert gone_id in quota.subvolume_qgroups(drv.home)   # the leak, for real
        assert kinds(check.inspect(drv)) == [
            (F.DATA_WITHOUT_LAYER, str(strays / ".kept")),
            ("orphan-qgroup", f"0/{gone_id}")]
        repaired_clean(drv)
        assert not (strays / ".kept").exists()
        layer_ids = {subvol.subvolume_id(strays / i) for i in drv.layers()}
        assert set(quota.subvolume_qgroups(drv.home)) == layer_ids
        assert hashes(drv) == before


def test_btrfs_layer_quarantined_as_a_subvolume(tmp_path):
    """A damaged btrfs layer moves into the quarantine whole (a rename of its subvolume)."""
    from graphdrivers.btrfs import subvol
    from graphdrivers.check import quarantine
    with loaded("btrfs", tmp_path) as drv:
        before = hashes(drv, ["base", "child", "other", "other2"])
        mark = Path(drv.home_run.dir) / "inflight" / "leaf"   # as a killed apply leaves it
        mark.parent.mkdir(parents=True, exist_ok=True)
        mark.write_text("1-1-1")                    # owned by a process that ended
        assert kinds(check.inspect(drv)) == [(F.HALF_MADE, "leaf")]
        repaired_clean(drv)
        [entry] = quarantine.entries(drv.home)
        assert subvol.is_subvolume(entry / "data")
        assert (entry / "data" / "var/log/leaf").read_bytes() == b"leaf\n"
        assert hashes(drv) == before

"""The btrfs driver's own behaviour: layout, snapshots, nested subvolumes, backends."""
from __future__ import annotations

import os
import subprocess

import pytest

import graphdrivers
from graphdrivers.kernel import statfs as fsinfo
from graphdrivers.btrfs import subvol
from graphdrivers.errors import LayerNotFound, NotSupported


def test_refuses_a_home_that_is_not_on_btrfs(tmp_path):
    magic = fsinfo.fs_magic(tmp_path)
    if magic == fsinfo.BTRFS_MAGIC:
        pytest.skip("the temporary directory itself is on btrfs")
    with pytest.raises(NotSupported) as info:
        graphdrivers.load("btrfs", tmp_path / "home")
    assert "btrfs" in str(info.value)
    assert fsinfo.fs_name(tmp_path) in str(info.value)
    assert not (tmp_path / "home" / "btrfs").exists(), "a refused load left its state dir"


def test_layout_and_snapshot_lineage(drv):
    drv.create("base")
    root = drv.mount("base")
    (root / "f").write_text("base")
    drv.unmount("base")
    drv.create("child", "base")
    layer = drv.home / "subvolumes" / "child"
    assert layer == drv.mount("child")
    drv.unmount("child")
    assert subvol.is_subvolume(drv.home / "subvolumes" / "base")
    assert subvol.is_subvolume(layer)
    assert subvol.info(layer).parent_uuid == subvol.info(drv.home / "subvolumes" / "base").uuid
    assert (layer / "f").read_text() == "base"
    assert drv.parent("child") == "base"
    assert drv.metadata("child")["SubvolumeId"] == str(subvol.subvolume_id(layer))


def test_state_survives_a_reload(drv, home):
    drv.create("a")
    drv.create("b", "a")
    with graphdrivers.load("btrfs", home) as again:
        assert again.layers() == ["a", "b"]
        assert again.parent("b") == "a"
        assert again.parent("a") is None


def test_remove_deletes_nested_subvolumes(drv):
    """Docker's TestBtrfsSubvolDelete, one level deeper."""
    drv.create("ctr", rw=True)
    root = drv.mount("ctr")
    subvol.create(root / "subvoltest")
    (root / "subvoltest" / "data").write_text("x")
    os.mkdir(root / "dir")
    subvol.create(root / "dir" / "inner")
    subvol.create(root / "dir" / "inner" / "innermost")
    drv.unmount("ctr")
    drv.remove("ctr")
    assert not drv.exists("ctr")
    assert not (root / "subvoltest").exists()
    assert not root.exists()
    with pytest.raises(LayerNotFound):
        drv.remove("ctr")


def test_no_btrfs_command_is_run(drv, monkeypatch):
    """Create, snapshot and remove are ioctls: they work with no program reachable."""
    monkeypatch.setenv("PATH", "/nonexistent")
    drv.create("a")
    drv.create("b", "a")
    drv.remove("b")
    drv.remove("a")
    assert drv.layers() == []


@pytest.mark.parametrize("why", ["binding missing", "ioctls forced"])
def test_ioctl_fallback_without_the_binding(drv, monkeypatch, why):
    if why == "binding missing":
        monkeypatch.setattr(subvol, "_binding", None)
    else:
        monkeypatch.setattr(subvol, "FORCE_IOCTL", True)
    assert subvol.backend() == "ioctl"
    drv.create("base")
    (drv.mount("base") / "f").write_text("from base")
    drv.unmount("base")
    drv.create("child", "base")
    root = drv.mount("child")
    assert (root / "f").read_text() == "from base"
    subvol.create(root / "nested")
    drv.unmount("child")
    assert subvol.info(root).parent_uuid == subvol.info(drv.home / "subvolumes" / "base").uuid
    drv.remove("child")
    drv.remove("base")
    assert drv.layers() == []


def test_status_reports_library_filesystem_and_quota(drv):
    status = dict(drv.status())
    assert status["Backing Filesystem"] == "btrfs"
    assert status["Library Version"] == subvol.backend()
    assert status["Quotas"] in ("enabled", "disabled")
    assert "Build Version" in status


def test_failed_snapshot_leaves_nothing(drv):
    with pytest.raises(LayerNotFound):
        drv.create("orphan", "missing-parent")
    assert not drv.exists("orphan")
    assert drv.layer_store.records() == [] and os.listdir(drv.home / "subvolumes") == []


def test_btrfs_cli_agrees_subvolumes_exist(drv):
    """Cross-check with btrfs-progs (read-only use of the CLI, never per operation)."""
    if subprocess.run(["which", "btrfs"], capture_output=True).returncode:
        pytest.skip("btrfs-progs not installed")
    drv.create("x")
    drv.create("y", "x")
    out = subprocess.run(["btrfs", "subvolume", "list", "-o", str(drv.home / "subvolumes")],
                         capture_output=True, text=True)
    names = {line.rsplit("/", 1)[-1] for line in out.stdout.splitlines()}
    assert {"x", "y"} <= names, out.stdout + out.stderr

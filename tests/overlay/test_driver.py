"""overlay2: layout, mounts, restarts, options and depth limits, for both mount methods."""
from __future__ import annotations

import os
import stat

import pytest

from graphdrivers.kernel import mount as _mount
from graphdrivers.errors import InvalidOption, LayerInUse, LayerNotFound
from graphdrivers.overlay.driver import DepthExceeded, Overlay2Driver

from .conftest import open_driver


def test_docker_layout(ovl):
    ovl.create("base")
    ovl.create("child", "base", rw=True)
    home = ovl.home
    short = (home / "base/link").read_text()
    assert len(short) == 26
    assert os.readlink(home / "l" / short) == "../base/diff"
    assert (home / "child/lower").read_text() == f"l/{short}"
    assert (home / "child/work").is_dir() and not (home / "base/work").exists()
    assert (home / "base/committed").exists(), "a parent with children is marked committed"
    assert stat.S_IMODE(os.stat(home / "child/diff").st_mode) == 0o755
    assert ovl.parent("child") == "base" and ovl.parent("base") is None
    assert ovl.metadata("child")["LowerDir"] == str((home / "base/diff").resolve())


def test_base_layer_is_its_diff_dir_without_a_mount(ovl):
    ovl.create("base")
    root = ovl.mount("base")
    try:
        assert root == ovl.home / "base/diff"
        assert not _mount.is_mountpoint(root)
    finally:
        ovl.unmount("base")


def test_merged_exists_only_while_mounted_and_parent_is_read_only(ovl):
    ovl.create("base")
    (ovl.home / "base/diff/f").write_text("base")
    ovl.create("mid", "base")
    ovl.create("top", "mid", rw=True)
    top = ovl.mount("top")
    mid = ovl.mount("mid")
    try:
        assert (top / "f").read_text() == "base"
        assert _mount.is_mountpoint(top)
        (top / "g").write_text("top")
        assert (ovl.home / "top/diff/g").read_text() == "top"
        with pytest.raises(OSError):          # mid has a child: read-only
            (mid / "h").write_text("x")
    finally:
        ovl.unmount("mid")
        ovl.unmount("top")
    assert not (ovl.home / "top/merged").exists()
    assert not (ovl.home / "mid/merged").exists()


def test_status_names_method_and_depth(ovl, method):
    status = dict(ovl.status())
    for key in ("Backing Filesystem", "Supports d_type", "Native Overlay Diff", "Mount Method",
                "Max Depth"):
        assert key in status
    assert status["Backing Filesystem"] == "extfs" or status["Backing Filesystem"]
    if method == "new":
        assert "lowerdir+" in status["Mount Method"] and status["Max Depth"] == "500"
    else:
        assert "mount(2)" in status["Mount Method"] and status["Max Depth"] == "128"


MOUNT_AND_DIE = r"""
import os, sys
from graphdrivers.overlay.driver import Overlay2Driver
Overlay2Driver(sys.argv[1], mount_method=sys.argv[2]).mount(sys.argv[3])
os._exit(0)   # ends without unmounting, as a crashed process does
"""


def mount_in_a_process_that_dies(home, method, layer):
    import subprocess
    import sys
    subprocess.run([sys.executable, "-c", MOUNT_AND_DIE, str(home), method, layer],
                   check=True, timeout=60)
    return home / layer / "merged"


def test_reload_sees_layers_and_shares_a_live_mount(ovl, method):
    ovl.create("base")
    (ovl.home / "base/diff/f").write_text("x")
    ovl.create("c", "base", rw=True)
    root = ovl.mount("c")
    # a second instance (same home) sees everything and shares the live mount
    again = open_driver(ovl.home, method)
    try:
        assert again.layers() == ["base", "c"]
        assert again.parent("c") == "base"
        assert (again.mount("c") / "f").read_text() == "x"
        assert len([m for m in _mount.mountinfo() if m.mountpoint == str(root)]) == 1
        again.unmount("c")
        assert _mount.is_mountpoint(root)   # the first instance still holds it
    finally:
        again.cleanup()
    assert _mount.is_mountpoint(root)
    ovl.unmount("c")
    assert not _mount.is_mountpoint(root)


def test_reload_adopts_the_mount_of_an_ended_process(ovl, method):
    ovl.create("base")
    (ovl.home / "base/diff/f").write_text("x")
    ovl.create("c", "base", rw=True)
    root = mount_in_a_process_that_dies(ovl.home, method, "c")
    assert _mount.is_mountpoint(root)
    assert (ovl.mount("c") / "f").read_text() == "x"   # adopts it: count 1 + this mount
    ovl.unmount("c")
    ovl.unmount("c")
    assert not _mount.is_mountpoint(root)


def test_remove_unmounts_a_stale_mount(ovl, method):
    ovl.create("base")
    ovl.create("c", "base", rw=True)
    root = mount_in_a_process_that_dies(ovl.home, method, "c")
    (root / "f").write_text("x")
    # the first process crashed without unmounting; a new one removes the layer
    fresh = open_driver(ovl.home, method)
    try:
        fresh.remove("c")
        assert not fresh.exists("c")
        assert not _mount.mounts_under(ovl.home / "c") and not (ovl.home / "c").exists()
        assert len(os.listdir(ovl.home / "l")) == 1
    finally:
        fresh.cleanup()


def test_remove_refuses_a_mounted_layer_and_a_parent(ovl):
    ovl.create("base")
    ovl.create("c", "base")
    with pytest.raises(LayerInUse):
        ovl.remove("base")
    ovl.mount("c")
    with pytest.raises(LayerInUse):
        ovl.remove("c")
    ovl.unmount("c")
    ovl.remove("c")
    ovl.remove("base")
    assert ovl.layers() == [] and os.listdir(ovl.home / "l") == []


def test_crash_leftovers_are_cleaned_at_load(ovl, method):
    ovl.create("base")
    # what a kill in the middle of create and of remove leaves behind
    (ovl.home / ".tmp-half-1234").mkdir()
    (ovl.home / ".tmp-half-1234/diff").mkdir()
    os.symlink("../half/diff", ovl.home / "l/DANGLINGDANGLINGDANGLING12")
    (ovl.home / ".trash-old-5678/diff").mkdir(parents=True)
    dead = _dead_pid()
    (ovl.home / f".tmp-gone-{dead}-abcd/diff").mkdir(parents=True)
    live = ovl.home / f".tmp-busy-{os.getpid()}-abcd"     # another live process is building it
    (live / "diff").mkdir(parents=True)
    (ovl.home / "made/diff").mkdir(parents=True)   # renamed into place, not yet recorded
    os.symlink("../made/diff", ovl.home / "l/MADEMADEMADEMADEMADEMADE12")
    (ovl.home / "made/link").write_text("MADEMADEMADEMADEMADEMADE12")
    fresh = open_driver(ovl.home, method)
    try:
        assert fresh.layers() == ["base"]
        assert sorted(os.listdir(ovl.home)) == [live.name, "_layers.json", "_layers.lock",
                                                "base", "l"]
        assert len(os.listdir(ovl.home / "l")) == 1
        fresh.create("half")
    finally:
        fresh.cleanup()


def _dead_pid() -> int:
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
    return pid


def test_layer_named_l_does_not_clash_with_the_link_dir(ovl):
    ovl.create("l")
    ovl.create("m", "l", rw=True)
    (ovl.home / "_l/diff/f").write_text("in l")
    root = ovl.mount("m")
    try:
        assert (root / "f").read_text() == "in l"
    finally:
        ovl.unmount("m")
    assert ovl.layers() == ["l", "m"] and ovl.parent("m") == "l"
    ovl.remove("m")
    ovl.remove("l")
    assert ovl.layers() == []


def test_options(tmp_path):
    with pytest.raises(InvalidOption, match="overlay2.nosuch"):
        open_driver(tmp_path / "a", options={"overlay2.nosuch": "1"})
    with pytest.raises(InvalidOption, match="XFS"):
        open_driver(tmp_path / "b", options={"overlay2.size": "10G"})
    drv = open_driver(tmp_path / "c")
    try:
        with pytest.raises(InvalidOption, match="read-write"):
            drv.create("ro", storage_opt={"size": "1G"})
        with pytest.raises(InvalidOption, match="XFS"):
            drv.create("rw", rw=True, storage_opt={"size": "1G"})
        with pytest.raises(InvalidOption):
            drv.create("x", storage_opt={"overlay2.size": "1G"})
        assert drv.layers() == []
    finally:
        drv.cleanup()


def test_missing_layer(ovl):
    with pytest.raises(LayerNotFound):
        ovl.create("c", "nope")
    assert ovl.layers() == []


def _chain(drv: Overlay2Driver, depth: int) -> list[str]:
    """base + ``depth`` children, each with its own file; returns the ids."""
    ids = ["c0"]
    drv.create("c0")
    (drv.home / "c0/diff/f0").write_text("0")
    for n in range(1, depth + 1):
        drv.create(f"c{n}", f"c{n - 1}")
        (drv.home / f"c{n}/diff/f{n}").write_text(str(n))
        ids.append(f"c{n}")
    return ids


def test_legacy_depth_limit_is_clear_and_leaves_nothing(tmp_path):
    drv = open_driver(tmp_path / "home", "legacy")
    try:
        ids = _chain(drv, 128)
        root = drv.mount(ids[-1])
        try:
            assert all((root / f"f{n}").read_text() == str(n) for n in range(129))
        finally:
            drv.unmount(ids[-1])
        before = sorted(os.listdir(drv.home)), sorted(os.listdir(drv.home / "l"))
        with pytest.raises(DepthExceeded, match="limit of 128"):
            drv.create("deeper", ids[-1])
        assert (sorted(os.listdir(drv.home)), sorted(os.listdir(drv.home / "l"))) == before
    finally:
        drv.cleanup()


def test_500_deep_chain_with_the_new_mount_api(tmp_path):
    from .conftest import new_api_works
    if not new_api_works(tmp_path):
        pytest.skip("this kernel's overlayfs has no lowerdir+ (Linux < 6.8)")
    drv = open_driver(tmp_path / "home", "new")
    try:
        ids = _chain(drv, 500)           # the top layer stacks 500 lowers: the kernel's limit
        root = drv.mount(ids[-1])
        try:
            assert sorted(os.listdir(root)) == sorted(f"f{n}" for n in range(501))
            assert all((root / f"f{n}").read_text() == str(n) for n in range(501))
        finally:
            drv.unmount(ids[-1])
        with pytest.raises(DepthExceeded, match="limit of 500"):
            drv.create("deeper", ids[-1])
        assert not drv.exists("deeper")
        mid = drv.mount(ids[250])        # a committed layer mounts read-only, 251 layers
        try:
            assert len(os.listdir(mid)) == 251
        finally:
            drv.unmount(ids[250])
    finally:
        drv.cleanup()


def test_new_api_forced_where_missing_is_not_supported(tmp_path, monkeypatch):
    from graphdrivers.errors import NotSupported
    from graphdrivers.overlay import mountapi
    monkeypatch.setattr(mountapi, "supports_lowerdir_plus", lambda d: (False, "old kernel"))
    with pytest.raises(NotSupported, match="old kernel"):
        open_driver(tmp_path / "home", "new")
    drv = open_driver(tmp_path / "home2")            # auto: falls back to mount(2)
    try:
        assert "mount(2)" in dict(drv.status())["Mount Method"]
    finally:
        drv.cleanup()


def test_env_switches(tmp_path, monkeypatch):
    monkeypatch.setenv("GRAPHDRIVERS_OVERLAY2_MOUNT", "legacy")
    monkeypatch.setenv("GRAPHDRIVERS_OVERLAY2_NAIVE_DIFF", "1")
    drv = open_driver(tmp_path / "home")
    try:
        status = dict(drv.status())
        assert "mount(2)" in status["Mount Method"]
        assert status["Native Overlay Diff"] == "false"
        assert "test switch" in status["Native Overlay Diff Disabled Because"]
    finally:
        drv.cleanup()


def test_probes_are_remembered_for_a_home_and_run_again_for_a_new_one(tmp_path):
    import json
    from graphdrivers.store.holds import HomeRun
    home = tmp_path / "home"
    home.mkdir()
    # what a removed home with this directory's inode might have left this boot
    run = HomeRun(home)
    run.dir.mkdir(parents=True, exist_ok=True)
    stale = {"new_api": False, "api_reason": "stale", "native_diff": False,
             "naive_reason": "stale", "metacopy": False}
    (run.dir / "probe-overlay2-auto.json").write_text(json.dumps(stale))
    drv = open_driver(home)
    try:
        drv.create("a")                 # the home has records now
        assert "stale" not in " ".join(v for _, v in drv.status())
    finally:
        drv.cleanup()
    (run.dir / "probe-overlay2-auto.json").write_text(json.dumps(stale))
    drv = open_driver(home)             # an existing home believes its run directory
    try:
        assert dict(drv.status())["Native Overlay Diff Disabled Because"] == "stale"
    finally:
        drv.cleanup()

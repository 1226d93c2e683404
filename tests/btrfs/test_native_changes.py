"""The native (generation-based) change finder gives exactly what the tree walk gives.

Every case is checked three ways: the change list against compare_trees, and
diff_size and the diff tar against a second driver on the same home forced to
the naive path with ``btrfs.native_diff=false``.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import stat
import tarfile
import time
from pathlib import Path

import pytest

import graphdrivers
from graphdrivers.btrfs import changes as native
from graphdrivers.changes import changes_size, compare_trees

from graphdrivers.testing.conformance.helpers import CAPABILITY, TarBuilder, build_rich_tree, content, write
from graphdrivers.testing.conformance.test_diff import _change_child, _make_parent


def _members(stream) -> list[tuple]:
    """A tar as comparable tuples (whiteouts carry "now" as mtime: ignored)."""
    out = []
    try:
        with tarfile.open(fileobj=stream, mode="r|") as tar:
            for m in tar:
                data = tar.extractfile(m).read() if m.isfile() else b""
                whiteout = os.path.basename(m.name).startswith(".wh.")
                pax = {k: v for k, v in m.pax_headers.items()
                       if k not in ("mtime", "atime", "ctime")}
                out.append((m.name, m.type, m.mode, m.uid, m.gid, m.size,
                            None if whiteout else int(m.mtime), m.linkname, m.devmajor,
                            m.devminor, tuple(sorted(pax.items())),
                            hashlib.sha256(data).hexdigest()))
    finally:
        stream.close()
    return out


def assert_agree(drv, layer: str = "child", parent: str = "base") -> list:
    """Native == naive for ``layer`` against its parent; returns the changes."""
    lroot = drv.home / "subvolumes" / layer
    broot = drv.home / "subvolumes" / parent
    found = native.changes(lroot, broot)
    assert found is not None, "the native path declined a direct snapshot"
    walked = compare_trees(lroot, broot)
    assert found == walked
    assert drv.changes(layer, parent) == walked
    with graphdrivers.load("btrfs", drv.home.parent, {"btrfs.native_diff": "false"}) as naive:
        assert naive.changes(layer, parent) == walked
        assert drv.diff_size(layer, parent) == naive.diff_size(layer, parent) \
            == changes_size(lroot, walked)
        assert _members(drv.diff(layer, parent)) == _members(naive.diff(layer, parent))
    return walked


def _child(drv, base="base", layer="child"):
    drv.create(layer, base)
    return drv.home / "subvolumes" / layer


def test_conformance_every_kind_of_change(drv):
    _make_parent(drv)
    _change_child(_child(drv))
    assert assert_agree(drv)


def test_unchanged_snapshot(drv):
    _make_parent(drv)
    _child(drv)
    assert assert_agree(drv) == []


def test_rich_tree_metadata_changes(drv):
    drv.create("base")
    base = drv.home / "subvolumes" / "base"
    build_rich_tree(base)
    root = _child(drv)
    os.chmod(root / "etc/hosts", 0o600)                     # mode
    os.chown(root / "etc/shadow", 0, 0)                     # group
    os.utime(root / "empty", (1, 1))                        # mtime only
    os.setxattr(root / "big.bin", "security.capability", CAPABILITY)   # capability only
    os.removexattr(root / "usr/bin/ping", "security.capability")
    os.setxattr(root / "etc/hosts", "user.comment", b"changed")        # user xattr (not compared)
    os.unlink(root / "usr/bin/py")                          # symlink retargeted
    os.symlink("python3", root / "usr/bin/py")
    os.link(root / "usr/bin/python3.11", root / "tmp/another-name")    # new hard link
    os.unlink(root / "tmp/fifo")                            # fifo -> device
    os.mknod(root / "tmp/fifo", 0o600 | stat.S_IFCHR, os.makedev(1, 5))
    os.chmod(root / "tmp", 0o777)                           # sticky bit dropped on a dir
    with open(root / "long" / ("d" * 30) / ("d" * 30) / ("d" * 30) / ("d" * 30) / ("f" * 60), "a") as f:
        f.write("deeper")
    assert assert_agree(drv)


def test_renames_links_and_replacements(drv):
    drv.create("base")
    base = drv.home / "subvolumes" / "base"
    for i in range(30):
        write(base, f"dir{i % 3}/sub/f{i}", content(i, 100 + i))
    write(base, "keep/x", "x")
    write(base, "victim", "old")
    root = _child(drv)
    os.rename(root / "dir0", root / "moved")                # directory renamed
    os.rename(root / "dir1/sub/f1", root / "dir2/f1")       # file moved across dirs
    os.rename(root / "keep/x", root / "victim")             # rename over an existing file
    os.link(root / "dir2/sub/f2", root / "keep/link-to-f2")  # link to an untouched file
    os.unlink(root / "dir2/sub/f5")                         # delete and recreate identically
    write(root, "dir2/sub/f5", content(5, 105))
    st = os.stat(base / "dir2/sub/f5")
    os.utime(root / "dir2/sub/f5", ns=(st.st_atime_ns, st.st_mtime_ns))
    shutil.rmtree(root / "dir1")                            # then a file where a dir was
    write(root, "dir1", "now a file")
    assert assert_agree(drv)


def test_changes_from_applied_tars_with_whiteouts(drv):
    _make_parent(drv)
    drv.create("child", "base")
    tar = (TarBuilder().file(".wh.a").file("b/.wh.sub").dir("g", 0o750)
           .file("g/.wh..wh..opq").file("g/new", "only me").file("x/y/z", "new")
           .dir("c").file("c/in", "c becomes a dir").file("d", "d becomes a file").stream())
    drv.apply_diff("child", "base", tar)
    assert assert_agree(drv)


def test_parent_changed_after_the_snapshot(drv):
    _make_parent(drv)
    root = _child(drv)
    write(root, "child-only", "c")
    base = drv.home / "subvolumes" / "base"
    write(base, "parent-late", "written into the parent after the snapshot")
    (base / "f").unlink()
    write(base, "e", "the parent changed e too")
    assert assert_agree(drv)


def test_many_files_one_change_touches_little(drv, monkeypatch):
    """The native path opens only the changed directory and its ancestors."""
    drv.create("base")
    base = drv.home / "subvolumes" / "base"
    for d in range(20):
        for f in range(50):
            write(base, f"d{d}/f{f}", "x")
    root = _child(drv)
    write(root, "d7/f3", "changed")
    opened = []
    real_listdir = os.listdir
    monkeypatch.setattr(native.os, "listdir", lambda p: opened.append(p) or real_listdir(p))
    assert native.changes(root, base) == compare_trees(root, base)
    assert len(opened) <= 2, opened     # not 21 directories


@pytest.mark.parametrize("readers", ["container", "container and naive diff"])
def test_reads_are_not_changes(drv, monkeypatch, readers):
    """Reading every directory and file (relatime rewrites inode items) adds no work."""
    drv.create("base")
    base = drv.home / "subvolumes" / "base"
    for d in range(20):
        for f in range(20):
            write(base, f"d{d}/f{f}", "x")
    if readers != "container":
        time.sleep(1.1)     # an image layer is older than its containers' snapshots
    root = _child(drv)
    for tree in (root, base) if readers != "container" else (root,):
        for dirpath, _dirs, files in os.walk(tree):
            for name in files:
                (Path(dirpath) / name).read_bytes()
    write(root, "d7/f3", "changed")
    opened = []
    real_listdir = os.listdir
    monkeypatch.setattr(native.os, "listdir", lambda p: opened.append(p) or real_listdir(p))
    assert native.changes(root, base) == compare_trees(root, base)
    assert len(opened) <= 2, opened


def test_wide_changes_and_reads(drv):
    """More than 64 changed inodes: the other tree's items come from one scan."""
    drv.create("base")
    base = drv.home / "subvolumes" / "base"
    for i in range(300):
        write(base, f"d{i % 7}/f{i}", content(i, i % 50))
    root = _child(drv)
    for i in range(0, 300, 3):
        write(root, f"d{i % 7}/f{i}", content(i + 1, i % 50))   # rewritten
    for i in range(1, 300, 3):
        (root / f"d{i % 7}/f{i}").read_bytes()                    # only read
    for i in range(2, 300, 30):
        (root / f"d{i % 7}/f{i}").unlink()
    os.chmod(root / "d3", 0o700)
    assert len(assert_agree(drv)) > 100


def test_declines_what_it_cannot_answer(drv):
    _make_parent(drv)
    drv.create("child", "base")
    drv.create("grandchild", "child")
    sub = drv.home / "subvolumes"
    write(sub / "grandchild", "gc", "x")
    # not the snapshot source: walk
    assert native.changes(sub / "grandchild", sub / "base") is None
    assert drv.changes("grandchild", "base") == compare_trees(sub / "grandchild", sub / "base")
    # nested subvolume inside the layer: walk
    from graphdrivers.btrfs import subvol
    subvol.create(sub / "child" / "nested")
    write(sub / "child" / "nested", "inside", "x")
    assert native.changes(sub / "child", sub / "base") is None
    assert drv.changes("child") == compare_trees(sub / "child", sub / "base")


def test_native_switch_off_uses_the_walk(home, monkeypatch):
    with graphdrivers.load("btrfs", home, {"btrfs.native_diff": "false"}) as drv:
        _make_parent(drv)
        drv.create("child", "base")
        monkeypatch.setattr(native, "changes", lambda *a: pytest.fail("native path used"))
        drv.changes("child")
        assert dict(drv.status())["Diff"].startswith("naive")


def test_native_path_is_the_one_taken(drv, monkeypatch):
    import graphdrivers.naivediff as naivediff
    _make_parent(drv)
    _change_child(_child(drv))
    expected = compare_trees(drv.home / "subvolumes" / "child", drv.home / "subvolumes" / "base")
    monkeypatch.setattr(naivediff, "compare_trees", lambda *a: pytest.fail("tree walk used"))
    assert drv.changes("child") == expected
    drv.diff("child").close()
    drv.diff_size("child")

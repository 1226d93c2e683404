"""The vfs driver: layout, copies, refcounts, errors, crash recovery, naive diffs."""
from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time

import pytest

import graphdrivers
from graphdrivers.changes import compare_trees
from graphdrivers.errors import (InvalidLayerId, InvalidOption, LayerExists, LayerInUse,
                                 LayerNotFound)
from test_archive_trees import assert_same, build_tree, snapshot


@pytest.fixture
def vfs(tmp_path):
    driver = graphdrivers.load("vfs", tmp_path / "home")
    yield driver
    driver.cleanup()


def _fill(driver, id, build):
    root = driver.mount(id)
    try:
        build(root)
    finally:
        driver.unmount(id)


def test_layout_and_metadata(vfs, tmp_path):
    vfs.create("base")
    root = vfs.mount("base")
    assert root == tmp_path / "home/vfs/dir/base"
    st = os.stat(root)
    assert (st.st_mode & 0o7777, st.st_uid, st.st_gid) == (0o755, 0, 0)
    assert vfs.metadata("base") == {"Dir": str(root)}
    assert vfs.exists("base") and not vfs.exists("nope") and not vfs.exists("../x")
    assert vfs.layers() == ["base"] and vfs.parent("base") is None
    assert dict(vfs.status())["Backing Filesystem"]
    vfs.unmount("base")


def test_driver_options_refused(tmp_path):
    with pytest.raises(InvalidOption, match="accepted: size$"):   # Docker's driver-wide size
        graphdrivers.load("vfs", tmp_path / "h", {"vfs.anything": "1"})


def test_child_is_an_exact_copy(vfs):
    vfs.create("base")
    _fill(vfs, "base", build_tree)
    vfs.create("child", "base")
    parent_root, child_root = vfs.mount("base"), vfs.mount("child")
    assert_same(snapshot(parent_root), snapshot(child_root))
    # nanosecond mtimes and capabilities are kept, so nothing looks changed
    assert compare_trees(child_root, parent_root) == []
    assert vfs.changes("child") == [] and vfs.diff_size("child") == 0
    assert os.stat(child_root / "dir/small").st_ino != os.stat(parent_root / "dir/small").st_ino
    assert vfs.parent("child") == "base" and vfs.layers() == ["base", "child"]


def test_create_errors_leave_nothing(vfs, tmp_path):
    vfs.create("a")
    with pytest.raises(LayerExists):
        vfs.create("a")
    with pytest.raises(LayerNotFound):
        vfs.create("b", "missing")
    with pytest.raises(InvalidLayerId):
        vfs.create("../b")
    with pytest.raises(InvalidLayerId):
        vfs.create("b", "bad/parent")
    with pytest.raises(InvalidOption, match="read-only"):
        vfs.create("b", storage_opt={"size": "1G"})
    with pytest.raises(InvalidOption, match="unknown"):
        vfs.create("b", rw=True, storage_opt={"color": "blue"})
    with pytest.raises(InvalidOption, match="size"):
        vfs.create("b", rw=True, storage_opt={"size": "lots"})
    if dict(vfs.status())["Backing Filesystem"] != "xfs":
        with pytest.raises(InvalidOption, match="XFS|quota"):
            vfs.create("b", rw=True, storage_opt={"size": "1G"})
    assert vfs.layers() == ["a"]
    assert os.listdir(tmp_path / "home/vfs/tmp") == []
    assert sorted(os.listdir(tmp_path / "home/vfs/dir")) == ["a"]
    assert [r.id for r in vfs.layer_store.records()] == ["a"]


def test_missing_layers_and_bad_ids(vfs):
    for call in (lambda: vfs.remove("x"), lambda: vfs.mount("x"), lambda: vfs.diff("x"),
                 lambda: vfs.changes("x"), lambda: vfs.diff_size("x"),
                 lambda: vfs.metadata("x"), lambda: vfs.parent("x"),
                 lambda: vfs.apply_diff("x", None, io.BytesIO(b""))):
        with pytest.raises(LayerNotFound):
            call()
    for call in (lambda: vfs.remove("-x"), lambda: vfs.mount(""), lambda: vfs.diff("a b"),
                 lambda: vfs.changes("x" * 129), lambda: vfs.unmount("/"),
                 lambda: vfs.metadata(".."), lambda: vfs.apply_diff("a/b", None, io.BytesIO())):
        with pytest.raises(InvalidLayerId):
            call()


def test_mount_refcount_and_remove(vfs):
    vfs.create("a")
    vfs.mount("a")
    vfs.mount("a")
    with pytest.raises(LayerInUse):
        vfs.remove("a")
    vfs.unmount("a")
    with pytest.raises(LayerInUse):
        vfs.remove("a")
    vfs.unmount("a")
    vfs.remove("a")
    assert not vfs.exists("a") and vfs.layers() == []


def test_remove_parent_refused_while_children_exist(vfs):
    vfs.create("p")
    _fill(vfs, "p", lambda r: (r / "f").write_bytes(b"data"))
    vfs.create("c", "p")
    vfs.create("c2", "p")
    with pytest.raises(LayerInUse, match="c, c2"):
        vfs.remove("p")             # the children's diffs compare with it
    assert vfs.changes("c") == []
    vfs.remove("c")
    vfs.remove("c2")
    vfs.remove("p")
    assert vfs.layers() == []


def test_reload_in_new_process(vfs, tmp_path):
    vfs.create("a")
    vfs.create("b", "a", rw=True)
    code = ("import graphdrivers, json, sys; d = graphdrivers.load('vfs', sys.argv[1]); "
            "print(json.dumps([d.layers(), d.parent('b'), d.parent('a')]))")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "home")],
                         check=True, capture_output=True, text=True).stdout
    assert json.loads(out) == [["a", "b"], "a", None]


def test_recovers_from_crashed_create(tmp_path):
    driver = graphdrivers.load("vfs", tmp_path / "home")
    driver.create("a")
    state = tmp_path / "home/vfs"
    # what a process killed mid-create/remove leaves: staging dirs of a dead pid
    proc = subprocess.Popen(["true"])
    proc.wait()
    dead = proc.pid
    (state / f"tmp/b-new-abc.{dead}.tmp/etc").mkdir(parents=True)
    (state / f"tmp/a-removed-abc.{dead}.tmp").mkdir()
    (state / "._layers.json.tmp-123-1").write_text("{")     # a records write cut short
    (state / "dir/b").mkdir()           # data made, its record not yet written
    driver = graphdrivers.load("vfs", tmp_path / "home")
    assert driver.layers() == ["a"]
    assert os.listdir(state / "tmp") == []
    assert sorted(os.listdir(state / "dir")) == ["a"]
    assert not (state / "._layers.json.tmp-123-1").exists()
    driver.create("b", "a")
    assert driver.layers() == ["a", "b"]


def test_killed_inside_apply_diff(vfs, tmp_path):
    vfs.create("base")
    _fill(vfs, "base", build_tree)
    tar = vfs.diff("base").read()
    vfs.create("victim", "base")
    code = ("import graphdrivers, sys; d = graphdrivers.load('vfs', sys.argv[1]); "
            "d.apply_diff('victim', None, sys.stdin.buffer)")
    proc = subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "home")],
                            stdin=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        proc.stdin.write(tar[:len(tar) // 2])
        proc.stdin.flush()
        time.sleep(0.5)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        proc.stdin.close()
        proc.stderr.close()
    fresh = graphdrivers.load("vfs", tmp_path / "home")
    assert fresh.layers() == ["base", "victim"]
    fresh.remove("victim")
    fresh.create("victim", "base")
    assert fresh.apply_diff("victim", None, io.BytesIO(tar)) > 0
    assert_same(snapshot(fresh.mount("base")), snapshot(fresh.mount("victim")))


def test_diff_apply_round_trip(vfs):
    vfs.create("base")
    _fill(vfs, "base", build_tree)
    vfs.create("top", "base")

    def change(root):
        (root / "dir/small").write_bytes(b"changed\n")    # hard links get it too
        (root / "added").write_bytes(b"a" * 1000)
        os.unlink(root / "fifo")
        import shutil
        shutil.rmtree(root / "private")
        os.chmod(root / "suid", 0o755)
    _fill(vfs, "top", change)
    kinds = {(c.path, c.kind) for c in vfs.changes("top")}
    assert ("/added", graphdrivers.ChangeKind.ADD) in kinds
    assert ("/private", graphdrivers.ChangeKind.DELETE) in kinds
    size = vfs.diff_size("top")
    vfs.create("copy", "base")
    with vfs.diff("top") as stream:
        applied = vfs.apply_diff("copy", None, stream)
    assert applied == size == len(b"changed\n") + 1000 + len(b"#!/bin/sh\n")
    assert_same(snapshot(vfs.mount("top")), snapshot(vfs.mount("copy")))
    assert vfs.changes("copy") == vfs.changes("top")
    # the whole-layer diff of a base layer (no parent) carries everything
    vfs.create("flat")
    with vfs.diff("top", None) as stream:
        pass
    with vfs.diff("base") as stream:
        vfs.apply_diff("flat", None, stream)
    assert_same(snapshot(vfs.mount("base")), snapshot(vfs.mount("flat")))


def test_diff_stream_holds_the_mount_until_closed(vfs):
    vfs.create("a")
    stream = vfs.diff("a")
    with pytest.raises(LayerInUse):
        vfs.remove("a")
    stream.close()
    vfs.remove("a")

"""diff / apply_diff / changes / diff_size (Docker graphtest's DiffApply and Changes, and more)."""
from __future__ import annotations

import errno
import io
import os
import shutil

import pytest

from graphdrivers import Change, ChangeKind

from .helpers import (CAPABILITY, IGNORED_AT_ROOT, TarBuilder, assert_listable, assert_same_tree,
                      build_rich_tree, content, hardlink_groups, mounted, read, snapshot,
                      tar_names, write, xattrs_supported)

A, C, D = ChangeKind.ADD, ChangeKind.MODIFY, ChangeKind.DELETE


def _drain(stream) -> bytes:
    try:
        return stream.read()
    finally:
        stream.close()


def _make_parent(driver, layer="base"):
    """A parent layer with files, dirs and links for the child-diff tests."""
    driver.create(layer)
    with mounted(driver, layer) as root:
        write(root, "a", "file a")
        write(root, "b/1", "b one")
        write(root, "b/2", "b two")
        write(root, "b/sub/3", "b three")
        write(root, "c", "file c becomes a dir")
        write(root, "d/x", "d is a dir that becomes a file")
        write(root, "e", "e is modified")
        write(root, "f", "f is never touched")
        write(root, "g/1", "g one")
        write(root, "g/2", "g two")
        write(root, "h/deep/keep", "untouched dir")
        os.symlink("f", root / "link")
    return layer


def _change_child(root):
    """Every kind of change a layer can carry relative to _make_parent."""
    (root / "a").unlink()                              # file deleted
    shutil.rmtree(root / "b")                          # directory deleted
    (root / "c").unlink()                              # file replaced by a dir
    write(root, "c/inside", "now a dir")
    shutil.rmtree(root / "d")                          # dir replaced by a file
    write(root, "d", "now a file")
    write(root, "e", "e is modified, longer than before")
    shutil.rmtree(root / "g")                          # dir deleted and re-created (opaque)
    write(root, "g/3", "g three only")
    write(root, "new/dir/file", "added")               # added tree
    os.symlink("e", root / "newlink")
    os.link(root / "new/dir/file", root / "new/hardlink")
    os.unlink(root / "link")                           # symlink retargeted
    os.symlink("e", root / "link")


def test_base_diff_apply_round_trip(driver):
    driver.create("base")
    with mounted(driver, "base") as root:
        build_rich_tree(root, xattrs=xattrs_supported(root) is None)
        expected, links = snapshot(root), hardlink_groups(root)
    size = driver.diff_size("base")
    tar = _drain(driver.diff("base"))
    driver.create("copy")
    applied = driver.apply_diff("copy", None, io.BytesIO(tar))
    with mounted(driver, "copy") as root:
        assert_same_tree(expected, snapshot(root))
        assert hardlink_groups(root) == links
    regular = sum(e.size for rel, e in expected.items() if e.kind == "file"
                  and rel not in {"usr/bin/python3", "usr/bin/python"})
    assert applied == regular
    assert size == applied      # regular files only, so the two agree (DESIGN.md)


def test_child_diff_apply_round_trip(driver):
    parent = _make_parent(driver)
    driver.create("child", parent)
    with mounted(driver, "child") as root:
        _change_child(root)
        expected, links = snapshot(root), hardlink_groups(root)
    tar = _drain(driver.diff("child"))
    driver.create("copy", parent)
    driver.apply_diff("copy", parent, io.BytesIO(tar))
    with mounted(driver, "copy") as root:
        assert_same_tree(expected, snapshot(root))
        assert hardlink_groups(root) == links
    # the parent is untouched by all of it
    with mounted(driver, parent) as root:
        assert read(root, "a") == b"file a" and read(root, "b/sub/3") == b"b three"


def test_child_diff_carries_whiteouts(driver):
    parent = _make_parent(driver)
    driver.create("child", parent)
    with mounted(driver, "child") as root:
        _change_child(root)
    names = {n.rstrip("/") for n in tar_names(driver.diff("child"))}
    names = {n[2:] if n.startswith("./") else n for n in names}
    assert ".wh.a" in names
    assert ".wh.b" in names
    assert not any(n.startswith("b/") for n in names), "a deleted dir is one whiteout"
    assert "f" not in names and "h/deep/keep" not in names, "unchanged files are not in the diff"
    assert "g/3" in names and "new/dir/file" in names and "e" in names
    # g's old children are hidden either by an opaque marker or by one whiteout each
    assert "g/.wh..wh..opq" in names or {"g/.wh.1", "g/.wh.2"} <= names


def test_apply_diff_returns_diff_size(driver):
    """Docker's DiffApply: files only, so both sides count the same bytes."""
    driver.create("base")
    with mounted(driver, "base") as root:
        for i in range(10):
            write(root, f"directory-0/file-{i}", content(3 + i, 64), 0o755)
        write(root, "file-remove.txt", "This file should get removed in upper!")
        (root / "var/lib").mkdir(parents=True)
    driver.create("upper", "base")
    with mounted(driver, "upper") as root:
        for i in range(10):
            write(root, f"directory-0/file-{i}", content(60 + i, 64), 0o755)
        (root / "file-remove.txt").unlink()
        shutil.rmtree(root / "var/lib")
    size = driver.diff_size("upper")
    assert size == 640
    driver.create("diff", "base")
    applied = driver.apply_diff("diff", "base", driver.diff("upper", "base"))
    assert applied == size
    with mounted(driver, "diff") as root:
        for i in range(10):
            assert read(root, f"directory-0/file-{i}") == content(60 + i, 64)
        assert not (root / "file-remove.txt").exists()
        assert not (root / "var/lib").exists()
        assert (root / "var").is_dir()


def test_diff_size_rules(driver):
    driver.create("base")
    with mounted(driver, "base") as root:
        write(root, "deleted", content(1, 1000))
        write(root, "modified", content(2, 50))
        write(root, "same", content(3, 777))
    driver.create("child", "base")
    with mounted(driver, "child") as root:
        write(root, "added", content(4, 100))
        os.link(root / "added", root / "added-link")      # counted once
        (root / "deleted").unlink()                       # counts 0
        write(root, "modified", content(5, 300))          # full new size
        write(root, "newdir/inner", content(6, 7))        # dirs count 0
    assert driver.diff_size("child") == 100 + 300 + 7
    assert driver.diff_size("base") == 1000 + 50 + 777


def _changes(driver, layer, parent=None):
    result = driver.changes(layer, parent)
    assert all(isinstance(c, Change) for c in result)
    assert [c.path for c in result] == sorted(c.path for c in result), "changes sorted by path"
    assert len({c.path for c in result}) == len(result), "each path once"
    # a filesystem's own lost+found (ext4 on devicemapper) is not the layer's business
    return {c.path: c.kind for c in result
            if c.path.lstrip("/").split("/")[0] not in IGNORED_AT_ROOT}


def test_changes_every_kind(driver):
    parent = _make_parent(driver)
    driver.create("child", parent)
    with mounted(driver, "child") as root:
        _change_child(root)
    got = _changes(driver, "child")
    assert got["/a"] == D
    assert got["/b"] == D
    assert not [p for p in got if p.startswith("/b/")], "a deleted directory is one DELETE"
    assert got["/e"] == C
    assert got["/new"] == A and got["/new/dir"] == A and got["/new/dir/file"] == A
    assert got["/new/hardlink"] == A and got["/newlink"] == A
    assert got["/link"] == C
    assert got["/c"] in (C, A) and got["/c/inside"] == A
    assert got["/d"] in (C, A)
    assert got.get("/d/x", D) == D
    assert got["/g/3"] == A
    if "/g/1" in got or "/g/2" in got:
        assert got["/g/1"] == D and got["/g/2"] == D
    else:
        assert got["/g"] in (C, A)
    assert "/f" not in got and "/h/deep/keep" not in got and "/h" not in got
    assert set(got.values()) == {A, C, D}


def test_changes_of_base_layer_are_all_adds(driver):
    driver.create("base")
    with mounted(driver, "base") as root:
        write(root, "x/y/z", "z")
        write(root, "top", "t")
    assert _changes(driver, "base") == {"/top": A, "/x": A, "/x/y": A, "/x/y/z": A}


def test_changes_against_explicit_parent(driver):
    driver.create("one")
    with mounted(driver, "one") as root:
        write(root, "from-one", "1")
    driver.create("two", "one")
    with mounted(driver, "two") as root:
        write(root, "from-two", "2")
    driver.create("three", "two")
    with mounted(driver, "three") as root:
        write(root, "from-three", "3")
    assert _changes(driver, "three", "one") == {"/from-two": A, "/from-three": A}
    assert _changes(driver, "three") == {"/from-three": A}
    assert driver.diff_size("three", "one") == 2


def test_unchanged_snapshot_has_no_changes(driver):
    parent = _make_parent(driver)
    driver.create("child", parent)
    assert driver.changes("child") == []
    assert driver.diff_size("child") == 0
    assert [n for n in tar_names(driver.diff("child")) if n not in (".", "./")] == []


def test_whiteouts_and_opaque_through_apply_then_changes(driver):
    parent = _make_parent(driver)
    driver.create("child", parent)
    with mounted(driver, "child") as root:
        _change_child(root)
    original = _changes(driver, "child")
    driver.create("copy", parent)
    driver.apply_diff("copy", parent, driver.diff("child"))
    assert _changes(driver, "copy") == original
    with mounted(driver, "copy") as root:
        assert_listable(root)
        assert sorted(os.listdir(root / "g")) == ["3"]
        assert not (root / "a").exists() and not (root / "b").exists()
        assert (root / "c").is_dir() and (root / "d").is_file()


def test_apply_hand_built_whiteouts_and_opaque(driver):
    parent = _make_parent(driver)
    tar = (TarBuilder()
           .file(".wh.a")                                  # delete file a
           .file("b/.wh.sub")                              # delete dir b/sub
           .dir("g", 0o750)
           .file("g/.wh..wh..opq")                         # hide all of g's old entries
           .file("g/new", "only me")
           .file("h/.wh..wh..opq")                         # opaque on an implied dir
           .file("h/fresh", "fresh")
           .file("extra/implied/file", "parents implied")  # parents without entries: 0755
           .stream())
    driver.create("child", parent)
    applied = driver.apply_diff("child", parent, tar)
    assert applied == len("only me") + len("fresh") + len("parents implied")
    with mounted(driver, "child") as root:
        assert_listable(root)
        assert not (root / "a").exists()
        assert sorted(os.listdir(root / "b")) == ["1", "2"]
        assert sorted(os.listdir(root / "g")) == ["new"]
        assert (os.stat(root / "g").st_mode & 0o7777) == 0o750
        assert sorted(os.listdir(root / "h")) == ["fresh"]
        assert (os.stat(root / "extra/implied").st_mode & 0o7777) == 0o755
        assert not [n for n in _walk_names(root) if n.startswith(".wh.")], "markers not kept"
        assert read(root, "f") == b"f is never touched"
    with mounted(driver, parent) as root:
        assert sorted(os.listdir(root / "g")) == ["1", "2"]
        assert (root / "a").exists() and (root / "b/sub/3").exists()


def _walk_names(root):
    for _dirpath, dirnames, filenames in os.walk(root):
        yield from dirnames
        yield from filenames


def test_file_replaced_by_dir_and_back_via_tar(driver):
    parent = _make_parent(driver)
    tar = (TarBuilder()
           .dir("a")                  # file -> dir
           .file("a/in", "in a")
           .file("d", "d is a file")  # dir -> file
           .stream())
    driver.create("child", parent)
    driver.apply_diff("child", parent, tar)
    with mounted(driver, "child") as root:
        assert read(root, "a/in") == b"in a"
        assert read(root, "d") == b"d is a file"


def test_diff_stream_is_a_valid_tar_with_long_names(driver):
    driver.create("base")
    with mounted(driver, "base") as root:
        build_rich_tree(root, xattrs=False)
    names = {n.rstrip("/").removeprefix("./") for n in tar_names(driver.diff("base"))}
    assert "long/" + "/".join(["d" * 30] * 4) + "/" + "f" * 60 in names
    assert {"usr/bin/python", "null", "tmp/fifo", "hosts-link"} <= names


@pytest.mark.parametrize("size", [0, 1, 511, 512, 513, 1 << 20])
def test_apply_file_sizes_at_block_edges(driver, size):
    data = content(size, size)
    driver.create("l")
    assert driver.apply_diff("l", None, TarBuilder().file("f", data).stream()) == size
    with mounted(driver, "l") as root:
        assert read(root, "f") == data


def test_diff_against_grandparent_round_trip(driver):
    driver.create("one")
    with mounted(driver, "one") as root:
        write(root, "keep", "one")
        write(root, "gone-in-two", "one")
        write(root, "dir/a", "one")
    driver.create("two", "one")
    with mounted(driver, "two") as root:
        (root / "gone-in-two").unlink()
        write(root, "dir/b", "two")
    driver.create("three", "two")
    with mounted(driver, "three") as root:
        write(root, "dir/a", "three rewrote a")
        write(root, "from-three", "three")
        expected = snapshot(root)
    driver.create("copy", "one")
    driver.apply_diff("copy", "one", driver.diff("three", "one"))
    with mounted(driver, "copy") as root:
        assert_same_tree(expected, snapshot(root))


def test_metadata_only_changes(driver):
    driver.create("base")
    with mounted(driver, "base") as root:
        for name in ("mode", "owner", "cap", "touched", "dir/inner"):
            write(root, name, name, 0o644, mtime=1_500_000_000)
        os.utime(root / "dir", (1_500_000_000, 1_500_000_000))
    driver.create("child", "base")
    with mounted(driver, "child") as root:
        os.chmod(root / "mode", 0o4711)
        os.chown(root / "owner", 123, 456)
        os.utime(root / "touched", (1_600_000_000, 1_600_000_000))
        os.chmod(root / "dir", 0o700)
        try:
            os.setxattr(root / "cap", "security.capability", CAPABILITY)
        except OSError as exc:   # the only xattr Docker's naive diff compares
            if exc.errno not in (errno.ENOTSUP, errno.EOPNOTSUPP):
                raise
        expected = snapshot(root)
    got = _changes(driver, "child")
    for path in ("/mode", "/owner", "/touched", "/dir"):
        assert got.get(path) == C, f"{path}: {got.get(path)}"
    if expected["cap"].xattrs:
        assert got.get("/cap") == C
    assert "/dir/inner" not in got
    driver.create("copy", "base")
    driver.apply_diff("copy", "base", driver.diff("child"))
    with mounted(driver, "copy") as root:
        assert_same_tree(expected, snapshot(root))


def test_same_size_rewrite_in_the_same_second(driver):
    """containerd's LayerFileupdate (moby#21555): a content change that keeps size and second."""
    driver.create("base")
    with mounted(driver, "base") as root:
        write(root, "f", "aaaa")
    for i in range(3):
        driver.create(f"c{i}", "base")
        with mounted(driver, f"c{i}") as root:
            write(root, "f", f"b{i}b{i}")
        assert _changes(driver, f"c{i}") == {"/f": C}
        driver.create(f"copy{i}", "base")
        driver.apply_diff(f"copy{i}", "base", driver.diff(f"c{i}"))
        with mounted(driver, f"copy{i}") as root:
            assert read(root, "f") == f"b{i}b{i}".encode()


def test_hardlink_to_a_file_of_the_parent(driver):
    driver.create("base")
    with mounted(driver, "base") as root:
        write(root, "lib/libc.so.6", content(7, 3000))
    driver.create("child", "base")
    with mounted(driver, "child") as root:
        os.link(root / "lib/libc.so.6", root / "lib/libc-link")
        expected = snapshot(root)
    assert _changes(driver, "child").get("/lib/libc-link") == A
    driver.create("copy", "base")
    driver.apply_diff("copy", "base", driver.diff("child"))
    with mounted(driver, "copy") as root:
        assert read(root, "lib/libc-link") == content(7, 3000)
        assert_same_tree(expected, snapshot(root))


def test_diff_stream_closed_early_releases_the_layer(driver):
    driver.create("l")
    with mounted(driver, "l") as root:
        write(root, "big", content(1, 2 << 20))
        write(root, "small", "s")
    stream = driver.diff("l")
    assert len(stream.read(1000)) == 1000
    stream.close()
    driver.remove("l")   # nothing still holds the layer mounted
    assert not driver.exists("l")


def test_apply_diff_twice_layers_changes(driver):
    """Docker applies one tar per layer, but a second apply must still honour whiteouts."""
    driver.create("base")
    with mounted(driver, "base") as root:
        write(root, "from-base", "b")
    driver.create("l", "base")
    driver.apply_diff("l", "base", TarBuilder().file("a", "1").file("d/x", "2").stream())
    driver.apply_diff("l", "base", TarBuilder().file(".wh.a").file(".wh.from-base")
                      .file("d/y", "3").stream())
    with mounted(driver, "l") as root:
        assert_listable(root)
        assert sorted(set(os.listdir(root)) - IGNORED_AT_ROOT) == ["d"]
        assert sorted(os.listdir(root / "d")) == ["x", "y"]

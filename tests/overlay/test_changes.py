"""overlay2's native changes/diff against the naive ones, on the cases Docker gave up on.

Each case is built once, then read by a native driver and by a driver on the
same home forced onto the naive path (the test switch). Both must agree on
every ADD and DELETE and on every modified non-directory; the native path may
list more parent directories as MODIFY (a copied-up directory), which the
contract allows.
"""
from __future__ import annotations

import os
import shutil

import pytest

from graphdrivers.driver import ChangeKind

from .conftest import Tar, open_driver, tar_names

A, C, D = ChangeKind.ADD, ChangeKind.MODIFY, ChangeKind.DELETE


def as_set(changes) -> set[tuple[str, ChangeKind]]:
    return {(c.path, c.kind) for c in changes}


def agree(native_drv, naive_drv, layer: str, expected: set) -> None:
    """native and naive changes both contain ``expected``; they differ only in dir MODIFYs."""
    native = native_drv.changes(layer)
    naive = naive_drv.changes(layer)
    assert [c.path for c in native] == sorted(c.path for c in native), "sorted by path"
    assert expected <= as_set(native), f"native misses {expected - as_set(native)}"
    assert expected <= as_set(naive), f"naive misses {expected - as_set(naive)}"
    root = native_drv.mount(layer)
    try:
        extra = as_set(native) ^ as_set(naive)
        for path, kind in extra:
            assert kind == C and (root / path.lstrip("/")).is_dir(), \
                f"native and naive disagree on {path} ({kind.name})"
    finally:
        native_drv.unmount(layer)
    assert native_drv.diff_size(layer) == naive_drv.diff_size(layer)


@pytest.fixture
def pair(method, tmp_path):
    home = tmp_path / "home" / "overlay2"
    native = open_driver(home, method)
    naive = open_driver(home, method, naive_diff=True)
    try:
        assert dict(native.status())["Native Overlay Diff"] == "true"
        yield native, naive
    finally:
        naive.cleanup()
        native.cleanup()


def base_with(drv, files: dict[str, str], layer_id: str = "base") -> None:
    drv.create(layer_id)
    root = drv.home / layer_id / "diff"
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(data)


def test_directory_deleted_and_created_again(pair):
    native, naive = pair
    base_with(native, {"d/a": "a", "d/b": "b", "d/sub/c": "c", "keep": "k"})
    native.create("c", "base", rw=True)
    root = native.mount("c")
    try:
        shutil.rmtree(root / "d")
        (root / "d").mkdir()
        (root / "d/a").write_text("new a")
        (root / "d/new").write_text("n")
    finally:
        native.unmount("c")
    agree(native, naive, "c", {("/d", C), ("/d/a", C), ("/d/new", A), ("/d/b", D),
                               ("/d/sub", D)})
    assert ("/d/sub/c", D) not in as_set(native.changes("c")), "one DELETE per deleted dir"
    assert ("/keep", C) not in as_set(native.changes("c"))


def test_opaque_dir_through_diff_apply_changes(pair):
    native, naive = pair
    base_with(native, {"d/x": "x", "d/y": "y", "e/z": "z"})
    native.create("c", "base")
    tar = Tar().dir("d").opaque("d").file("d/new", "n").whiteout("e/z").stream()
    native.apply_diff("c", None, tar)
    assert os.getxattr(native.home / "c/diff/d", "trusted.overlay.opaque") == b"y"
    assert os.stat(native.home / "c/diff/e/z").st_rdev == 0
    expected = {("/d", C), ("/d/new", A), ("/d/x", D), ("/d/y", D), ("/e/z", D)}
    agree(native, naive, "c", expected)
    names = tar_names(native.diff("c"))
    assert "d/.wh..wh..opq" in names and "e/.wh.z" in names and "d/new" in names
    # the layer's own diff applied on the same parent gives the same layer
    native.create("c2", "base")
    native.apply_diff("c2", None, native.diff("c"))
    assert as_set(native.changes("c2")) == as_set(native.changes("c"))
    root = native.mount("c2")
    try:
        assert sorted(os.listdir(root / "d")) == ["new"] and os.listdir(root / "e") == []
    finally:
        native.unmount("c2")


def test_file_replaced_by_directory_and_deletions(pair):
    native, naive = pair
    base_with(native, {"f": "file", "gone/x": "x", "gone/deep/y": "y", "mod": "m"})
    native.create("c", "base", rw=True)
    root = native.mount("c")
    try:
        (root / "f").unlink()
        (root / "f").mkdir()
        (root / "f/in").write_text("i")
        shutil.rmtree(root / "gone")
        (root / "mod").write_text("changed")
        os.chmod(root / "mod", 0o600)
    finally:
        native.unmount("c")
    agree(native, naive, "c", {("/f", C), ("/f/in", A), ("/gone", D), ("/mod", C)})


def test_three_layers_whiteout_then_recreate(pair):
    native, naive = pair
    base_with(native, {"a": "a", "dir/k": "k"})
    native.create("mid", "base")
    native.apply_diff("mid", None, Tar().whiteout("a").whiteout("dir").stream())
    native.create("top", "mid", rw=True)
    root = native.mount("top")
    try:
        assert not (root / "a").exists()
        (root / "a").write_text("again")
        (root / "dir").mkdir()
        (root / "dir/j").write_text("j")
    finally:
        native.unmount("top")
    agree(native, naive, "top", {("/a", A), ("/dir", A), ("/dir/j", A)})
    agree(native, naive, "mid", {("/a", D), ("/dir", D)})


def test_renamed_directory_is_delete_plus_add(pair):
    native, naive = pair
    base_with(native, {"old/f": "f"})
    native.create("c", "base", rw=True)
    root = native.mount("c")
    try:
        shutil.move(root / "old", root / "new")    # EXDEV with redirect_dir=off: a copy
    finally:
        native.unmount("c")
    agree(native, naive, "c", {("/old", D), ("/new", A), ("/new/f", A)})


def test_native_diff_holds_only_the_change(pair):
    native, _ = pair
    base_with(native, {f"many/{n}": str(n) for n in range(200)})
    native.create("c", "base", rw=True)
    root = native.mount("c")
    try:
        (root / "many/7").write_text("seven")
    finally:
        native.unmount("c")
    assert tar_names(native.diff("c")) == ["many", "many/7"]
    assert native.changes("c") == sorted(native.changes("c"), key=lambda c: c.path)
    assert as_set(native.changes("c")) == {("/many", C), ("/many/7", C)}
    assert native.diff_size("c") == 5


def test_explicit_other_parent_uses_the_naive_path(pair):
    native, _ = pair
    base_with(native, {"a": "a"})
    native.create("mid", "base", rw=True)
    (native.home / "mid/diff/b").write_text("b")
    native.create("top", "mid", rw=True)
    (native.home / "top/diff/c").write_text("c")
    assert as_set(native.changes("top")) == {("/c", A)}
    assert {("/b", A), ("/c", A)} <= as_set(native.changes("top", "base"))

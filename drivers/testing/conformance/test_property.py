"""Property test: for random trees and random edits, diff -> apply_diff reproduces the child.

Hypothesis draws a base tree and a list of edits (add, rewrite, delete, chmod,
chown, replace a file by a dir and back, symlinks, hard links); the child's
diff applied on a fresh child of the same base must read exactly like the child,
and report the same changes.
"""
from __future__ import annotations

import itertools
import os
import shutil
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .helpers import assert_same_tree, hardlink_groups, mounted, snapshot

NAMES = st.sampled_from(["a", "b", "c", "dir", "x.txt", "sub"])
PATHS = st.lists(NAMES, min_size=1, max_size=3).map("/".join)
DATA = st.binary(max_size=600)

EDIT = st.one_of(
    st.tuples(st.just("write"), PATHS, DATA),
    st.tuples(st.just("mkdir"), PATHS, st.just(b"")),
    st.tuples(st.just("delete"), PATHS, st.just(b"")),
    st.tuples(st.just("chmod"), PATHS, st.sampled_from([b"\x07\x00", b"\x04\x04", b"\x01\xed"])),
    st.tuples(st.just("chown"), PATHS, st.sampled_from([b"\x01", b"\x02"])),
    st.tuples(st.just("symlink"), PATHS, st.sampled_from([b"a", b"../b", b"/nonexistent/abs"])),
    st.tuples(st.just("hardlink"), PATHS, PATHS.map(str.encode)),
)

_counter = itertools.count()


def _apply_edit(root: Path, edit) -> None:
    """Perform one edit if it makes sense for the current tree; otherwise do nothing."""
    kind, rel, arg = edit
    path = root / rel
    # never go through a symlink: one pointing at ../ would take the edit outside the layer
    ancestor = root
    for part in Path(rel).parts[:-1]:
        ancestor = ancestor / part
        if ancestor.is_symlink():
            return
    parent_ok = path.parent == root or (path.parent.is_dir() and not path.parent.is_symlink())
    try:
        if kind == "write":
            if not parent_ok:
                path.parent.mkdir(parents=True, exist_ok=True)
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            elif path.is_symlink():
                path.unlink()
            path.write_bytes(arg)
        elif kind == "mkdir":
            if path.is_symlink() or path.is_file():
                path.unlink()
            path.mkdir(parents=True, exist_ok=True)
        elif kind == "delete":
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            elif path.exists() or path.is_symlink():
                path.unlink()
        elif kind == "chmod" and path.exists() and not path.is_symlink():
            os.chmod(path, int.from_bytes(arg, "big") & 0o7777 | (0o700 if path.is_dir() else 0))
        elif kind == "chown" and (path.exists() or path.is_symlink()):
            os.lchown(path, arg[0], arg[0])
        elif kind == "symlink" and parent_ok and not path.exists() and not path.is_symlink():
            os.symlink(arg.decode(), path)
        elif kind == "hardlink" and parent_ok and not path.exists() and not path.is_symlink():
            target = root / arg.decode()
            if target.is_file() and not _through_symlink(root, arg.decode()):
                os.link(target, path)
    except (FileExistsError, NotADirectoryError, FileNotFoundError, IsADirectoryError):
        pass   # the edit does not fit the tree drawn so far


def _within(groups, paths):
    return {frozenset(g & paths) for g in groups if len(g & paths) > 1}


def _through_symlink(root: Path, rel: str) -> bool:
    current = root
    for part in Path(rel).parts:
        current = current / part
        if current.is_symlink():
            return True
    return False


@settings(max_examples=25, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture,
                                 HealthCheck.too_slow])
@given(base_edits=st.lists(EDIT, max_size=12), child_edits=st.lists(EDIT, max_size=12))
def test_random_edits_round_trip(driver, base_edits, child_edits):
    n = next(_counter)
    base, child, copy = f"base-{n}", f"child-{n}", f"copy-{n}"
    driver.create(base)
    with mounted(driver, base) as root:
        for edit in base_edits:
            _apply_edit(root, edit)
    driver.create(child, base)
    with mounted(driver, child) as root:
        for edit in child_edits:
            _apply_edit(root, edit)
        expected, links = snapshot(root), hardlink_groups(root)
    changes = driver.changes(child)
    driver.create(copy, base)
    driver.apply_diff(copy, base, driver.diff(child))
    with mounted(driver, copy) as root:
        assert_same_tree(expected, snapshot(root))
        # hard links are kept within the layer's diff; one to an unchanged parent
        # file travels as a copy (as in Docker's naive diff)
        changed = {c.path.lstrip("/") for c in changes}
        assert _within(hardlink_groups(root), changed) == _within(links, changed)
    assert driver.changes(copy) == changes
    for layer in (copy, child, base):
        driver.remove(layer)


if os.environ.get("GRAPHDRIVERS_IN_VM"):   # emulated CPU: keep the VM run short
    test_random_edits_round_trip = pytest.mark.slow(test_random_edits_round_trip)

"""Randomized proof: on random trees and random edits, native changes == the tree walk."""
from __future__ import annotations

import itertools
import os
import shutil

import pytest

from hypothesis import HealthCheck, given, settings, strategies as st

from graphdrivers.btrfs import changes as native
from graphdrivers.changes import changes_size, compare_trees

from graphdrivers.testing.conformance.helpers import CAPABILITY, content

NAMES = ["a", "b", "c", "dd"]
paths = st.lists(st.sampled_from(NAMES), min_size=1, max_size=3).map("/".join)
OPS = ["write", "append", "truncate", "unlink", "rmtree", "mkdir", "rename", "chmod", "chown",
       "symlink", "link", "utime", "setcap", "dropcap", "recreate", "read", "read"]
op = st.tuples(st.sampled_from(OPS), paths, paths, st.integers(0, 5000))
_ids = itertools.count()


def _apply(root, kind: str, p: str, q: str, n: int) -> None:
    """One edit; edits that do not fit the tree (ENOENT, EEXIST, ...) do nothing."""
    a, b = os.path.join(root, p), os.path.join(root, q)
    try:
        if kind == "write":
            os.makedirs(os.path.dirname(a), exist_ok=True)
            with open(a, "wb") as f:
                f.write(content(n, n % 700))
        elif kind == "append":
            with open(a, "ab") as f:
                f.write(b"+")
        elif kind == "truncate":
            os.truncate(a, n % 3)
        elif kind == "unlink":
            os.unlink(a)
        elif kind == "rmtree":
            shutil.rmtree(a)
        elif kind == "mkdir":
            os.makedirs(a)
        elif kind == "rename":
            os.rename(a, b)
        elif kind == "chmod":
            os.chmod(a, [0o644, 0o600, 0o755, 0o4755, 0o1777][n % 5], follow_symlinks=False) \
                if not os.path.islink(a) else None
        elif kind == "chown":
            os.lchown(a, n % 3, n % 2)
        elif kind == "symlink":
            os.symlink(q if n % 2 else "/" + q, a)
        elif kind == "link":
            os.link(a, b)
        elif kind == "utime":
            os.utime(a, ns=(n, 1_600_000_000 * 10**9 + n * 10**6), follow_symlinks=False)
        elif kind == "setcap":
            os.setxattr(a, "security.capability", CAPABILITY, follow_symlinks=False)
        elif kind == "dropcap":
            os.removexattr(a, "security.capability", follow_symlinks=False)
        elif kind == "read":      # updates atime (relatime): must not count as a change
            if os.path.isdir(a):
                os.listdir(a)
            else:
                with open(a, "rb") as f:
                    f.read()
        elif kind == "recreate":   # same name, new inode, same stat as far as the walk looks
            st_ = os.lstat(a)
            data = open(a, "rb").read()
            os.unlink(a)
            with open(a, "wb") as f:
                f.write(data)
            os.chmod(a, st_.st_mode & 0o7777)
            os.utime(a, ns=(st_.st_atime_ns, st_.st_mtime_ns))
    except (OSError, ValueError):
        pass


edits = dict(base_ops=st.lists(op, max_size=25), child_ops=st.lists(op, max_size=15),
             parent_ops=st.lists(op, max_size=3))
_quiet = [HealthCheck.function_scoped_fixture, HealthCheck.too_slow]


@settings(max_examples=30, deadline=None, database=None, suppress_health_check=_quiet)
@given(**edits)
def test_random_edits_agree_with_the_walk(drv, base_ops, child_ops, parent_ops):
    _check(drv, base_ops, child_ops, parent_ops)


@pytest.mark.slow
@settings(max_examples=150, deadline=None, database=None, suppress_health_check=_quiet)
@given(**edits)
def test_many_random_edits_agree_with_the_walk(drv, base_ops, child_ops, parent_ops):
    _check(drv, base_ops, child_ops, parent_ops)


def _check(drv, base_ops, child_ops, parent_ops):
    n = next(_ids)
    base, child = f"base{n}", f"child{n}"
    drv.create(base)
    broot = drv.home / "subvolumes" / base
    for edit in base_ops:
        _apply(broot, *edit)
    drv.create(child, base)
    lroot = drv.home / "subvolumes" / child
    for edit in child_ops:
        _apply(lroot, *edit)
    for edit in parent_ops:      # a parent edited after the snapshot must not fool it
        _apply(broot, *edit)
    try:
        found = native.changes(lroot, broot)
        walked = compare_trees(lroot, broot)
        assert found == walked
        assert drv.diff_size(child) == changes_size(lroot, walked)
    finally:
        drv.remove(child)
        drv.remove(base)

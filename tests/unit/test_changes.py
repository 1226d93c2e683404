"""compare_trees and changes_size: every kind of change, Docker's naive semantics."""
from __future__ import annotations

import os
import shutil
import stat

import pytest

from graphdrivers.vfs.copy import copy_tree
from graphdrivers.changes import changes_size, compare_trees
from graphdrivers.driver import Change, ChangeKind
from test_archive_trees import CAPABILITY, build_tree

A, C, D = ChangeKind.ADD, ChangeKind.MODIFY, ChangeKind.DELETE


@pytest.fixture
def trees(tmp_path):
    old, new = tmp_path / "old", tmp_path / "new"
    old.mkdir()
    (old / "etc").mkdir()
    (old / "etc/hosts").write_bytes(b"127.0.0.1 localhost\n")
    (old / "etc/passwd").write_bytes(b"root:x:0:0\n")
    (old / "var/lib/deep").mkdir(parents=True)
    (old / "var/lib/deep/file").write_bytes(b"d")
    (old / "bin").mkdir()
    (old / "bin/tool").write_bytes(b"tool")
    (old / "link").symlink_to("etc/hosts")
    (old / "fileish").write_bytes(b"f")
    (old / "dirish").mkdir()
    (old / "dirish/x").write_bytes(b"x")
    new.mkdir()
    copy_tree(old, new)
    return old, new


def _kinds(changes):
    return [(c.path, c.kind) for c in changes]


def test_identical_trees_have_no_changes(trees):
    old, new = trees
    assert compare_trees(new, old) == []


def test_every_kind(trees):
    old, new = trees
    (new / "etc/new.conf").write_bytes(b"n")                      # add in an existing dir
    (new / "opt/app").mkdir(parents=True)                         # add a tree
    (new / "opt/app/run").write_bytes(b"r")
    shutil.rmtree(new / "var/lib")                                # delete a dir: one entry
    os.chmod(new / "bin/tool", 0o755)                             # mode only
    os.unlink(new / "link")                                       # symlink retargeted
    (new / "link").symlink_to("etc/passwd")
    os.unlink(new / "fileish")                                    # file -> dir
    (new / "fileish").mkdir()
    (new / "fileish/in").write_bytes(b"i")
    shutil.rmtree(new / "dirish")                                 # dir -> file
    (new / "dirish").write_bytes(b"now a file")
    got = _kinds(compare_trees(new, old))
    assert got == [
        ("/bin", C), ("/bin/tool", C), ("/dirish", C), ("/etc", C), ("/etc/new.conf", A),
        ("/fileish", C), ("/fileish/in", A), ("/link", C), ("/opt", A), ("/opt/app", A),
        ("/opt/app/run", A), ("/var", C), ("/var/lib", D)]
    assert got == sorted(got)


def test_same_size_rewrite_in_the_same_second_is_seen(trees):
    old, new = trees
    before = os.stat(old / "etc/hosts")
    with open(new / "etc/hosts", "r+b") as f:
        f.write(b"X")
    # force the same whole second as the parent; only nanoseconds differ
    os.utime(new / "etc/hosts", ns=(before.st_atime_ns,
                                   before.st_mtime_ns // 10**9 * 10**9 + 1))
    assert _kinds(compare_trees(new, old)) == [("/etc", C), ("/etc/hosts", C)]


def test_owner_and_capability_changes(trees):
    old, new = trees
    os.chown(new / "etc/passwd", 10, 10)
    os.setxattr(new / "bin/tool", "security.capability", CAPABILITY)
    assert _kinds(compare_trees(new, old)) == [
        ("/bin", C), ("/bin/tool", C), ("/etc", C), ("/etc/passwd", C)]


def test_directory_compared_by_mode_and_owner_not_mtime(trees):
    old, new = trees
    os.utime(new / "bin", (1, 1))
    assert compare_trees(new, old) == []
    os.chmod(new / "bin", 0o700)
    assert _kinds(compare_trees(new, old)) == [("/bin", C)]


def test_user_xattr_only_changes_are_seen_on_files_and_directories(trees):
    old, new = trees
    os.setxattr(new / "etc/hosts", "user.comment", b"changed")
    os.setxattr(new / "var/lib", "user.owner", b"me")
    os.setxattr(new / "bin/tool", "trusted.other", b"not kept by a layer tar")
    assert _kinds(compare_trees(new, old)) == [("/etc", C), ("/etc/hosts", C),
                                               ("/var", C), ("/var/lib", C)]
    os.setxattr(old / "etc/hosts", "user.comment", b"changed")
    assert ("/etc/hosts", C) not in _kinds(compare_trees(new, old))


def test_no_parent_means_everything_added(tmp_path):
    build_tree(tmp_path / "t")
    changes = compare_trees(tmp_path / "t", None)
    assert all(c.kind == A for c in changes)
    expected = sorted("/" + str(p.relative_to(tmp_path / "t")) for p in (tmp_path / "t").rglob("*"))
    assert [c.path for c in changes] == expected


def test_sorted_by_path_string(tmp_path):
    (tmp_path / "new/a").mkdir(parents=True)
    (tmp_path / "new/a/b").write_bytes(b"")
    (tmp_path / "new/a-b").write_bytes(b"")
    (tmp_path / "new/a.b").write_bytes(b"")
    assert [c.path for c in compare_trees(tmp_path / "new", None)] == [
        "/a", "/a-b", "/a.b", "/a/b"]


def test_changes_size(tmp_path):
    root = tmp_path
    (root / "a").write_bytes(b"x" * 100)
    os.link(root / "a", root / "a-link")
    (root / "d").mkdir()
    (root / "s").symlink_to("a")
    (root / "b").write_bytes(b"y" * 7)
    os.mkfifo(root / "p")
    changes = [Change("/a", A), Change("/a-link", A), Change("/d", A), Change("/s", A),
               Change("/b", C), Change("/gone", D), Change("/p", A), Change("/vanished", A)]
    assert changes_size(root, changes) == 107
    assert changes_size(root, []) == 0
    assert not stat.S_ISREG(os.lstat(root / "p").st_mode)


def test_copy_tree_without_reflinks_uses_copy_file_range(tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    build_tree(src)
    dst.mkdir()
    counts = copy_tree(src, dst)
    assert sum(counts.values()) == sum(
        1 for p in src.rglob("*") if p.is_file() and not p.is_symlink() and p.stat().st_size
        and p.stat().st_nlink == 1) + 1                    # the hard-linked trio counts once
    assert compare_trees(dst, src) == []

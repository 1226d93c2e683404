"""Layer fidelity (issue 13): what a layer tar says is what the layer shows, on every driver.

Ported in spirit from moby's pkg/archive tests (TestApplyLayerWhiteouts), containerd's
archive tests and the OCI image-spec layer.md examples:
- every mode round-trips exactly, 0000 included, also on directories that receive
  content during the apply (``/etc/shadow`` is 0000 on Fedora and RHEL);
- a whiteout or opaque marker takes effect wherever it sits in the tar: an opaque
  marker hides the lower layers' entries of its directory, never the entries of its
  own layer, before or after it; a plain whiteout deletes what is there when it comes
  (the same layer's earlier entry included), as Docker's UnpackLayer does;
- an opaque marker for the layer root hides every lower layer;
- whiteouts never leave damage: every name readdir lists in the layer can be lstat'ed.
"""
from __future__ import annotations

import io
import os
import stat

import pytest

from graphdrivers.errors import DriverError

from .helpers import (IGNORED_AT_ROOT, TarBuilder, assert_listable, assert_same_tree, mounted,
                      snapshot, visible_names, write, xattrs_supported)


def _drain(stream) -> bytes:
    try:
        return stream.read()
    finally:
        stream.close()


def _mode(path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def _names(driver, layer: str) -> list[str]:
    with mounted(driver, layer) as root:
        assert_listable(root)
        return visible_names(root)


def _copy_of(driver, layer: str, parent: str | None, name: str) -> str:
    """Apply ``layer``'s own diff on a new layer on ``parent``: the round trip of a diff."""
    driver.create(name, parent)
    driver.apply_diff(name, parent, io.BytesIO(_drain(driver.diff(layer))))
    return name


def _assert_round_trip(driver, layer: str, parent: str | None) -> None:
    """The layer's diff reproduces it, and a child of it sees the same tree."""
    with mounted(driver, layer) as root:
        expected = snapshot(root)
    copy = _copy_of(driver, layer, parent, f"{layer}-copy")
    driver.create(f"{layer}-child", layer)
    for other in (copy, f"{layer}-child"):
        with mounted(driver, other) as root:
            assert_listable(root)
            assert_same_tree(expected, snapshot(root))


# -- 1. modes ------------------------------------------------------------------

FILE_MODES = [0o000, 0o400, 0o444, 0o440, 0o111, 0o200, 0o555, 0o4000, 0o2000, 0o1000, 0o6511]
DIR_MODES = [0o000, 0o100, 0o500, 0o555, 0o1555, 0o2500, 0o711]


def _modes_tar() -> bytes:
    """Files of every odd mode, and odd-mode directories that receive content after
    their own entry (as a layer tar lists them: the directory first)."""
    tar = TarBuilder().dir("etc", 0o755).file("etc/shadow", "root:*::\n", 0o000) \
        .file("etc/gshadow", "root:::\n", 0o000)
    for mode in FILE_MODES:
        tar.file(f"f{mode:04o}", f"mode {mode:o}", mode)
    for mode in DIR_MODES:
        tar.dir(f"d{mode:04o}", mode).file(f"d{mode:04o}/inner", "x", 0o000) \
            .dir(f"d{mode:04o}/sub", mode).file(f"d{mode:04o}/sub/deeper", "y", 0o444) \
            .fifo(f"d{mode:04o}/fifo", 0o000)
    return tar.bytes()


def test_every_mode_of_a_tar_is_applied_exactly(driver):
    driver.create("l")
    driver.apply_diff("l", None, io.BytesIO(_modes_tar()))
    with mounted(driver, "l") as root:
        assert _mode(root / "etc/shadow") == 0o000
        assert _mode(root / "etc/gshadow") == 0o000
        assert (root / "etc/shadow").read_bytes() == b"root:*::\n"
        for mode in FILE_MODES:
            assert _mode(root / f"f{mode:04o}") == mode, f"file f{mode:04o}"
        for mode in DIR_MODES:
            d = root / f"d{mode:04o}"
            assert _mode(d) == mode, f"directory {d.name}"
            assert _mode(d / "sub") == mode, f"directory {d.name}/sub"
            assert _mode(d / "inner") == 0o000
            assert _mode(d / "fifo") == 0o000
            assert (d / "sub/deeper").read_bytes() == b"y"


def test_every_mode_round_trips_through_diff(driver):
    driver.create("base")
    with mounted(driver, "base") as root:
        for mode in FILE_MODES:
            write(root, f"f{mode:04o}", f"mode {mode:o}", mode)
        for mode in DIR_MODES:
            write(root, f"d{mode:04o}/inner", "x", 0o000)
            os.mkfifo(root / f"d{mode:04o}/fifo", 0o000)
            os.chmod(root / f"d{mode:04o}", mode)
        expected = snapshot(root)
    assert expected["f0000"].mode == 0o000 and expected["d0000"].mode == 0o000
    _assert_round_trip(driver, "base", None)


def test_modes_changed_in_a_child_round_trip(driver):
    """A child's diff re-sends the entries it changed: chmod to 0000 on both kinds."""
    driver.create("base")
    with mounted(driver, "base") as root:
        write(root, "etc/shadow", "root:*::\n", 0o640)
        write(root, "ro/file", "f", 0o644)
    driver.create("child", "base")
    with mounted(driver, "child") as root:
        os.chmod(root / "etc/shadow", 0o000)
        write(root, "ro/new", "n", 0o000)
        os.chmod(root / "ro/file", 0o400)
        os.chmod(root / "ro", 0o555)
    _assert_round_trip(driver, "child", "base")


# -- 2. whiteouts and opaque markers anywhere in the tar -------------------------

def _lower(driver, layer: str = "base") -> str:
    """The OCI layer.md base layer, plus lower entries an opaque marker must hide."""
    driver.create(layer)
    with mounted(driver, layer) as root:
        write(root, "a/b/c/bar", "lower bar")
        write(root, "a/lower-file", "lower")
        write(root, "a/b/lower-too", "lower")
        write(root, "a/deep/x/y", "lower")
        os.chmod(root / "a/b", 0o700)
        os.chown(root / "a/b", 1000, 1000)
        write(root, "keep/untouched", "lower")
    return layer


OPAQUE = "a/.wh..wh..opq"


def _with_marker(entries: list[tuple[str, ...]], position: int) -> bytes:
    tar = TarBuilder()
    for i, entry in enumerate(entries + [None]):
        if i == position:
            tar.file(OPAQUE)
        if entry is None:
            break
        kind, name, *rest = entry
        getattr(tar, kind)(name, *rest)
    return tar.bytes()


# The OCI layer.md example: a/b deleted and recreated with a/b/c/foo.
OCI_EXAMPLE = [("dir", "a/"), ("dir", "a/b/", 0o750), ("dir", "a/b/c/"), ("file", "a/b/c/foo", "foo")]


@pytest.mark.parametrize("position", range(len(OCI_EXAMPLE) + 1))
def test_opaque_marker_takes_effect_wherever_it_is(driver, position):
    base = _lower(driver)
    driver.create("l", base)
    driver.apply_diff("l", base, io.BytesIO(_with_marker(OCI_EXAMPLE, position)))
    assert _names(driver, "l") == ["a/", "a/b/", "a/b/c/", "a/b/c/foo", "keep/",
                                   "keep/untouched"]
    with mounted(driver, "l") as root:
        assert _mode(root / "a/b") == 0o750
    _assert_round_trip(driver, "l", base)


# Entries of the layer itself around the marker: none of them may be hidden. The
# implied parents (no entry of their own) of a/deep/x/new look as if freshly made.
OWN_ENTRIES = [("file", "a/mine", "mine"), ("file", "a/b/c/foo", "foo"),
               ("file", "a/deep/x/new", "new"), ("symlink", "a/link", "mine")]


@pytest.mark.parametrize("position", range(len(OWN_ENTRIES) + 1))
def test_opaque_marker_never_hides_its_own_layer(driver, position):
    base = _lower(driver)
    driver.create("l", base)
    driver.apply_diff("l", base, io.BytesIO(_with_marker(OWN_ENTRIES, position)))
    assert _names(driver, "l") == ["a/", "a/b/", "a/b/c/", "a/b/c/foo", "a/deep/", "a/deep/x/",
                                   "a/deep/x/new", "a/link", "a/mine", "keep/",
                                   "keep/untouched"]
    with mounted(driver, "l") as root:
        st = os.lstat(root / "a/b")
        assert (stat.S_IMODE(st.st_mode), st.st_uid) == (0o755, os.geteuid()), \
            "an implied parent under an opaque directory is a new one, not the hidden lower one"
    _assert_round_trip(driver, "l", base)


def test_whiteouts_act_in_tar_order(driver):
    """As Docker's UnpackLayer: a whiteout deletes what is there when it comes, the same
    layer's earlier entry included; an entry after a whiteout stands, alone."""
    base = _lower(driver)
    tar = (TarBuilder()
           .file("mine", "short-lived").dir("mydir").file("mydir/f", "f")
           .file(".wh.mine").file(".wh.mydir")                 # after the same layer's entries
           .file("a/.wh.lower-file").file("a/lower-file", "new")  # whiteout, then a new entry
           .file("a/.wh.b").dir("a/b").file("a/b/only", "only")   # a directory made again
           .file(".wh.keep").file("keep/fresh", "fresh")          # ... and an implied one
           .bytes())
    driver.create("l", base)
    driver.apply_diff("l", base, io.BytesIO(tar))
    assert _names(driver, "l") == ["a/", "a/b/", "a/b/only", "a/deep/", "a/deep/x/", "a/deep/x/y",
                                   "a/lower-file", "keep/", "keep/fresh"]
    with mounted(driver, "l") as root:
        assert (root / "a/lower-file").read_bytes() == b"new"
    _assert_round_trip(driver, "l", base)


# moby's TestApplyLayerWhiteouts: each change is one layer on top of the one before.
BASE = [".baz", "bar/", "bar/bax", "bar/bay/", "baz", "foo/", "foo/.abc", "foo/.bcd/",
        "foo/.bcd/a", "foo/cde/", "foo/cde/def", "foo/cde/efg", "foo/fgh", "foobar"]
DOCKER_WHITEOUTS = [
    (BASE, BASE),
    ([".bay", ".wh.baz", "foo/", "foo/.bce", "foo/.wh..wh..opq", "foo/cde/", "foo/cde/efg"],
     [".bay", ".baz", "bar/", "bar/bax", "bar/bay/", "foo/", "foo/.bce", "foo/cde/",
      "foo/cde/efg", "foobar"]),
    ([".bay", ".wh..baz", ".wh.foobar", "foo/", "foo/.abc", "foo/.wh.cde", "bar/"],
     [".bay", "bar/", "bar/bax", "bar/bay/", "foo/", "foo/.abc", "foo/.bce"]),
    ([".abc", ".wh..wh..opq", "foobar"], [".abc", "foobar"]),
]


def _layer_tar(names: list[str]) -> bytes:
    tar = TarBuilder()
    for name in names:
        if name.endswith("/"):
            tar.dir(name.rstrip("/"), 0o755)
        else:
            tar.file(name, name, 0o644)
    return tar.bytes()


def test_docker_apply_layer_whiteouts(driver):
    parent = None
    for i, (change, expected) in enumerate(DOCKER_WHITEOUTS):
        driver.create(f"l{i}", parent)
        driver.apply_diff(f"l{i}", parent, io.BytesIO(_layer_tar(change)))
        assert _names(driver, f"l{i}") == expected, f"layer {i}: {change}"
        parent = f"l{i}"
    for i in range(1, len(DOCKER_WHITEOUTS)):        # each diff reproduces its layer
        copy = _copy_of(driver, f"l{i}", f"l{i - 1}", f"copy{i}")
        assert _names(driver, copy) == DOCKER_WHITEOUTS[i][1], f"diff of layer {i}"


# -- 3. an opaque layer root -------------------------------------------------------

@pytest.mark.parametrize("position", ["first", "last"])
def test_opaque_root_hides_every_lower_layer(driver, position):
    driver.create("one")
    with mounted(driver, "one") as root:
        write(root, "etc/passwd", "root:x:0:0")
        write(root, "bin/sh", "sh")
        write(root, "top", "one")
    driver.create("two", "one")
    with mounted(driver, "two") as root:
        write(root, "etc/group", "root:x:0:")
        write(root, "from-two", "two")
    entries = TarBuilder()
    if position == "first":
        entries.file(".wh..wh..opq")
    entries.dir("etc").file("etc/hosts", "127.0.0.1").file("new", "new")
    if position == "last":
        entries.file(".wh..wh..opq")
    driver.create("three", "two")
    driver.apply_diff("three", "two", io.BytesIO(entries.bytes()))
    assert _names(driver, "three") == ["etc/", "etc/hosts", "new"]
    changes = {c.path: c.kind.name for c in driver.changes("three")
               if c.path.lstrip("/").split("/")[0] not in IGNORED_AT_ROOT}
    for gone in ("/bin", "/top", "/from-two", "/etc/passwd", "/etc/group"):
        assert changes.get(gone) == "DELETE", f"{gone}: {changes}"
    assert changes.get("/new") == "ADD" and changes.get("/etc/hosts") == "ADD"
    _assert_round_trip(driver, "three", "two")
    driver.create("copy-on-one", "one")           # a diff against another parent
    driver.apply_diff("copy-on-one", "one", driver.diff("three", "one"))
    assert _names(driver, "copy-on-one") == ["etc/", "etc/hosts", "new"]


# -- 4. whiteouts never damage the tree ---------------------------------------------

def _symlinked_lower(driver, layer: str = "base") -> str:
    driver.create(layer)
    with mounted(driver, layer) as root:
        write(root, "etc/hello", "hello")
        write(root, "etc/other", "other")
        os.symlink("etc", root / "localetc")
        write(root, "file", "a file")
        write(root, "dir/x", "x")
        write(root, "dir/sub/y", "y")
    return layer


# (name, tar) applied on _symlinked_lower (and on nothing, as a base layer)
DAMAGE_TARS = {
    "whiteout-under-lower-symlink": TarBuilder().file("localetc/.wh.hello"),
    "opaque-under-lower-symlink": TarBuilder().file("localetc/.wh..wh..opq"),
    "whiteout-of-nothing": TarBuilder().file(".wh.nothing").file("dir/.wh.nothing"),
    "whiteout-in-missing-dir": TarBuilder().file("missing/deeper/.wh.x"),
    "opaque-of-missing-dir": TarBuilder().file("missing/.wh..wh..opq"),
    "whiteout-under-a-file": TarBuilder().file("file/.wh.x"),
    "whiteout-in-new-dir": TarBuilder().dir("new").file("new/.wh.x").file("new/f", "f"),
    "whiteout-in-opaque-dir": TarBuilder().file("dir/.wh..wh..opq").file("dir/.wh.x")
    .file("dir/sub/.wh.y"),
    "opaque-after-whiteouts": TarBuilder().file("dir/.wh.x").file("dir/sub/.wh.y")
    .file("dir/.wh..wh..opq").file("dir/kept", "k"),
    "whiteout-then-recreate-dir": TarBuilder().file(".wh.dir").file("dir/sub/new", "n"),
    "whiteout-under-whited-out-dir": TarBuilder().file(".wh.dir").file("dir/.wh.x"),
    "whiteout-twice": TarBuilder().file("etc/.wh.hello").file("etc/.wh.hello"),
    "opaque-root-then-whiteouts": TarBuilder().file(".wh..wh..opq").file(".wh.etc")
    .file("dir/.wh.x").file("dir/y", "y"),
}


@pytest.mark.parametrize("with_parent", [True, False], ids=["child", "base"])
@pytest.mark.parametrize("name", sorted(DAMAGE_TARS))
def test_whiteouts_leave_no_damage(driver, name, with_parent):
    parent = _symlinked_lower(driver) if with_parent else None
    driver.create("l", parent)
    try:
        driver.apply_diff("l", parent, io.BytesIO(DAMAGE_TARS[name].bytes()))
    except DriverError as exc:                     # refusing is allowed, with a message
        assert str(exc)
        return
    with mounted(driver, "l") as root:
        assert_listable(root)
        if with_parent and not name.startswith("opaque-root"):
            assert os.path.islink(root / "localetc"), "the lower symlink was replaced"
    if with_parent:
        _assert_round_trip(driver, "l", parent)


def test_whiteout_under_a_lower_symlink(driver):
    """The issue's case: ``localetc/.wh.hello`` with ``localetc`` a symlink below."""
    base = _symlinked_lower(driver)
    driver.create("l", base)
    driver.apply_diff("l", base, io.BytesIO(TarBuilder().file("localetc/.wh.hello").bytes()))
    with mounted(driver, "l") as root:
        assert_listable(root)
        assert os.readlink(root / "localetc") == "etc"
        assert "other" in os.listdir(root / "localetc")
        for name in os.listdir(root / "localetc"):
            os.lstat(root / "localetc" / name)


@pytest.mark.parametrize("with_parent", [True, False], ids=["child", "base"])
def test_whiteouts_with_nothing_below_create_nothing(driver, with_parent):
    parent = None
    if with_parent:
        parent = "base"
        driver.create(parent)
        with mounted(driver, parent) as root:
            write(root, "present", "p")
    tar = (TarBuilder().file(".wh.absent").file("absent-dir/.wh.x")
           .file("absent-dir2/.wh..wh..opq").dir("new").file("new/.wh.x").bytes())
    driver.create("l", parent)
    driver.apply_diff("l", parent, io.BytesIO(tar))
    assert _names(driver, "l") == (["new/", "present"] if with_parent else ["new/"])
    assert [c.path for c in driver.changes("l")
            if c.path.lstrip("/").split("/")[0] not in IGNORED_AT_ROOT] == ["/new"]


@pytest.mark.parametrize("tar", [
    TarBuilder().file("srv/data/new", "new"),
    TarBuilder().file("srv/data/.wh.old"),
], ids=["entry", "whiteout"])
def test_implied_parent_keeps_the_lower_directory(driver, tar):
    """A directory the tar only implies, and that a lower layer has, stays as it was
    (overlay2 makes it in the upper dir: with the lower one's mode, owner, xattrs)."""
    driver.create("base")
    with mounted(driver, "base") as root:
        write(root, "srv/data/old", "old")
        os.chown(root / "srv/data", 1000, 1001)
        os.chmod(root / "srv/data", 0o750)
        os.chmod(root / "srv", 0o711)
        xattr = xattrs_supported(root) is None
        if xattr:
            os.setxattr(root / "srv/data", "user.owner", b"data team")
    driver.create("l", "base")
    driver.apply_diff("l", "base", io.BytesIO(tar.bytes()))
    with mounted(driver, "l") as root:
        assert_listable(root)
        st = os.lstat(root / "srv/data")
        assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o750, 1000, 1001)
        assert _mode(root / "srv") == 0o711
        if xattr:
            assert os.getxattr(root / "srv/data", "user.owner") == b"data team"
    _assert_round_trip(driver, "l", "base")


def test_char_device_0_0_is_kept_or_refused(driver):
    """A 0:0 character device is how overlayfs marks a deletion on disk: a tar entry of
    that kind must show as the device it is, or be refused, never silently vanish."""
    driver.create("base")
    with mounted(driver, "base") as root:
        write(root, "dev-null", "a file below")
        write(root, "d/x", "x")
    driver.create("l", "base")
    tar = TarBuilder().chardev("dev-null", 0, 0).chardev("d/zero", 0, 0).bytes()
    try:
        driver.apply_diff("l", "base", io.BytesIO(tar))
    except DriverError as exc:
        assert "0:0" in str(exc)
        return
    with mounted(driver, "l") as root:
        for rel in ("dev-null", "d/zero"):
            st = os.lstat(root / rel)
            assert stat.S_ISCHR(st.st_mode) and st.st_rdev == 0, rel

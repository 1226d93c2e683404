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

from .helpers import (TarBuilder, assert_listable, assert_same_tree, mounted, snapshot,
                      visible_names, write)


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

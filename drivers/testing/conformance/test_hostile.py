"""Hostile layer tars: apply_diff never writes outside the layer, and bad streams fail loudly.

Each tar is built here with tarfile. An escape attempt may be refused with a
DriverError or contained inside the layer (DESIGN.md); either way a canary
directory beside the driver home, the driver's other layers and its state stay
exactly as they were. Truncated or corrupt streams must raise a DriverError.
"""
from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import pytest

from graphdrivers.errors import DriverError

from .helpers import (TarBuilder, assert_listable, assert_same_tree, mounted, snapshot,
                      tree_listing, write)

UP = "../" * 40   # enough to reach / from any layer root


def _escape_tars(canary: Path) -> dict[str, bytes]:
    rel = str(canary).lstrip("/")            # canary relative to /
    parent_rel = str(canary.parent).lstrip("/")
    secret = f"{UP}{rel}/secret"
    tars = {
        "dotdot-one-level": TarBuilder().file("../escape", "x"),
        "dotdot-deep": TarBuilder().file(f"{UP}{rel}/escaped", "x"),
        "dotdot-in-the-middle": TarBuilder().dir("sub").file(f"sub/{UP}{rel}/escaped", "x"),
        "absolute-path": TarBuilder().file(f"/{rel}/abs", "x"),
        "symlink-absolute-then-write": TarBuilder().symlink("link", str(canary))
        .file("link/pwned", "x"),
        "symlink-relative-then-write": TarBuilder().symlink("rel", f"{UP}{rel}")
        .file("rel/pwned", "x"),
        "symlink-up-then-write": TarBuilder().symlink("up", "..").file("up/escape-up", "x"),
        "symlink-chain-then-write": TarBuilder().dir("d").symlink("d/a", "../b")
        .symlink("b", str(canary)).file("d/a/pwned", "x"),
        "symlink-then-dir-then-write": TarBuilder().symlink("link", str(canary))
        .dir("link/newdir").file("link/newdir/pwned", "x"),
        "symlink-then-hardlink": TarBuilder().symlink("s", str(canary))
        .hardlink("h", "s/secret").file("h", "pwned"),
        "hardlink-outside-then-write": TarBuilder().hardlink("h", secret).file("h", "pwned"),
        "hardlink-absolute": TarBuilder().hardlink("h", str(canary / "secret")).file("h", "pwned"),
        "whiteout-dotdot-at-root": TarBuilder().file(".wh.."),
        "whiteout-dotdot-in-dir": TarBuilder().dir("sub").file("sub/.wh.."),
        "whiteout-path-escape": TarBuilder().file(f"{UP}{parent_rel}/.wh.{canary.name}"),
        "whiteout-through-symlink": TarBuilder().symlink("s", str(canary)).file("s/.wh.secret"),
        "opaque-through-symlink": TarBuilder().symlink("s", str(canary))
        .file("s/.wh..wh..opq").file("s/new", "x"),
        "chmod-through-symlink": TarBuilder().symlink("s", str(canary)).dir("s", 0o777),
    }
    pax = TarBuilder()
    info = tarfile.TarInfo("innocent")
    info.pax_headers = {"path": f"{UP}{rel}/pax"}
    info.size = 1
    pax.tar.addfile(info, io.BytesIO(b"x"))
    tars["pax-path-override"] = pax
    paxlink = TarBuilder()
    info = tarfile.TarInfo("innocent")
    info.type = tarfile.LNKTYPE
    info.pax_headers = {"linkpath": secret}
    paxlink.tar.addfile(info)
    paxlink.file("innocent", "pwned")
    tars["pax-linkpath-override"] = paxlink
    tars["gnu-longname-escape"] = TarBuilder(tarfile.GNU_FORMAT).file(
        f"{UP}{rel}/" + "g" * 120, "x")
    return {name: builder.bytes() for name, builder in tars.items()}


def _good_tar() -> bytes:
    return (TarBuilder().file("one", "1" * 700).file("two", "2" * 100_000)
            .file("three", "3" * 10).bytes())


def _fix_checksum(data: bytearray, offset: int) -> None:
    header = data[offset:offset + 512]
    header[148:156] = b" " * 8
    data[offset + 148:offset + 156] = b"%06o\0 " % sum(header)


def _broken_tars() -> dict[str, bytes]:
    good = _good_tar()
    second_header = 512 + 1024            # header + 700 bytes padded to 1024
    corrupt_first = bytearray(good)
    corrupt_first[148:156] = b"0000000\0"                  # wrong checksum
    corrupt_middle = bytearray(good)
    corrupt_middle[second_header + 148:second_header + 156] = b"0000000\0"
    bad_size = bytearray(good)
    bad_size[second_header + 124:second_header + 136] = b"zzzzzzzzzzz\0"   # not octal
    _fix_checksum(bad_size, second_header)   # a well-formed header with a bad field
    huge_size = bytearray(good)
    huge_size[second_header + 124:second_header + 136] = b"77777777777\0"  # 8 GiB, not there
    _fix_checksum(huge_size, second_header)
    return {
        "truncated-in-data": good[:second_header + 512 + 50_000],
        "truncated-in-header": good[:second_header + 200],
        "truncated-after-header": good[:second_header + 512],
        "corrupt-first-header": bytes(corrupt_first),
        "corrupt-middle-header": bytes(corrupt_middle),
        "corrupt-size-field": bytes(bad_size),
        "size-beyond-stream": bytes(huge_size),
        "garbage": os.urandom(8192),
    }


@pytest.fixture
def guarded(driver, home_and_options):
    """A canary beside the driver home and a witness layer; checks both afterwards."""
    home = Path(home_and_options[0])
    canary = home.parent / "canary"
    canary.mkdir()
    write(canary, "secret", "do not touch")
    write(canary, "sub/file", "nested")
    os.chmod(canary, 0o755)
    driver.create("witness")
    with mounted(driver, "witness") as root:
        write(root, "w", "witness data")
        witness = snapshot(root)
    state = {
        "canary": tree_listing(canary),
        "siblings": sorted(os.listdir(home.parent)),
        "canary_mode": os.stat(canary).st_mode,
        "home": _state_paths(driver.home),
    }
    yield canary
    assert tree_listing(canary) == state["canary"], "the canary beside the home was changed"
    assert os.stat(canary).st_mode == state["canary_mode"]
    assert os.stat(canary / "secret").st_nlink == 1, "something hard-linked the canary"
    assert (canary / "secret").read_bytes() == b"do not touch"
    assert sorted(os.listdir(home.parent)) == state["siblings"]
    # a driver that finishes removals in the background (devicemapper's queued discards
    # on loop pools) is asked to finish them first: the queue is state in flight
    drain = getattr(driver, "cleanup_deleted", None)
    if drain is not None:
        drain()
    assert _state_paths(driver.home) == state["home"], "driver state outside the layer changed"
    assert driver.exists("witness")
    with mounted(driver, "witness") as root:
        assert_same_tree(witness, snapshot(root))


def _state_paths(home: Path) -> set[str]:
    """Every path of the driver's state except those of the layer under attack."""
    found = set()
    for dirpath, dirs, files in os.walk(home):
        rel_dir = os.path.relpath(dirpath, home)
        if "victim" in Path(rel_dir).parts:
            dirs[:] = []
            continue
        found.update(os.path.join(rel_dir, n) for n in dirs + files
                     if "victim" not in n)
    return found


def _attack(driver, data: bytes) -> DriverError | None:
    driver.create("victim")
    try:
        driver.apply_diff("victim", None, io.BytesIO(data))
    except DriverError as exc:
        return exc
    return None


@pytest.mark.parametrize("name", sorted(_escape_tars(Path("/x/canary"))))
def test_escape_is_refused_or_contained(driver, guarded, name):
    error = _attack(driver, _escape_tars(guarded)[name])
    if error is None:   # contained: whatever landed is inside the layer, and is sound
        with mounted(driver, "victim") as root:
            assert root.is_dir()
            assert_listable(root)
    driver.remove("victim")
    driver.create("victim")     # the id is usable again
    driver.remove("victim")


@pytest.mark.parametrize("name", sorted(_broken_tars()))
def test_truncated_or_corrupt_tar_raises(driver, guarded, name):
    error = _attack(driver, _broken_tars()[name])
    assert error is not None, f"{name}: a broken tar was accepted in silence"
    assert str(error)
    driver.remove("victim")


def test_good_tar_passes_the_same_guard(driver, guarded):
    """The guard itself: an honest tar applies and returns its bytes."""
    assert _attack(driver, _good_tar()) is None
    with mounted(driver, "victim") as root:
        assert (root / "two").read_bytes() == b"2" * 100_000
        assert_listable(root)
    driver.remove("victim")

"""Known escape attempts through every host driver's apply_diff, each checked
like a fuzz example (canary, parent layer and home unchanged) and each
expected to be refused. Breakouts found by the fuzzer are added here."""
from __future__ import annotations

import io
import tarfile

import pytest

from .fuzzing import Session


def _tar(*members) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, kind, extra in members:
            info = tarfile.TarInfo(name)
            data = b""
            if kind == "file":
                data = extra or b"pwned\n"
                info.size = len(data)
            elif kind == "dir":
                info.type = tarfile.DIRTYPE
            elif kind == "sym":
                info.type, info.linkname = tarfile.SYMTYPE, extra
            elif kind == "lnk":
                info.type, info.linkname = tarfile.LNKTYPE, extra
            elif kind == "pax":
                info.size, data = len(b"x"), b"x"
                info.pax_headers = extra
            elif kind in ("paxlnk", "paxsym"):         # innocent link target, PAX overrides it
                info.type = tarfile.LNKTYPE if kind == "paxlnk" else tarfile.SYMTYPE
                info.linkname = "d/f"
                info.pax_headers = extra
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


# (id, members) with CANARY / REL replaced by the canary's absolute / relative path
CASES = [
    ("write-through-parent-abs-symlink", [("out/file", "file", None)]),
    ("write-through-parent-rel-symlink", [("rel/file", "file", None)]),
    ("write-through-parent-deep-symlink", [("esc/file", "file", None)]),
    ("write-through-parent-dotdot-symlink", [("up/canary/file", "file", None)]),
    ("new-abs-symlink-then-write", [("s", "sym", "CANARY"), ("s/file", "file", None)]),
    ("new-rel-symlink-then-write", [("s", "sym", "REL"), ("s/new", "file", None)]),
    ("symlink-chain-out", [("a", "sym", "b"), ("b", "sym", "REL"), ("a/file", "file", None)]),
    ("symlink-in-dir-out", [("d2/s", "sym", "../" * 10 + "tmp"), ("d2/s/evil", "file", None)]),
    ("hardlink-to-canary-abs", [("h2", "lnk", "CANARY/file")]),
    ("hardlink-to-canary-rel", [("h2", "lnk", "REL/file")]),
    ("hardlink-through-parent-symlink", [("h2", "lnk", "out/file")]),
    ("hardlink-then-write", [("h2", "lnk", "out/file"), ("h2", "file", b"overwritten\n")]),
    ("whiteout-through-symlink", [("out/.wh.file", "file", b"")]),
    ("opaque-through-symlink", [("out/.wh..wh..opq", "file", b"")]),
    ("whiteout-dotdot", [(".wh..", "file", b""), ("d/.wh..", "file", b"")]),
    ("pax-path-escape", [("innocent", "pax", {"path": "../canary/file"})]),
    ("pax-path-through-symlink", [("innocent", "pax", {"path": "out/file"})]),
    ("pax-linkpath-escape", [("innocent", "paxlnk", {"linkpath": "REL/file"})]),
    ("pax-linkpath-abs", [("innocent", "paxlnk", {"linkpath": "CANARY/file"})]),
    ("pax-symlink-then-write", [("s", "paxsym", {"linkpath": "CANARY"}), ("s/file", "file", None)]),
    ("dir-replaced-by-symlink", [("d3/", "dir", None), ("d3", "sym", "CANARY"),
                                 ("d3/file", "file", None)]),
    ("dotdot-name", [("../canary/file", "file", None)]),
    ("absolute-name", [("CANARY/file", "file", None)]),
    # found by the fuzz campaign (overlay2, seed 201 index 28): a hard link to a name
    # the tar had deleted linked overlay2's whiteout device, a second deletion marker
    # in a new directory, listed by the merged view but not stat-able
    ("hardlink-to-whiteout", [(".wh.rel", "file", b""), ("n/b", "lnk", "rel")]),
    ("hardlink-to-opaqued", [(".wh..wh..opq", "file", b""), ("n/b", "lnk", "rel")]),
]


@pytest.fixture
def session(driver, home_and_options):
    s = Session(driver, home_and_options[0])
    try:
        yield s
    finally:
        s.close()


def test_escapes_are_refused(session):
    """Every case in one test per driver: one home (and btrfs filesystem) for all."""
    for case in CASES:
        _one(session, case)


def _one(session, case):
    name, members = case

    def fix(value):
        if isinstance(value, str):
            return value.replace("CANARY", str(session.canary)).replace("REL", session.rel)
        if isinstance(value, dict):
            return {k: fix(v) for k, v in value.items()}
        return value
    data = _tar(*[(fix(n), kind, fix(extra)) for n, kind, extra in members])
    # needs the parent's symlinks: without the parent the names are just new names;
    # overlay2 applies into the upper dir, where the parent's symlinks are not, so
    # there the tar makes a directory shadowing the symlink (no escape either way)
    via_parent = name.startswith(("write-through-parent", "hardlink-through", "whiteout-through",
                                  "opaque-through", "pax-path-through", "hardlink-then"))
    for with_parent in (True, False):
        before = session.errors
        try:
            session.run(data, with_parent)     # canary, parent and home checked inside
        except AssertionError as exc:
            raise AssertionError(f"case {name} (with_parent={with_parent}): {exc}") from None
        if not via_parent or (with_parent and session.driver.name != "overlay2"):
            assert session.errors == before + 1, f"{name}: applied without an error"

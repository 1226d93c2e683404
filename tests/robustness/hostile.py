"""Hypothesis strategies for hostile layer tars, aimed at a canary tree.

A stream is a list of entries (regular files, directories, symlinks, hard
links, device nodes, fifos) whose names are made of dangerous pieces (``..``,
``/``, ``.``, whiteout prefixes, very long names, non-UTF-8 bytes), whose
symlink and hard link targets point at the canary (absolute, relative, via
symlinks the parent layer holds), optionally with PAX overrides of
path/linkpath/size/uid, followed by a stream-level mutation: truncation, a
corrupt byte, garbage after the end, a missing end marker.
"""
from __future__ import annotations

import io
import tarfile

from hypothesis import assume
from hypothesis import strategies as st

BLOCK = 512

PIECES = ["a", "b", "d", "f", "sub", "out", "rel", "esc", "up", "self", "loop", "h",
          "a", "b", "d", "f", "out", "rel", "up",
          "..", ".", "", ".wh.a", ".wh.d", ".wh.f", ".wh.out", ".wh..wh..opq", ".wh.",
          ".wh..", ".wh...", ".wh..wh.plnk", ".wh..wh..wh..opq", "canary", "x" * 255,
          "y" * 300, "\udcff\udcfe", " ", "new\nline"]

KINDS = ["file", "file", "dir", "dir", "sym", "sym", "lnk", "lnk", "chr", "blk", "fifo"]
MODES = [0o644, 0o755, 0o600, 0o000, 0o4755, 0o2755, 0o1777, 0o7777]


# names that pass the first checks, so that a tar builds structure (directories,
# symlinks, hard links) before its one hostile entry
BENIGN = ["a", "b", "d", "f", "sub", "out", "rel", "esc", "up", "self", "loop", "h", ".wh.a",
          ".wh.f", ".wh..wh..opq", "x" * 255]


def benign_names() -> st.SearchStrategy[str]:
    return st.lists(st.sampled_from(BENIGN), min_size=1, max_size=4).map("/".join)


def names() -> st.SearchStrategy[str]:
    inner = st.lists(st.sampled_from(PIECES), min_size=1, max_size=4).map("/".join)
    # mostly plain relative names, so that most tars get past the first checks
    prefix = st.sampled_from([""] * 12 + ["./", "/", "//", "../"])
    suffix = st.sampled_from([""] * 6 + ["/", "/."])
    plain = st.builds(lambda p, n, s: p + n + s, prefix, inner, suffix)
    long = st.integers(40, 80).map(lambda n: "long/" * n + "f")
    return st.integers(0, 19).flatmap(lambda k: long if k == 0 else plain)


def link_targets(canary: str, rel: str) -> st.SearchStrategy[str]:
    """Symlink targets: the canary absolute and relative (several depths), in-layer names."""
    tails = st.sampled_from(["", "/file", "/dir", "/dir/sub/deep", "/link", "/rootlink/tmp",
                             "/nothere", "/fifo"])
    return st.one_of(
        tails.map(lambda t: canary + t),
        st.builds(lambda k, t: "../" * k + "canary" + t, st.integers(0, 12), tails),
        tails.map(lambda t: rel + t),
        st.sampled_from(["/", "/tmp", "/etc/passwd", ".", "..", "", "../..", "a", "d/f",
                         "out", "rel/file", "esc", "loop", "self/self/a"]),
        names(),
    )


def hardlink_targets(canary: str, rel: str) -> st.SearchStrategy[str]:
    return st.one_of(
        names(),
        st.sampled_from([canary + "/file", canary + "/dir/hard", rel + "/file",
                         "../canary/file", "out/file", "rel/file", "esc", "out", "h", "d/f",
                         "d", "", ".", "nothere", "up/canary/file"]),
    )


@st.composite
def entries(draw, canary: str, rel: str, benign: bool = False) -> tarfile.TarInfo:
    kind = draw(st.sampled_from(KINDS))
    info = tarfile.TarInfo(draw(benign_names() if benign else names()))
    info.mode = draw(st.sampled_from(MODES))
    info.mtime = draw(st.sampled_from([0, 1_700_000_000, 2**33]))
    info.uid, info.gid = draw(st.sampled_from([(0, 0), (1000, 1000), (65534, 65534)]))
    data = b""
    if kind == "file":
        info.type = tarfile.REGTYPE
        data = draw(st.binary(max_size=64))
        info.size = len(data)
        if draw(st.integers(0, 9)) == 0:         # declared far bigger than what follows
            info.size = draw(st.sampled_from([1 << 33, 1 << 40, 10**15]))
    elif kind == "dir":
        info.type = tarfile.DIRTYPE
    elif kind == "sym":
        info.type = tarfile.SYMTYPE
        info.linkname = draw(benign_names() | link_targets(canary, rel) if benign
                             else link_targets(canary, rel))
    elif kind == "lnk":
        info.type = tarfile.LNKTYPE
        info.linkname = draw(benign_names() if benign else hardlink_targets(canary, rel))
    else:
        info.type = {"chr": tarfile.CHRTYPE, "blk": tarfile.BLKTYPE, "fifo": tarfile.FIFOTYPE}[kind]
        info.devmajor, info.devminor = draw(st.sampled_from([(1, 3), (0, 0), (7, 0), (8, 0)]))
    pax = draw(st.dictionaries(
        st.sampled_from(["path", "linkpath", "size", "uid", "SCHILY.xattr.user.x",
                         "SCHILY.xattr.trusted.overlay.opaque"]),
        st.one_of(names(), link_targets(canary, rel),
                  st.sampled_from(["0", "1", "-1", "abc", "99999999999999999999", "4294967296",
                                   "y", ""])),
        max_size=2)) if not benign and draw(st.integers(0, 9)) == 0 else {}
    info.pax_headers = pax
    return info, data


def encode(members: list[tuple[tarfile.TarInfo, bytes]], fmt: int) -> bytes:
    out = io.BytesIO()
    for info, data in members:
        try:
            out.write(info.tobuf(fmt, "utf-8", "surrogateescape"))
        except (ValueError, UnicodeError):
            assume(False)                 # tarfile cannot encode it (e.g. a NUL in a field)
        if data:
            out.write(data + b"\0" * (-len(data) % BLOCK))
    out.write(b"\0" * (2 * BLOCK))
    return out.getvalue()


@st.composite
def streams(draw, canary: str, rel: str) -> bytes:
    if draw(st.booleans()):          # all wild
        members = draw(st.lists(entries(canary, rel), min_size=1, max_size=8))
    else:                            # plain structure, then one wild entry somewhere in it
        members = draw(st.lists(entries(canary, rel, benign=True), min_size=1, max_size=10))
        members.insert(draw(st.integers(0, len(members))), draw(entries(canary, rel)))
    if draw(st.booleans()) and members:
        members = members + [draw(st.sampled_from(members))]        # a duplicate entry
    fmt = draw(st.sampled_from([tarfile.PAX_FORMAT, tarfile.PAX_FORMAT, tarfile.GNU_FORMAT]))
    data = encode(members, fmt)
    mutation = draw(st.sampled_from(["none"] * 12 + ["truncate", "flip", "garbage",
                                     "noend", "header"]))
    if mutation == "truncate":
        data = data[:draw(st.integers(BLOCK, len(data) - 1) | st.integers(0, len(data) - 1))]
    elif mutation == "flip":
        pos = draw(st.integers(0, len(data) - 1))
        data = data[:pos] + bytes([draw(st.integers(0, 255))]) + data[pos + 1:]
    elif mutation == "header":                 # corrupt the size/checksum/type fields
        start = BLOCK * draw(st.integers(0, max(0, len(data) // BLOCK - 3)))
        field = draw(st.sampled_from([124, 148, 156, 257, 345]))
        junk = draw(st.binary(min_size=1, max_size=12))
        pos = start + field
        data = data[:pos] + junk + data[pos + len(junk):]
    elif mutation == "garbage":
        data += draw(st.binary(min_size=1, max_size=1024))
    elif mutation == "noend":
        data = data[:-2 * BLOCK]
    return data

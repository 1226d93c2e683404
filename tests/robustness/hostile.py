"""Hostile layer tars aimed at a canary tree: the vocabulary, and the hypothesis strategies.

A stream is a list of entries (regular files, directories, symlinks, hard
links, device nodes, fifos) whose names are made of dangerous pieces (``..``,
``/``, ``.``, whiteout prefixes, very long names, non-UTF-8 bytes), whose
symlink and hard link targets point at the canary (absolute, relative, via
symlinks the parent layer holds), optionally with PAX overrides of
path/linkpath/size/uid, followed by a stream-level mutation: truncation, a
corrupt byte, garbage after the end, a missing end marker.

The tables below are the one vocabulary: these strategies draw from them for
the shrinking hypothesis test, and hostile_random.py builds the same streams
from a seeded ``random.Random`` for the long campaign (bench/fuzz_apply.py).
A change to what a hostile tar may hold goes here, and both follow.
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
MTIMES = [0, 1_700_000_000, 2**33]
OWNERS = [(0, 0), (1000, 1000), (65534, 65534)]
DEVICES = [(1, 3), (0, 0), (7, 0), (8, 0)]
DEVICE_TYPES = {"chr": tarfile.CHRTYPE, "blk": tarfile.BLKTYPE, "fifo": tarfile.FIFOTYPE}
MAX_DATA = 64
HUGE_SIZES = [1 << 33, 1 << 40, 10**15]         # declared far bigger than what follows

# names: mostly plain relative ones, so that most tars get past the first checks;
# one in LONG_ONE_IN is "long/" repeated LONG_REPEATS times
MAX_PIECES = 4
PREFIXES = [""] * 12 + ["./", "/", "//", "../"]
SUFFIXES = [""] * 6 + ["/", "/."]
LONG_ONE_IN = 20
LONG_REPEATS = (40, 80)

# names that pass the first checks, so that a tar builds structure (directories,
# symlinks, hard links) before its one hostile entry
BENIGN = ["a", "b", "d", "f", "sub", "out", "rel", "esc", "up", "self", "loop", "h", ".wh.a",
          ".wh.f", ".wh..wh..opq", "x" * 255]

# symlink targets: the canary absolute and relative (up to MAX_UPS "../"), in-layer names
TAILS = ["", "/file", "/dir", "/dir/sub/deep", "/link", "/rootlink/tmp", "/nothere", "/fifo"]
MAX_UPS = 12
SYMLINK_FIXED = ["/", "/tmp", "/etc/passwd", ".", "..", "", "../..", "a", "d/f", "out",
                 "rel/file", "esc", "loop", "self/self/a"]
# hard link targets besides names(); CANARY and REL stand for the canary's paths
HARDLINK_FIXED = ["CANARY/file", "CANARY/dir/hard", "REL/file", "../canary/file", "out/file",
                  "rel/file", "esc", "out", "h", "d/f", "d", "", ".", "nothere",
                  "up/canary/file"]

# PAX overrides on one wild entry in PAX_ONE_IN, at most PAX_MAX keys
PAX_ONE_IN = 10
PAX_MAX = 2
PAX_KEYS = ["path", "linkpath", "size", "uid", "SCHILY.xattr.user.x",
            "SCHILY.xattr.trusted.overlay.opaque"]
PAX_VALUES = ["0", "1", "-1", "abc", "99999999999999999999", "4294967296", "y", ""]

# a stream: all wild (up to MAX_WILD entries), or up to MAX_BENIGN benign ones with
# one wild entry somewhere in them; maybe a duplicate entry; then a mutation
MAX_WILD = 8
MAX_BENIGN = 10
FORMATS = [tarfile.PAX_FORMAT, tarfile.PAX_FORMAT, tarfile.GNU_FORMAT]
MUTATIONS = ["none"] * 12 + ["truncate", "flip", "garbage", "noend", "header"]
HEADER_FIELDS = [124, 148, 156, 257, 345]      # size, checksum, type, magic, prefix
MAX_JUNK = 12
MAX_GARBAGE = 1024


class Unencodable(ValueError):
    """tarfile cannot encode the entry (e.g. a NUL in a field): draw another stream."""


def hardlink_fixed(canary: str, rel: str) -> list[str]:
    return [t.replace("CANARY", canary).replace("REL", rel) for t in HARDLINK_FIXED]


def benign_names() -> st.SearchStrategy[str]:
    return st.lists(st.sampled_from(BENIGN), min_size=1, max_size=MAX_PIECES).map("/".join)


def names() -> st.SearchStrategy[str]:
    inner = st.lists(st.sampled_from(PIECES), min_size=1, max_size=MAX_PIECES).map("/".join)
    prefix = st.sampled_from(PREFIXES)
    suffix = st.sampled_from(SUFFIXES)
    plain = st.builds(lambda p, n, s: p + n + s, prefix, inner, suffix)
    long = st.integers(*LONG_REPEATS).map(lambda n: "long/" * n + "f")
    return st.integers(0, LONG_ONE_IN - 1).flatmap(lambda k: long if k == 0 else plain)


def link_targets(canary: str, rel: str) -> st.SearchStrategy[str]:
    """Symlink targets: the canary absolute and relative (several depths), in-layer names."""
    tails = st.sampled_from(TAILS)
    return st.one_of(
        tails.map(lambda t: canary + t),
        st.builds(lambda k, t: "../" * k + "canary" + t, st.integers(0, MAX_UPS), tails),
        tails.map(lambda t: rel + t),
        st.sampled_from(SYMLINK_FIXED),
        names(),
    )


def hardlink_targets(canary: str, rel: str) -> st.SearchStrategy[str]:
    return st.one_of(names(), st.sampled_from(hardlink_fixed(canary, rel)))


@st.composite
def entries(draw, canary: str, rel: str, benign: bool = False) -> tarfile.TarInfo:
    kind = draw(st.sampled_from(KINDS))
    info = tarfile.TarInfo(draw(benign_names() if benign else names()))
    info.mode = draw(st.sampled_from(MODES))
    info.mtime = draw(st.sampled_from(MTIMES))
    info.uid, info.gid = draw(st.sampled_from(OWNERS))
    data = b""
    if kind == "file":
        info.type = tarfile.REGTYPE
        data = draw(st.binary(max_size=MAX_DATA))
        info.size = len(data)
        if draw(st.integers(0, 9)) == 0:
            info.size = draw(st.sampled_from(HUGE_SIZES))
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
        info.type = DEVICE_TYPES[kind]
        info.devmajor, info.devminor = draw(st.sampled_from(DEVICES))
    pax = draw(st.dictionaries(
        st.sampled_from(PAX_KEYS),
        st.one_of(names(), link_targets(canary, rel), st.sampled_from(PAX_VALUES)),
        max_size=PAX_MAX)) if not benign and draw(st.integers(0, PAX_ONE_IN - 1)) == 0 else {}
    info.pax_headers = pax
    return info, data


def encode(members: list[tuple[tarfile.TarInfo, bytes]], fmt: int) -> bytes:
    """The members as a tar stream with its end marker; Unencodable if tarfile refuses one."""
    out = io.BytesIO()
    for info, data in members:
        try:
            out.write(info.tobuf(fmt, "utf-8", "surrogateescape"))
        except (ValueError, UnicodeError) as exc:
            raise Unencodable(str(exc)) from None
        if data:
            out.write(data + b"\0" * (-len(data) % BLOCK))
    out.write(b"\0" * (2 * BLOCK))
    return out.getvalue()


@st.composite
def streams(draw, canary: str, rel: str) -> bytes:
    if draw(st.booleans()):          # all wild
        members = draw(st.lists(entries(canary, rel), min_size=1, max_size=MAX_WILD))
    else:                            # plain structure, then one wild entry somewhere in it
        members = draw(st.lists(entries(canary, rel, benign=True), min_size=1,
                                max_size=MAX_BENIGN))
        members.insert(draw(st.integers(0, len(members))), draw(entries(canary, rel)))
    if draw(st.booleans()) and members:
        members = members + [draw(st.sampled_from(members))]        # a duplicate entry
    fmt = draw(st.sampled_from(FORMATS))
    try:
        data = encode(members, fmt)
    except Unencodable:
        assume(False)
    mutation = draw(st.sampled_from(MUTATIONS))
    if mutation == "truncate":
        data = data[:draw(st.integers(BLOCK, len(data) - 1) | st.integers(0, len(data) - 1))]
    elif mutation == "flip":
        pos = draw(st.integers(0, len(data) - 1))
        data = data[:pos] + bytes([draw(st.integers(0, 255))]) + data[pos + 1:]
    elif mutation == "header":                 # corrupt the size/checksum/type fields
        start = BLOCK * draw(st.integers(0, max(0, len(data) // BLOCK - 3)))
        junk = draw(st.binary(min_size=1, max_size=MAX_JUNK))
        data = overwrite(data, start + draw(st.sampled_from(HEADER_FIELDS)), junk)
    elif mutation == "garbage":
        data += draw(st.binary(min_size=1, max_size=MAX_GARBAGE))
    elif mutation == "noend":
        data = data[:-2 * BLOCK]
    return data


def overwrite(data: bytes, pos: int, junk: bytes) -> bytes:
    return data[:pos] + junk + data[pos + len(junk):]

"""Checking a copied layer against its source, through the drivers' public interface.

Two checks, both on what the layer holds over its parent:

- the change lists name the same additions and deletions. A MODIFY may be listed by one
  driver and not the other for an entry whose attributes did not change (a directory
  above a change, which the contract lets a driver list or not; a file overlayfs copied
  up to link it), so modified paths are compared by what they hold instead;
- every path either list names (directories included) looks the same in both mounted
  layers: type, mode bits, owner, group, mtime to the second (non-directories), device
  number, symlink target, size and content (read from both and compared byte for byte:
  stronger than a hash and cheaper than SHA-256 of both), the xattrs a round trip keeps
  (``user.*``, ``security.capability``), and which of those files are hard links of each
  other; a deleted path is absent from both.
"""
from __future__ import annotations

import contextlib
import os
import stat
from dataclasses import dataclass
from typing import Iterator

from graphdrivers.driver import Change, ChangeKind, Driver
from graphdrivers.errors import DriverError

_CHUNK = 1 << 20
_KEPT_XATTRS = ("user.", "security.capability")


class VerificationFailed(DriverError):
    """A copied layer differs from its source (the message names the first paths)."""


@dataclass(frozen=True)
class EntryFacts:
    kind: str
    mode: int
    uid: int
    gid: int
    mtime: int | None
    rdev: int
    size: int
    link: str | None
    xattrs: tuple[tuple[str, bytes], ...]


@contextlib.contextmanager
def mounted(driver: Driver, layer_id: str) -> Iterator[str]:
    root = driver.mount(layer_id)
    try:
        yield os.fspath(root)
    finally:
        driver.unmount(layer_id)


def verify_layer(source: Driver, target: Driver, layer_id: str,
                 want: list[Change] | None = None) -> int:
    """Raise VerificationFailed unless ``layer_id`` in ``target`` matches ``source``
    (``want``: the source's changes, when already listed); return the paths compared."""
    with mounted(source, layer_id) as src, mounted(target, layer_id) as dst:
        if want is None:
            want = source.changes(layer_id)
        got = target.changes(layer_id)
        _same_changes(layer_id, _significant(want), _significant(got))
        paths = sorted({c.path for c in want} | {c.path for c in got})
        _same_entries(layer_id, src, dst, paths)
        return len(paths)


def _significant(changes: list[Change]) -> set[tuple[str, ChangeKind]]:
    """The additions and deletions (see the module docstring)."""
    return {(c.path, c.kind) for c in changes if c.kind != ChangeKind.MODIFY}


def _same_changes(layer_id: str, want: set, got: set) -> None:
    if want == got:
        return
    missing = sorted(f"{'CAD'[k]} {p}" for p, k in want - got)
    extra = sorted(f"{'CAD'[k]} {p}" for p, k in got - want)
    raise VerificationFailed(
        f"layer {layer_id}: the copy's changes differ from the source's"
        + (f"; missing: {', '.join(missing[:5])}" if missing else "")
        + (f"; unexpected: {', '.join(extra[:5])}" if extra else ""))


def _same_entries(layer_id: str, src: str, dst: str, paths: list[str]) -> None:
    bad: list[str] = []
    src_links: dict[tuple[int, int], list[str]] = {}
    dst_links: dict[tuple[int, int], list[str]] = {}
    for path in paths:
        a = facts(src + path, src_links, path)
        b = facts(dst + path, dst_links, path)
        if a != b:
            bad.append(f"{path} ({_difference(a, b)})")
        elif a is not None and a.kind == "file" and not _same_content(src + path, dst + path):
            bad.append(f"{path} (content differs)")
            if len(bad) >= 5:
                break
    if not bad:
        groups = lambda links: {frozenset(g) for g in links.values() if len(g) > 1}  # noqa: E731
        if groups(src_links) != groups(dst_links):
            bad.append("hard links differ")
    if bad:
        raise VerificationFailed(f"layer {layer_id}: the copy differs from the source at "
                                 + "; ".join(bad))


def facts(path: str, links: dict[tuple[int, int], list[str]] | None = None,
          rel: str = "") -> EntryFacts | None:
    """What a round trip keeps of one entry; None when it does not exist."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    mode = st.st_mode
    regular = stat.S_ISREG(mode)
    if regular and links is not None and st.st_nlink > 1:
        links.setdefault((st.st_dev, st.st_ino), []).append(rel)
    return EntryFacts(
        kind=_kind(mode), mode=stat.S_IMODE(mode), uid=st.st_uid, gid=st.st_gid,
        mtime=None if stat.S_ISDIR(mode) else int(st.st_mtime),
        rdev=st.st_rdev if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else 0,
        size=st.st_size if regular else 0,
        link=os.readlink(path) if stat.S_ISLNK(mode) else None,
        xattrs=_xattrs(path))


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISREG, "file"), (stat.S_ISDIR, "dir"), (stat.S_ISLNK, "symlink"),
                       (stat.S_ISCHR, "char"), (stat.S_ISBLK, "block"), (stat.S_ISFIFO, "fifo"),
                       (stat.S_ISSOCK, "socket")):
        if test(mode):
            return name
    return "other"


def _same_content(a: str, b: str) -> bool:
    """Whether two files of the same size hold the same bytes."""
    with open(a, "rb", buffering=0) as fa, open(b, "rb", buffering=0) as fb:
        while True:
            block = fa.read(_CHUNK)
            if block != fb.read(_CHUNK):
                return False
            if not block:
                return True


def _xattrs(path: str) -> tuple[tuple[str, bytes], ...]:
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return ()
    kept = []
    for name in sorted(names):
        if name.startswith(_KEPT_XATTRS):
            with contextlib.suppress(OSError):
                kept.append((name, os.getxattr(path, name, follow_symlinks=False)))
    return tuple(kept)


def _difference(a: EntryFacts | None, b: EntryFacts | None) -> str:
    if a is None or b is None:
        return "missing in the copy" if b is None else "absent in the source"
    fields = [name for name in EntryFacts.__dataclass_fields__
              if getattr(a, name) != getattr(b, name)]
    return ", ".join(f"{name}: {getattr(a, name)!r} != {getattr(b, name)!r}"
                     if name != "xattrs" else f"{name} differ" for name in fields)

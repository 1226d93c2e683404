"""Native changes and diff size from a layer's upper (``diff``) directory.

Only the upper directory is walked, so the cost follows the size of the
change, not of the image below it. The lower layers are consulted by name
(a few ``lstat`` calls per changed entry) to tell ADD from MODIFY and to
list what an opaque directory hides, resolving names the way overlayfs does:
the topmost entry wins, a whiteout hides everything below it, and a
directory merges with the directories below it until one is opaque or a
non-directory is met.
"""
from __future__ import annotations

import os
import stat
from typing import Sequence

from graphdrivers.changes import counted_bytes
from graphdrivers.driver import Change, ChangeKind

from .whiteout import is_opaque, is_whiteout


def _lstat(path: str) -> os.stat_result | None:
    try:
        return os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None


def lookup(lower_dirs: Sequence[str], name: str) -> tuple[os.stat_result | None, list[str]]:
    """Resolve ``name`` in a merged lower directory.

    ``lower_dirs`` are the real directories (topmost first) that make up the
    merged directory. Returns the stat of the visible entry (None when absent
    or whited out) and, for a directory, the real directories that make it up.
    """
    top: os.stat_result | None = None
    parts: list[str] = []
    for lower in lower_dirs:
        path = os.path.join(lower, name)
        st = _lstat(path)
        if st is None:
            continue
        if is_whiteout(st):
            break
        if not stat.S_ISDIR(st.st_mode):
            if top is None:
                top = st
            break                         # a non-directory hides whatever lies below
        if top is None:
            top = st
        parts.append(path)
        if is_opaque(path):
            break
    return top, parts


def merged_names(lower_dirs: Sequence[str]) -> set[str]:
    """Names visible in a merged lower directory (whited-out names excluded)."""
    seen: set[str] = set()
    visible: set[str] = set()
    for lower in lower_dirs:
        try:
            entries = list(os.scandir(lower))
        except (FileNotFoundError, NotADirectoryError):
            continue
        for entry in entries:
            if entry.name in seen:
                continue
            seen.add(entry.name)
            if not is_whiteout(entry.stat(follow_symlinks=False)):
                visible.add(entry.name)
    return visible


def native_changes(upper: str, lower_roots: Sequence[str]) -> list[Change]:
    """What changed in a layer against its parent, from its upper dir and its lowers.

    An opaque directory (or any directory inside one) replaces the lower
    directory entirely: what the lowers had there and the upper lacks is
    reported as deleted, which is how a directory removed and created again
    shows up.
    """
    changes: list[Change] = []

    def walk(real: str, rel: str, lowers: list[str], opaque: bool) -> None:
        entries = list(os.scandir(real))
        present: set[str] = set()
        for entry in entries:
            st = entry.stat(follow_symlinks=False)
            path = rel + entry.name
            if is_whiteout(st):
                if lowers and not opaque and lookup(lowers, entry.name)[0] is not None:
                    changes.append(Change(path, ChangeKind.DELETE))
                continue
            present.add(entry.name)
            below, below_dirs = lookup(lowers, entry.name) if lowers else (None, [])
            changes.append(Change(path, ChangeKind.MODIFY if below is not None
                                  else ChangeKind.ADD))
            if stat.S_ISDIR(st.st_mode):
                child_opaque = opaque or is_opaque(entry.path)
                walk(entry.path, path + "/", below_dirs, child_opaque)
        if opaque and lowers:
            for name in merged_names(lowers) - present:
                changes.append(Change(rel + name, ChangeKind.DELETE))

    # overlayfs always merges a layer's root with the roots below it
    walk(upper, "/", list(lower_roots), False)
    changes.sort(key=lambda c: c.path)
    return changes


def upper_size(upper: str) -> int:
    """The diff size from the upper dir: every regular file, hard links counted once
    (the rule of graphdrivers.changes.changes_size). Needs no look at the lowers."""
    total = 0
    seen: set[tuple[int, int]] = set()
    stack = [upper]
    while stack:
        for entry in os.scandir(stack.pop()):
            st = entry.stat(follow_symlinks=False)
            if stat.S_ISDIR(st.st_mode):
                stack.append(entry.path)
            else:                     # whiteouts, symlinks, devices: counted as nothing
                total += counted_bytes(st, seen)
    return total

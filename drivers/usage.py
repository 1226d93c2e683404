"""Disk usage of a tree or of some paths in it, as ``du`` counts it: st_blocks * 512 of
each inode once (hard links count once), never crossing into another mount."""
from __future__ import annotations

import os
from typing import Iterable

from graphdrivers.capabilities import Usage


def tree_usage(root: str | os.PathLike) -> Usage:
    """Everything under ``root``, ``root`` itself included."""
    seen: set[tuple[int, int]] = set()
    size = _count(os.lstat(root), seen)
    dev = os.lstat(root).st_dev
    stack = [os.fspath(root)]
    while stack:
        with os.scandir(stack.pop()) as entries:
            for entry in entries:
                st = entry.stat(follow_symlinks=False)
                if st.st_dev != dev:
                    continue
                size += _count(st, seen)
                if entry.is_dir(follow_symlinks=False):
                    stack.append(entry.path)
    return Usage(size, len(seen))


def paths_usage(root: str | os.PathLike, paths: Iterable[str]) -> Usage:
    """The entries ``paths`` (absolute inside ``root``: "/etc/hosts") that exist; an
    entry that is a directory counts alone, not its contents."""
    seen: set[tuple[int, int]] = set()
    size = 0
    base = os.fspath(root).rstrip("/")
    for path in paths:
        try:
            size += _count(os.lstat(base + path), seen)
        except FileNotFoundError:
            continue
    return Usage(size, len(seen))


def _count(st: os.stat_result, seen: set[tuple[int, int]]) -> int:
    key = (st.st_dev, st.st_ino)
    if key in seen:
        return 0
    seen.add(key)
    return st.st_blocks * 512

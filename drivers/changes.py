"""Comparing a layer tree with its parent tree (Docker's naive ChangesDirs).

- an entry only in the layer is ADD (with every entry below it), an entry only
  in the parent is one DELETE (its children are not listed);
- an entry in both is MODIFY when it differs: directories by mode, owner, group
  and xattrs; everything else also by device number, size and mtime, and regular
  files by xattrs too. The xattrs compared are the ones a layer tar keeps
  (``user.*`` and ``security.capability``; Docker compares the capability only, so
  an xattr-only change was lost from the diff and from a migrated copy);
- a directory that is itself unchanged but holds changes is listed as MODIFY,
  so the tar recreates it with its attributes before its contents.

mtimes are compared to the nanosecond. Docker tolerates a zero nanosecond
part (a file unpacked from a tar) and so sleeps until the next second after
each diff; here a layer is always compared with the tree it was copied or
snapshotted from, where times are exact, so that trick is not needed.
"""
from __future__ import annotations

import errno
import os
import stat

from graphdrivers.driver import Change, ChangeKind

_CAP = "security.capability"
_USER = "user."


def _entries(path: bytes) -> dict[bytes, os.stat_result]:
    result = {}
    try:
        with os.scandir(path) as it:
            names = [e.name for e in it]
    except FileNotFoundError:
        return result
    for name in names:
        try:
            result[name] = os.lstat(path + b"/" + name)
        except FileNotFoundError:
            pass
    return result


def _kept_xattrs(path: bytes) -> list[tuple[str, bytes]] | None:
    """The xattrs a layer tar keeps, sorted (None: the filesystem has none)."""
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError as exc:
        if exc.errno in (errno.ENOTSUP, errno.ENOENT):
            return None
        raise
    kept = []
    for name in sorted(names):
        if name.startswith(_USER) or name == _CAP:
            try:
                kept.append((name, os.getxattr(path, name, follow_symlinks=False)))
            except OSError as exc:
                if exc.errno not in (errno.ENODATA, errno.ENOENT):
                    raise
    return kept or None


def _differs(new: os.stat_result, old: os.stat_result, new_path: bytes, old_path: bytes) -> bool:
    if (new.st_mode != old.st_mode or new.st_uid != old.st_uid or new.st_gid != old.st_gid):
        return True
    is_dir = stat.S_ISDIR(new.st_mode)
    if not is_dir and (new.st_rdev != old.st_rdev or new.st_size != old.st_size
                       or new.st_mtime_ns != old.st_mtime_ns):
        return True
    if is_dir or stat.S_ISREG(new.st_mode):   # the only kinds user.* xattrs may sit on
        return _kept_xattrs(new_path) != _kept_xattrs(old_path)
    return False


def _add_all(path: bytes, rel: bytes, out: list[tuple[bytes, ChangeKind]]) -> None:
    for name, st in _entries(path).items():
        child_rel = rel + b"/" + name
        out.append((child_rel, ChangeKind.ADD))
        if stat.S_ISDIR(st.st_mode):
            _add_all(path + b"/" + name, child_rel, out)


def _compare(new: bytes, old: bytes | None, rel: bytes,
             out: list[tuple[bytes, ChangeKind]]) -> bool:
    """Append the changes below ``rel``; True if there were any."""
    new_entries = _entries(new)
    old_entries = _entries(old) if old is not None else {}
    changed = False
    for name, nst in new_entries.items():
        child_rel = rel + b"/" + name
        new_child = new + b"/" + name
        ost = old_entries.get(name)
        new_is_dir = stat.S_ISDIR(nst.st_mode)
        if ost is None:
            out.append((child_rel, ChangeKind.ADD))
            if new_is_dir:
                _add_all(new_child, child_rel, out)
            changed = True
            continue
        old_child = old + b"/" + name  # type: ignore[operator]
        old_is_dir = stat.S_ISDIR(ost.st_mode)
        if _differs(nst, ost, new_child, old_child):
            out.append((child_rel, ChangeKind.MODIFY))
            changed = True
            if new_is_dir and old_is_dir:
                _compare(new_child, old_child, child_rel, out)
            elif new_is_dir:                     # a file became a directory
                _add_all(new_child, child_rel, out)
        elif new_is_dir:
            mark = len(out)
            if _compare(new_child, old_child, child_rel, out):
                out.insert(mark, (child_rel, ChangeKind.MODIFY))
                changed = True
    for name in old_entries:
        if name not in new_entries:
            out.append((rel + b"/" + name, ChangeKind.DELETE))
            changed = True
    return changed


def compare_trees(layer_root: str | os.PathLike,
                  parent_root: str | os.PathLike | None) -> list[Change]:
    """Changes of ``layer_root`` against ``parent_root`` (None: everything is ADD), sorted."""
    raw: list[tuple[bytes, ChangeKind]] = []
    new = os.fsencode(layer_root).rstrip(b"/") or b"/"
    old = None if parent_root is None else (os.fsencode(parent_root).rstrip(b"/") or b"/")
    _compare(new, old, b"", raw)
    changes = [Change(os.fsdecode(path), kind) for path, kind in raw]
    changes.sort(key=lambda c: c.path)
    return changes


def changes_size(root: str | os.PathLike, changes: list[Change]) -> int:
    """Bytes of every added or modified regular file, hard links counted once.

    Docker's ChangesSize also counts symlink lengths; we count regular files
    only so that a layer's diff_size equals what apply_diff of its diff returns.
    """
    base = os.fsencode(root).rstrip(b"/")
    seen: set[tuple[int, int]] = set()
    total = 0
    for change in changes:
        if change.kind == ChangeKind.DELETE:
            continue
        try:
            st = os.lstat(base + os.fsencode(change.path))
        except FileNotFoundError:
            continue
        total += counted_bytes(st, seen)
    return total


def counted_bytes(st: os.stat_result, seen: set[tuple[int, int]]) -> int:
    """What one entry adds to a diff size: a regular file's bytes, once per inode
    (``seen`` remembers the hard-linked ones); nothing for any other type."""
    if not stat.S_ISREG(st.st_mode):
        return 0
    if st.st_nlink > 1:
        key = (st.st_dev, st.st_ino)
        if key in seen:
            return 0
        seen.add(key)
    return st.st_size

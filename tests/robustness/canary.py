"""A canary tree beside a driver's home, and full snapshots to prove nothing changed.

A snapshot records, for every entry under a root: type, mode, owner, size,
nlink, mtime, content (regular files) and link target (symlinks), so a write,
chmod, chown, utime, new hard link or new entry anywhere in the tree shows up.
``inodes`` is the cheap check the fuzz campaign makes after every tar: lstat
only, with the inode number and ctime, which every one of those changes (and a
replaced entry) moves too, so no content has to be read.
"""
from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

Snapshot = dict[str, tuple]


def snapshot(root: str | os.PathLike) -> Snapshot:
    """Every entry under ``root`` (the root included), not following symlinks."""
    root = os.fspath(root)
    out: Snapshot = {".": _record(root)}
    # scandir and string joins, not os.walk and relpath: the fuzz campaign takes
    # two snapshots per tar, a million times
    stack = [(root, "")]
    while stack:
        path, rel = stack.pop()
        with os.scandir(path) as it:
            for entry in it:
                key = rel + entry.name
                out[key] = _record(entry.path)
                if entry.is_dir(follow_symlinks=False):
                    stack.append((entry.path, key + "/"))
    return out


def _record(path: str) -> tuple:
    st = os.lstat(path)
    mode = st.st_mode
    extra: object = None
    if stat.S_ISREG(mode):
        with open(path, "rb") as f:
            extra = hashlib.sha256(f.read()).hexdigest()
    elif stat.S_ISLNK(mode):
        extra = os.readlink(path)
    elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        extra = st.st_rdev
    is_dir = stat.S_ISDIR(mode)
    return (stat.S_IFMT(mode), stat.S_IMODE(mode), st.st_uid, st.st_gid,
            None if is_dir else st.st_size, None if is_dir else st.st_nlink,
            st.st_mtime_ns, extra)


def inodes(root: str | os.PathLike) -> Snapshot:
    """(inode, mode, owner, size, nlink, mtime, ctime) of every entry under ``root``."""
    root = os.fspath(root)
    out: Snapshot = {".": _inode(os.lstat(root))}
    stack = [(root, "")]
    while stack:
        path, rel = stack.pop()
        with os.scandir(path) as it:
            for entry in it:
                key = rel + entry.name
                out[key] = _inode(entry.stat(follow_symlinks=False))
                if entry.is_dir(follow_symlinks=False):
                    stack.append((entry.path, key + "/"))
    return out


def _inode(st: os.stat_result) -> tuple:
    return (st.st_ino, st.st_mode, st.st_uid, st.st_gid, st.st_size, st.st_nlink,
            st.st_mtime_ns, st.st_ctime_ns)


def make_canary(path: Path) -> Path:
    """A small tree of every kind of entry a hostile tar could try to reach."""
    path.mkdir(parents=True)
    (path / "file").write_bytes(b"precious\n")
    (path / "secret").write_bytes(b"do not read\n")
    os.chmod(path / "secret", 0o600)
    (path / "dir" / "sub").mkdir(parents=True)
    (path / "dir" / "sub" / "deep").write_bytes(b"deep\n")
    (path / "dir" / "empty").mkdir()
    os.symlink("file", path / "link")
    os.symlink("/", path / "rootlink")
    os.link(path / "file", path / "dir" / "hard")
    os.mkfifo(path / "fifo")
    return path


def diff(before: Snapshot, after: Snapshot) -> list[str]:
    """Human-readable differences, for an assertion message."""
    lines = []
    for key in sorted(set(before) | set(after)):
        if before.get(key) != after.get(key):
            lines.append(f"{key}: {before.get(key)} -> {after.get(key)}")
    return lines

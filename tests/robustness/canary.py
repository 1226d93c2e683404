"""A canary tree beside a driver's home, and full snapshots to prove nothing changed.

A snapshot records, for every entry under a root: type, mode, owner, size,
nlink, mtime, content (regular files) and link target (symlinks), so a write,
chmod, chown, utime, new hard link or new entry anywhere in the tree shows up.
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
    out: Snapshot = {}

    def record(path: str, rel: str) -> None:
        st = os.lstat(path)
        extra: object = None
        if stat.S_ISREG(st.st_mode):
            with open(path, "rb") as f:
                extra = hashlib.sha256(f.read()).hexdigest()
        elif stat.S_ISLNK(st.st_mode):
            extra = os.readlink(path)
        elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
            extra = st.st_rdev
        nlink = st.st_nlink if not stat.S_ISDIR(st.st_mode) else None
        out[rel] = (stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid,
                    st.st_size if not stat.S_ISDIR(st.st_mode) else None, nlink,
                    st.st_mtime_ns, extra)

    record(root, ".")
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            record(path, os.path.relpath(path, root))
    return out


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

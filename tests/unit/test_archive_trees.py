"""Feature trees and entry-by-entry snapshots shared by the archive, changes and vfs tests."""
from __future__ import annotations

import hashlib
import os
import stat
import struct
from pathlib import Path

# a valid VFS_CAP_REVISION_2 security.capability: cap_net_raw (13) permitted + effective
CAPABILITY = struct.pack("<IIIII", 0x02000001, 1 << 13, 0, 0, 0)
LONG_DIR = "d" * 90 + "/" + "e" * 90
MTIME = 1_600_000_000


def build_tree(root: Path) -> None:
    """Every kind of entry a layer tar must carry."""
    root.mkdir(exist_ok=True)
    (root / "dir").mkdir()
    (root / "dir/sub").mkdir()
    (root / "private").mkdir(mode=0o700)
    (root / "tmp").mkdir()
    os.chmod(root / "tmp", 0o1777)
    (root / "setgid").mkdir()
    os.chmod(root / "setgid", 0o2775)
    (root / "empty").write_bytes(b"")
    (root / "dir/small").write_bytes(b"hello\n")
    (root / "dir/big").write_bytes(os.urandom(3 << 20) + b"tail")   # more than a chunk
    (root / "suid").write_bytes(b"#!/bin/sh\n")
    os.chmod(root / "suid", 0o4755)
    (root / "sgid").write_bytes(b"x")
    os.chmod(root / "sgid", 0o2711)
    (root / "owned").write_bytes(b"owner")
    os.chown(root / "owned", 1234, 5678)
    (root / "bigid").write_bytes(b"id")
    os.chown(root / "bigid", 3_000_000, 3_000_001)                  # needs PAX
    (root / "xattrs").write_bytes(b"x")
    os.setxattr(root / "xattrs", "user.comment", b"a value\0with nul")
    (root / "cap").write_bytes(b"ping")
    os.chmod(root / "cap", 0o755)
    os.setxattr(root / "cap", "security.capability", CAPABILITY)
    os.setxattr(root / "dir", "user.dirattr", b"d")
    os.symlink("dir/small", root / "rel-link")
    os.symlink("/etc/passwd", root / "abs-link")
    os.symlink("nowhere", root / "dangling")
    os.link(root / "dir/small", root / "hardlink")
    os.link(root / "dir/small", root / "dir/sub/hardlink2")
    os.mknod(root / "null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    os.mknod(root / "loopdev", 0o660 | stat.S_IFBLK, os.makedev(7, 200))
    os.mkfifo(root / "fifo", 0o640)
    (root / LONG_DIR).mkdir(parents=True)
    (root / LONG_DIR / ("f" * 120)).write_bytes(b"long")
    os.symlink("t" * 150, root / "long-target")
    (root / "ünïcödé").write_bytes(b"utf8")
    (root / os.fsdecode(b"latin1-\xe9")).write_bytes(b"not utf8")
    (root / "-dash").write_bytes(b"-")
    for path in sorted(root.rglob("*"), key=lambda p: -len(p.parts)):
        os.utime(path, ns=(MTIME * 10**9,) * 2, follow_symlinks=False)
    os.utime(root / "dir/small", (1_000_000_000, 1_000_000_000))


def snapshot(root: Path, *, hardlinks: bool = True) -> dict[str, tuple]:
    """rel path -> (type, mode, uid, gid, size, sha256, target, mtime s, xattrs, rdev[, link group])."""
    result = {}
    groups: dict[tuple[int, int], list[str]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, root)
            st = os.lstat(path)
            digest = target = None
            if stat.S_ISREG(st.st_mode):
                with open(path, "rb") as f:
                    digest = hashlib.sha256(f.read()).hexdigest()
            if stat.S_ISLNK(st.st_mode):
                target = os.readlink(path)
            try:
                names = os.listxattr(path, follow_symlinks=False)
            except OSError:
                names = []
            xattrs = tuple(sorted((n, os.getxattr(path, n, follow_symlinks=False))
                                  for n in names))
            size = st.st_size if stat.S_ISREG(st.st_mode) else 0
            result[rel] = (stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode), st.st_uid,
                           st.st_gid, size, digest, target, int(st.st_mtime), xattrs,
                           st.st_rdev if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode)
                           else 0)
            if hardlinks and not stat.S_ISDIR(st.st_mode) and st.st_nlink > 1:
                groups.setdefault((st.st_dev, st.st_ino), []).append(rel)
    if hardlinks:
        result["<hardlinks>"] = tuple(sorted(tuple(sorted(g)) for g in groups.values()))
    return result


def assert_same(a: dict, b: dict) -> None:
    assert sorted(a) == sorted(b)
    for key in a:
        assert a[key] == b[key], key


def test_feature_tree_is_complete(tmp_path):
    build_tree(tmp_path / "t")
    snap = snapshot(tmp_path / "t")
    kinds = {v[0] for k, v in snap.items() if k != "<hardlinks>"}
    assert kinds == {stat.S_IFREG, stat.S_IFDIR, stat.S_IFLNK, stat.S_IFCHR, stat.S_IFBLK,
                     stat.S_IFIFO}
    assert snap["<hardlinks>"] == (("dir/small", "dir/sub/hardlink2", "hardlink"),)
    assert snap["suid"][1] == 0o4755 and snap["tmp"][1] == 0o1777
    assert ("security.capability", CAPABILITY) in snap["cap"][8]

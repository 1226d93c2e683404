"""Helpers for the conformance suite: build file trees, snapshot them, build tars.

Everything here talks to a driver through its public interface only
(create/mount/unmount/diff/apply_diff/...), never through driver internals.
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import os
import stat
import struct
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

# Entries a filesystem puts at a layer root by itself (ext4 on devicemapper).
IGNORED_AT_ROOT = {"lost+found"}

# xattrs the round trip must keep (DESIGN.md); others (selinux, overlay) are the driver's business.
KEPT_XATTR_PREFIXES = ("user.",)
KEPT_XATTRS = {"security.capability"}

# A version 2 file capability: effective, permitted = CAP_NET_BIND_SERVICE (10).
CAPABILITY = struct.pack("<IIIII", 0x02000001, 1 << 10, 0, 0, 0)

# A long path (> 100 bytes, needs PAX or GNU long names in a tar).
LONG_DIR = "long/" + "/".join(["d" * 30] * 4)
LONG_FILE = LONG_DIR + "/" + "f" * 60


@contextlib.contextmanager
def mounted(driver, layer_id: str) -> Iterator[Path]:
    """Mount a layer for the duration of a with block."""
    root = Path(driver.mount(layer_id))
    try:
        yield root
    finally:
        driver.unmount(layer_id)


def content(seed: int, size: int) -> bytes:
    """Deterministic bytes: same seed -> same bytes, different seed -> different bytes."""
    out = bytearray()
    counter = 0
    while len(out) < size:
        out += hashlib.sha256(f"{seed}:{counter}".encode()).digest()
        counter += 1
    return bytes(out[:size])


def write(root: Path, rel: str, data: bytes | str, mode: int = 0o644,
          uid: int | None = None, gid: int | None = None, mtime: int | None = None) -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(path, "wb") as f:
        f.write(data)
    if uid is not None:
        os.chown(path, uid, gid if gid is not None else uid)
    os.chmod(path, mode)   # after chown: chown clears setuid
    if mtime is not None:
        os.utime(path, (mtime, mtime))
    return path


def read(root: Path, rel: str) -> bytes:
    return (root / rel).read_bytes()


def xattrs_supported(root: Path) -> str | None:
    """None when user.* xattrs work under ``root``, else why not."""
    probe = root / ".xattr-probe"
    probe.write_bytes(b"")
    try:
        os.setxattr(probe, "user.probe", b"1", follow_symlinks=False)
        return None
    except OSError as exc:
        if exc.errno in (errno.ENOTSUP, errno.EOPNOTSUPP):
            return f"the filesystem under {root} has no user xattrs ({exc})"
        raise
    finally:
        probe.unlink()


def build_rich_tree(root: Path, *, xattrs: bool = True) -> None:
    """A base layer with every kind of entry a layer tar must carry."""
    t = 1_600_000_000
    (root / "etc").mkdir(mode=0o755)
    write(root, "etc/hosts", "127.0.0.1 localhost\n", 0o644, mtime=t)
    write(root, "etc/shadow", "root:*:19000::::::\n", 0o640, uid=0, gid=42, mtime=t + 1)
    write(root, "big.bin", content(1, 300_000), 0o600, mtime=t + 2)
    write(root, "empty", b"", 0o444, mtime=t + 3)
    write(root, "bin/su", content(2, 4096), 0o4755, mtime=t + 4)       # setuid
    write(root, "bin/wall", content(3, 100), 0o2755, uid=0, gid=5, mtime=t + 5)  # setgid
    write(root, "home/alice/notes.txt", "hello\n", 0o600, uid=1000, gid=1000, mtime=t + 6)
    os.chown(root / "home/alice", 1000, 1000)
    os.chmod(root / "home/alice", 0o700)
    (root / "tmp").mkdir()
    os.chmod(root / "tmp", 0o1777)                                       # sticky
    (root / "opt/empty-dir").mkdir(parents=True)
    os.chmod(root / "opt/empty-dir", 0o750)
    os.chown(root / "opt/empty-dir", 7, 8)
    # hard links: three names, one inode
    write(root, "usr/bin/python3.11", content(4, 5000), 0o755, mtime=t + 7)
    os.link(root / "usr/bin/python3.11", root / "usr/bin/python3")
    os.link(root / "usr/bin/python3.11", root / "usr/bin/python")
    # symlinks: relative, absolute, dangling, to a directory
    os.symlink("python3.11", root / "usr/bin/py")
    os.symlink("/etc/hosts", root / "hosts-link")
    os.symlink("../nowhere/at/all", root / "usr/dangling")
    os.symlink("usr/bin", root / "bin-link")
    os.lchown(root / "usr/dangling", 3, 4)
    # special files
    os.mkfifo(root / "tmp/fifo", 0o640)
    os.mknod(root / "null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    os.mknod(root / "tmp/blk", 0o660 | stat.S_IFBLK, os.makedev(7, 200))
    os.chmod(root / "null", 0o666)      # mknod honours the umask
    os.chmod(root / "tmp/blk", 0o660)
    # a path longer than the 100 bytes a plain ustar name holds
    write(root, LONG_FILE, "deep\n", 0o644, mtime=t + 8)
    # xattrs (set last: writing or chowning a file drops security.capability)
    if xattrs:
        os.setxattr(root / "etc/hosts", "user.comment", b"resolver file")
        os.setxattr(root / "home/alice", "user.owner", b"alice")
        write(root, "usr/bin/ping", content(5, 2000), 0o755, mtime=t + 9)
        os.setxattr(root / "usr/bin/ping", "security.capability", CAPABILITY)
        os.utime(root / "usr/bin/ping", (t + 9, t + 9))
    for rel in ("etc", "bin", "home", "usr/bin"):
        os.utime(root / rel, (t + 10, t + 10))


@dataclass(frozen=True)
class Entry:
    kind: str
    mode: int
    uid: int
    gid: int
    size: int | None
    sha256: str | None
    target: str | None
    rdev: tuple[int, int] | None
    mtime: int
    xattrs: tuple[tuple[str, bytes], ...]


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISREG, "file"), (stat.S_ISDIR, "dir"), (stat.S_ISLNK, "symlink"),
                       (stat.S_ISFIFO, "fifo"), (stat.S_ISCHR, "char"), (stat.S_ISBLK, "block"),
                       (stat.S_ISSOCK, "socket")):
        if test(mode):
            return name
    return "unknown"


def _kept_xattrs(path: str) -> tuple[tuple[str, bytes], ...]:
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError as exc:
        if exc.errno in (errno.ENOTSUP, errno.EOPNOTSUPP):
            return ()
        raise
    kept = [n for n in names if n.startswith(KEPT_XATTR_PREFIXES) or n in KEPT_XATTRS]
    return tuple(sorted((n, os.getxattr(path, n, follow_symlinks=False)) for n in kept))


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def snapshot(root: Path, *, mtimes: bool = True) -> dict[str, Entry]:
    """Every entry below ``root`` (root itself excluded) keyed by its relative path."""
    result: dict[str, Entry] = {}
    root_s = os.fspath(root)
    for dirpath, dirnames, filenames in os.walk(root_s):
        if dirpath == root_s:
            dirnames[:] = [d for d in dirnames if d not in IGNORED_AT_ROOT]
        for name in dirnames + filenames:
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, root_s)
            st = os.lstat(full)
            kind = _kind(st.st_mode)
            result[rel] = Entry(
                kind=kind,
                mode=stat.S_IMODE(st.st_mode),
                uid=st.st_uid,
                gid=st.st_gid,
                size=st.st_size if kind == "file" else None,
                sha256=_sha256(full) if kind == "file" else None,
                target=os.readlink(full) if kind == "symlink" else None,
                rdev=(os.major(st.st_rdev), os.minor(st.st_rdev)) if kind in ("char", "block") else None,
                mtime=int(st.st_mtime) if mtimes else 0,
                xattrs=_kept_xattrs(full),
            )
    return result


def hardlink_groups(root: Path) -> set[frozenset[str]]:
    """Sets of relative paths that share an inode (only groups of two or more)."""
    by_inode: dict[int, set[str]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in filenames:
            full = os.path.join(dirpath, name)
            st = os.lstat(full)
            if not stat.S_ISDIR(st.st_mode) and st.st_nlink > 1:
                by_inode.setdefault(st.st_ino, set()).add(os.path.relpath(full, root))
    return {frozenset(paths) for paths in by_inode.values() if len(paths) > 1}


def assert_same_tree(expected: dict[str, Entry], actual: dict[str, Entry]) -> None:
    """Compare two snapshots entry by entry, with a readable message on the first mismatches."""
    missing = sorted(set(expected) - set(actual))
    extra = sorted(set(actual) - set(expected))
    differing = []
    for rel in sorted(set(expected) & set(actual)):
        if expected[rel] != actual[rel]:
            fields = [f for f in Entry.__dataclass_fields__
                      if getattr(expected[rel], f) != getattr(actual[rel], f)]
            differing.append(
                f"{rel}: " + ", ".join(f"{f} {getattr(expected[rel], f)!r} != "
                                         f"{getattr(actual[rel], f)!r}" for f in fields))
    problems = []
    if missing:
        problems.append(f"missing: {missing[:20]}")
    if extra:
        problems.append(f"unexpected: {extra[:20]}")
    if differing:
        problems.append("differing:\n  " + "\n  ".join(differing[:20]))
    assert not problems, "trees differ\n" + "\n".join(problems)


def visible_names(root: Path) -> list[str]:
    """Relative paths below ``root`` as ``ls -R`` shows them, directories with a trailing "/"."""
    names = []
    for dirpath, dirnames, filenames in os.walk(root):
        if dirpath == os.fspath(root):
            dirnames[:] = [d for d in dirnames if d not in IGNORED_AT_ROOT]
        rel = os.path.relpath(dirpath, root)
        prefix = "" if rel == "." else rel + "/"
        names += [prefix + d + "/" for d in dirnames] + [prefix + f for f in filenames]
    return sorted(names)


def assert_listable(root: Path, *, devices: bool = False) -> None:
    """Every name readdir lists below ``root`` can be lstat'ed, and no whiteout shows.

    overlayfs lists a whiteout device that sits in a directory it does not merge
    (an opaque or upper-only one), then says ENOENT for it; on a layer without
    lowers the device itself shows. Either is damage from applying a layer.
    ``devices=True``: a 0:0 character device may be one the tar itself made.
    """
    problems = []
    stack = [os.fspath(root)]
    while stack:
        path = stack.pop()
        for name in os.listdir(path):
            full = os.path.join(path, name)
            rel = os.path.relpath(full, root)
            try:
                st = os.lstat(full)
            except OSError as exc:
                problems.append(f"{rel}: listed by readdir, but lstat says {exc.strerror}")
                continue
            if stat.S_ISCHR(st.st_mode) and st.st_rdev == 0 and not devices:
                problems.append(f"{rel}: a whiteout device (char 0:0) shows in the layer")
            elif stat.S_ISDIR(st.st_mode):
                stack.append(full)
    assert not problems, "damaged tree:\n  " + "\n  ".join(sorted(problems)[:20])


def tree_listing(root: Path) -> list[tuple[str, int, int, int]]:
    """(path, mode, size, mtime) of everything below root: to show that nothing changed."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        for name in sorted(dirnames + filenames):
            full = os.path.join(dirpath, name)
            st = os.lstat(full)
            out.append((os.path.relpath(full, root), st.st_mode, st.st_size, int(st.st_mtime)))
    return sorted(out)


# -- tars built by hand -------------------------------------------------------

class TarBuilder:
    """Build an uncompressed tar in memory entry by entry (small test tars only)."""

    def __init__(self, fmt: int = tarfile.PAX_FORMAT):
        self.buffer = io.BytesIO()
        self.tar = tarfile.open(fileobj=self.buffer, mode="w", format=fmt)

    def _info(self, name: str, type_: bytes, mode: int, **kw) -> tarfile.TarInfo:
        info = tarfile.TarInfo(name)
        info.type = type_
        info.mode = mode
        info.mtime = kw.pop("mtime", 1_600_000_000)
        for key, value in kw.items():
            setattr(info, key, value)
        return info

    def dir(self, name: str, mode: int = 0o755, **kw) -> "TarBuilder":
        self.tar.addfile(self._info(name, tarfile.DIRTYPE, mode, **kw))
        return self

    def file(self, name: str, data: bytes | str = b"", mode: int = 0o644, **kw) -> "TarBuilder":
        if isinstance(data, str):
            data = data.encode()
        info = self._info(name, tarfile.REGTYPE, mode, size=len(data), **kw)
        self.tar.addfile(info, io.BytesIO(data))
        return self

    def symlink(self, name: str, target: str, **kw) -> "TarBuilder":
        self.tar.addfile(self._info(name, tarfile.SYMTYPE, 0o777, linkname=target, **kw))
        return self

    def hardlink(self, name: str, target: str, **kw) -> "TarBuilder":
        self.tar.addfile(self._info(name, tarfile.LNKTYPE, 0o644, linkname=target, **kw))
        return self

    def fifo(self, name: str, mode: int = 0o644, **kw) -> "TarBuilder":
        self.tar.addfile(self._info(name, tarfile.FIFOTYPE, mode, **kw))
        return self

    def chardev(self, name: str, major: int, minor: int, mode: int = 0o644,
                **kw) -> "TarBuilder":
        self.tar.addfile(self._info(name, tarfile.CHRTYPE, mode, devmajor=major,
                                    devminor=minor, **kw))
        return self

    def bytes(self) -> bytes:
        self.tar.close()
        return self.buffer.getvalue()

    def stream(self) -> io.BytesIO:
        return io.BytesIO(self.bytes())


def tar_names(stream) -> list[str]:
    """Member names of a tar stream (consumes and closes it)."""
    try:
        with tarfile.open(fileobj=stream, mode="r|") as tar:
            return [m.name for m in tar]
    finally:
        stream.close()


@contextlib.contextmanager
def xfs_with_project_quota(tmp_path: Path, size: int = 300 << 20) -> Iterator[Path]:
    """A fresh XFS on a loop device mounted with prjquota."""
    from graphdrivers.testing.loopfs import loop_filesystem
    with loop_filesystem(tmp_path, "xfs", size, "prjquota") as target:
        yield target

"""What a snapshot holds, as containerd itself mounts it, and what a diff tar holds.

``snapshot_tree`` mounts a snapshot with the command ``ctr snapshots mounts``
prints, inside the engine's mount namespace (where containerd would mount it),
and reads it from the host through /proc/<pid>/root. The result maps each path
to a comparable record; two snapshotters that store the same layers give equal
trees. Directory link counts are left out: overlayfs reports 1 for a directory
merged from several layers.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import os
import stat
import tarfile
import uuid
from pathlib import Path
from typing import Iterator

from containerd.engine import Containerd, EngineError

KEPT_XATTR_PREFIX = "user."


def sha16(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def _record(path: Path, st: os.stat_result) -> tuple:
    mode = stat.S_IMODE(st.st_mode)
    xattrs = tuple(sorted((name, os.getxattr(path, name, follow_symlinks=False))
                          for name in os.listxattr(path, follow_symlinks=False)
                          if name.startswith(KEPT_XATTR_PREFIX)))
    if stat.S_ISLNK(st.st_mode):
        return ("symlink", os.readlink(path), st.st_uid, st.st_gid)
    if stat.S_ISDIR(st.st_mode):
        return ("dir", mode, st.st_uid, st.st_gid, xattrs)
    if stat.S_ISREG(st.st_mode):
        digest = sha16(path.read_bytes())
        return ("file", mode, st.st_uid, st.st_gid, st.st_size, digest, st.st_nlink, xattrs)
    return ("other", stat.S_IFMT(st.st_mode), mode, st.st_uid, st.st_gid, st.st_rdev)


def read_tree(root: Path) -> dict[str, tuple]:
    """Every entry under ``root``; a hard link's record names the first path of its inode."""
    out: dict[str, tuple] = {}
    first_of_inode: dict[tuple[int, int], str] = {}
    stack = [""]
    while stack:
        rel = stack.pop()
        for name in sorted(os.listdir(root / rel) if rel else os.listdir(root)):
            sub = f"{rel}/{name}" if rel else name
            path = root / sub
            st = os.lstat(path)
            record = _record(path, st)
            if stat.S_ISREG(st.st_mode) and st.st_nlink > 1:
                record += (first_of_inode.setdefault((st.st_dev, st.st_ino), sub),)
            out[sub] = record
            if stat.S_ISDIR(st.st_mode):
                stack.append(sub)
    return out


@contextlib.contextmanager
def mounted(engine: Containerd, snapshotter: str, key: str) -> Iterator[Path]:
    """Mount snapshot ``key`` with the mounts its snapshotter gives, in the engine's
    namespace; yield the mount point as the host reaches it."""
    target = f"/run/gde2e-mnt/{uuid.uuid4().hex[:8]}"
    commands = engine.ctr("snapshots", "--snapshotter", snapshotter, "mounts", target, key)
    done = engine.mountns.run(["sh", "-ec", f"mkdir -p {target}\n{commands}"])
    if done.returncode != 0:
        raise EngineError(f"mounting {key} ({commands.strip()}) failed: {done.stderr.strip()}")
    try:
        yield engine.mountns.host_path(target)
    finally:
        engine.mountns.run(["umount", "-R", target], check=True)
        engine.mountns.run(["rmdir", target], check=True)


def snapshot_tree(engine: Containerd, snapshotter: str, key: str) -> dict[str, tuple]:
    """Every entry of snapshot ``key``, mounted as containerd would mount it."""
    with mounted(engine, snapshotter, key) as root:
        return read_tree(root)


def diff_blob(engine: Containerd, snapshotter: str, key: str) -> bytes:
    """``ctr snapshots diff`` of ``key`` against its parent: an uncompressed layer tar."""
    return engine.ctr_bytes("snapshots", "--snapshotter", snapshotter, "diff",
                            "--media-type", "application/vnd.oci.image.layer.v1.tar", key)


def tar_entries(blob: bytes) -> list[tuple]:
    """A layer tar as sorted (name, type, mode, uid, gid, size or link, digest, xattrs)."""
    rows = []
    with tarfile.open(fileobj=io.BytesIO(blob)) as tar:
        for info in tar:
            digest = ""
            if info.isreg():
                digest = sha16(tar.extractfile(info).read())
            xattrs = tuple(sorted((k, v) for k, v in info.pax_headers.items()
                                  if k.startswith("SCHILY.xattr.user.")))
            rows.append((info.name.rstrip("/"), info.type.decode(), info.mode, info.uid, info.gid,
                         info.linkname if (info.issym() or info.islnk()) else info.size,
                         digest, xattrs))
    return sorted(rows)

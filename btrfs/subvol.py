"""Subvolume create / snapshot / delete: libbtrfsutil's Python binding when it is
installed (PyPI ``btrfsutil<6.14``, extra ``graphdrivers[btrfs]``), otherwise the
same ioctls through fcntl. Both make one ioctl per operation; no ``btrfs`` process.
"""
from __future__ import annotations

import errno
import os
import stat
import struct

from . import ioctl

try:  # imported lazily by the driver module only; a missing binding is not an error
    import btrfsutil as _lib
except ImportError:  # pragma: no cover - depends on the machine
    _lib = None

FORCE_IOCTL = os.environ.get("GRAPHDRIVERS_BTRFS_IOCTL", "") == "1"


def backend() -> str:
    """Which implementation is in use: "libbtrfsutil <version>" or "ioctl"."""
    if _lib is not None and not FORCE_IOCTL:
        try:
            from importlib.metadata import version
            return f"libbtrfsutil (btrfsutil {version('btrfsutil')})"
        except Exception:
            return "libbtrfsutil"
    return "ioctl"


def _use_lib() -> bool:
    return _lib is not None and not FORCE_IOCTL


def _oserror(exc: Exception, path: str | os.PathLike) -> OSError:
    """Turn a BtrfsUtilError into the OSError it wraps (errno kept)."""
    err = getattr(exc, "errno", None) or errno.EIO
    return OSError(err, f"{exc}", os.fspath(path))


def _open_dir(path: str | os.PathLike) -> int:
    return os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)


def create(path: str | os.PathLike) -> None:
    """Make an empty subvolume at ``path``."""
    if _use_lib():
        try:
            _lib.create_subvolume(os.fspath(path))
            return
        except _lib.BtrfsUtilError as exc:
            raise _oserror(exc, path) from None
    parent, name = os.path.split(os.path.abspath(path))
    fd = _open_dir(parent)
    try:
        ioctl.subvol_create(fd, name)
    finally:
        os.close(fd)


def snapshot(source: str | os.PathLike, path: str | os.PathLike, *, read_only: bool = False) -> None:
    """Make ``path`` a (writable unless read_only) snapshot of subvolume ``source``."""
    if _use_lib():
        try:
            _lib.create_snapshot(os.fspath(source), os.fspath(path), read_only=read_only)
            return
        except _lib.BtrfsUtilError as exc:
            raise _oserror(exc, path) from None
    parent, name = os.path.split(os.path.abspath(path))
    src = _open_dir(source)
    try:
        fd = _open_dir(parent)
        try:
            ioctl.snap_create(src, fd, name, read_only=read_only)
        finally:
            os.close(fd)
    finally:
        os.close(src)


def delete(path: str | os.PathLike) -> None:
    """Delete one subvolume (it must hold no nested subvolume: ENOTEMPTY otherwise)."""
    if _use_lib():
        try:
            _lib.delete_subvolume(os.fspath(path))
            return
        except _lib.BtrfsUtilError as exc:
            raise _oserror(exc, path) from None
    parent, name = os.path.split(os.path.abspath(path))
    fd = _open_dir(parent)
    try:
        ioctl.snap_destroy(fd, name)
    finally:
        os.close(fd)


def delete_recursive(path: str | os.PathLike) -> list[int]:
    """Delete ``path`` and every subvolume nested below it, deepest first.

    Returns the ids of the deleted subvolumes (the caller destroys their qgroups).
    Nested subvolumes are found through the root tree's ROOT_REF items, not by
    walking the layer's files: cost grows with the number of subvolumes only.
    """
    path = os.path.abspath(path)
    deleted: list[int] = []
    for nested in nested_subvolumes(path):
        deleted.extend(delete_recursive(nested))
    sid = subvolume_id(path)
    delete(path)
    deleted.append(sid)
    return deleted


def nested_subvolumes(path: str | os.PathLike) -> list[str]:
    """Paths of subvolumes directly below the subvolume at ``path``."""
    path = os.fspath(path)
    fd = _open_dir(path)
    try:
        sid = ioctl.subvol_info(fd).id
        found = []
        for item in ioctl.tree_search(fd, ioctl.ROOT_TREE_OBJECTID, (sid, ioctl.ROOT_REF_KEY, 0),
                                      (sid, ioctl.ROOT_REF_KEY, ioctl.U64_MAX)):
            dirid, _seq, name_len = struct.unpack_from("=QQH", item.data)
            name = os.fsdecode(item.data[18:18 + name_len])
            found.append(os.path.join(path, ioctl.ino_lookup(fd, sid, dirid), name))
        return found
    finally:
        os.close(fd)


def info(path: str | os.PathLike) -> ioctl.SubvolInfo:
    fd = _open_dir(path)
    try:
        return ioctl.subvol_info(fd)
    finally:
        os.close(fd)


def subvolume_id(path: str | os.PathLike) -> int:
    return info(path).id


def is_subvolume(path: str | os.PathLike) -> bool:
    """True if ``path`` is the root of a subvolume (inode 256 on btrfs)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return False
    return stat.S_ISDIR(st.st_mode) and st.st_ino == ioctl.FIRST_FREE_OBJECTID


def sync(path: str | os.PathLike) -> None:
    """Commit the running transaction of the filesystem holding ``path``."""
    fd = _open_dir(path)
    try:
        ioctl.sync(fd)
    finally:
        os.close(fd)

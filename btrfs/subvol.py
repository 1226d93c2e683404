"""Subvolume create / snapshot / delete: libbtrfsutil's Python binding when it is
installed (PyPI ``btrfsutil<6.14``, extra ``graphdrivers[btrfs]``), otherwise the
same ioctls through fcntl. Both make one ioctl per operation; no ``btrfs`` process.
"""
from __future__ import annotations

import errno
import os
import stat

from . import ioctl
from .structs import ROOT_REF

FORCE_IOCTL = os.environ.get("GRAPHDRIVERS_BTRFS_IOCTL", "") == "1"
_UNLOADED = object()
_binding = _UNLOADED


def _load():
    """The btrfsutil module, imported on first use; None when it is not installed."""
    global _binding
    if _binding is _UNLOADED:
        try:
            import btrfsutil
            _binding = btrfsutil
        except ImportError:   # no binding (or one that fails to load): use the ioctls
            _binding = None
    return _binding


def backend() -> str:
    """Which implementation is in use: "libbtrfsutil (btrfsutil <version>)" or "ioctl"."""
    if _use_lib():
        try:
            from importlib.metadata import version
            return f"libbtrfsutil (btrfsutil {version('btrfsutil')})"
        except Exception:
            return "libbtrfsutil"
    return "ioctl"


def _use_lib() -> bool:
    return not FORCE_IOCTL and _load() is not None


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
            _binding.create_subvolume(os.fspath(path))
            return
        except _binding.BtrfsUtilError as exc:
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
            _binding.create_snapshot(os.fspath(source), os.fspath(path), read_only=read_only)
            return
        except _binding.BtrfsUtilError as exc:
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
            _binding.delete_subvolume(os.fspath(path))
            return
        except _binding.BtrfsUtilError as exc:
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
            ref = ROOT_REF.unpack(item.data)
            name = os.fsdecode(item.data[ROOT_REF.size:ROOT_REF.size + ref.name_len])
            found.append(os.path.join(path, ioctl.ino_lookup(fd, sid, ref.dirid), name))
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

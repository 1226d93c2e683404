"""Subvolume create / snapshot / delete: libbtrfsutil's Python binding when it is
installed (PyPI ``btrfsutil<6.14``, extra ``graphdrivers[btrfs]``), otherwise the
same ioctls through fcntl. Both make one ioctl per operation; no ``btrfs`` process.
"""
from __future__ import annotations

import contextlib
import errno
import os
import stat
from typing import Iterator

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


@contextlib.contextmanager
def _opened(path: str | os.PathLike) -> Iterator[int]:
    """A directory fd for the ioctls, closed on exit."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        yield fd
    finally:
        os.close(fd)


def create(path: str | os.PathLike) -> None:
    """Make an empty subvolume at ``path``."""
    if _use_lib():
        try:
            _binding.create_subvolume(os.fspath(path))
            return
        except _binding.BtrfsUtilError as exc:
            raise _oserror(exc, path) from None
    parent_dir, name = os.path.split(os.path.abspath(path))
    with _opened(parent_dir) as parent:
        ioctl.subvol_create(parent, name)


def snapshot(source: str | os.PathLike, path: str | os.PathLike, *, read_only: bool = False) -> None:
    """Make ``path`` a (writable unless read_only) snapshot of subvolume ``source``."""
    if _use_lib():
        try:
            _binding.create_snapshot(os.fspath(source), os.fspath(path), read_only=read_only)
            return
        except _binding.BtrfsUtilError as exc:
            raise _oserror(exc, path) from None
    parent_dir, name = os.path.split(os.path.abspath(path))
    with _opened(source) as src, _opened(parent_dir) as parent:
        ioctl.snap_create(src, parent, name, read_only=read_only)


def delete(path: str | os.PathLike) -> None:
    """Delete one subvolume (it must hold no nested subvolume: ENOTEMPTY otherwise)."""
    if _use_lib():
        try:
            _binding.delete_subvolume(os.fspath(path))
            return
        except _binding.BtrfsUtilError as exc:
            raise _oserror(exc, path) from None
    parent_dir, name = os.path.split(os.path.abspath(path))
    with _opened(parent_dir) as parent:
        ioctl.snap_destroy(parent, name)


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
    with _opened(path) as fd:
        sid = ioctl.subvol_info(fd).id
        found = []
        for item in ioctl.tree_search(fd, ioctl.ROOT_TREE_OBJECTID, (sid, ioctl.ROOT_REF_KEY, 0),
                                      (sid, ioctl.ROOT_REF_KEY, ioctl.U64_MAX)):
            ref = ROOT_REF.unpack(item.data)
            name = os.fsdecode(item.data[ROOT_REF.size:ROOT_REF.size + ref.name_len])
            found.append(os.path.join(path, ioctl.ino_lookup(fd, sid, ref.dirid), name))
        return found


def info(path: str | os.PathLike) -> ioctl.SubvolInfo:
    with _opened(path) as fd:
        return ioctl.subvol_info(fd)


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
    with _opened(path) as fd:
        ioctl.sync(fd)


def subvolume_ids(path: str | os.PathLike) -> set[int]:
    """Ids of every subvolume on the filesystem holding ``path`` (its root items),
    including deleted ones the cleaner has not dropped yet."""
    with _opened(path) as fd:
        return {item.objectid for item in ioctl.tree_search(
            fd, ioctl.ROOT_TREE_OBJECTID, (ioctl.FIRST_FREE_OBJECTID, ioctl.ROOT_ITEM_KEY, 0),
            (ioctl.LAST_FREE_OBJECTID, ioctl.ROOT_ITEM_KEY, ioctl.U64_MAX))
            if item.type == ioctl.ROOT_ITEM_KEY}

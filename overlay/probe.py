"""Checks made once at load: backing filesystem, d_type, a real test mount, native diff.

Everything runs in a scratch directory inside the home, removed afterwards,
so a refused load leaves nothing behind.
"""
from __future__ import annotations

import ctypes
import errno
import os
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from graphdrivers.kernel import statfs as fsinfo
from graphdrivers.kernel import mount as _mount
from graphdrivers.errors import NotSupported
from graphdrivers.kernel.statfs import fs_name

from .whiteout import METACOPY_XATTR, OPAQUE_XATTR, REDIRECT_XATTR, has_xattr, is_opaque


# Filesystems overlayfs cannot use as an upper layer, and what to do about it.
INCOMPATIBLE = {
    "overlayfs": "the home is itself on overlayfs, which cannot host overlay upper layers; "
                 "put the home on ext4 or xfs (or use the vfs driver)",
    "aufs": "aufs cannot host overlay upper layers; put the home on ext4 or xfs",
    "ecryptfs": "ecryptfs cannot host overlay upper layers; put the home on ext4 or xfs",
    "nfs": "NFS cannot host overlay upper layers; put the home on a local ext4 or xfs",
    "zfs": "zfs cannot host overlay upper layers here; use the zfs-backed home with the vfs "
           "driver or put the home on ext4 or xfs",
    "squashfs": "squashfs is read-only; put the home on ext4 or xfs",
    "cramfs": "cramfs is read-only; put the home on ext4 or xfs",
    "fuse": "a FUSE filesystem cannot host overlay upper layers; put the home on ext4 or xfs",
}

_libc = ctypes.CDLL(None, use_errno=True)
_libc.opendir.restype = ctypes.c_void_p
_libc.opendir.argtypes = [ctypes.c_char_p]
_libc.readdir.restype = ctypes.c_void_p
_libc.readdir.argtypes = [ctypes.c_void_p]
_libc.closedir.argtypes = [ctypes.c_void_p]

DT_UNKNOWN = 0
_DIRENT_TYPE_OFFSET = 18      # glibc 64-bit struct dirent: d_ino, d_off, d_reclen, d_type


def supports_dtype(directory: str | os.PathLike) -> bool:
    """Whether readdir in ``directory`` reports file types (overlayfs needs that)."""
    probe = Path(directory) / f".dtype-{uuid.uuid4().hex[:8]}"
    probe.mkdir()
    try:
        (probe / "f").touch()
        return dtype_known(probe) is not False
    finally:
        shutil.rmtree(probe, ignore_errors=True)


def check_kernel() -> None:
    """NotSupported unless this kernel has overlayfs (built in, loaded, or loadable)."""
    with open("/proc/filesystems") as f:
        if any(line.split()[-1:] == ["overlay"] for line in f):
            return
    release = os.uname().release
    for index in ("modules.builtin", "modules.dep"):
        try:
            with open(f"/lib/modules/{release}/{index}") as f:
                if any("/overlay.ko" in line.split(":")[0] for line in f):
                    return   # the first overlay mount loads it
        except FileNotFoundError:
            continue
    raise NotSupported(f"overlay2 needs overlayfs, which this kernel ({release}) does not have "
                       "(no overlay in /proc/filesystems and no overlay module to load)")


def dtype_known(directory: str | os.PathLike) -> bool | None:
    """d_type support judged from an existing entry of ``directory`` (read only): None when
    it has none to judge by. ("." and ".." prove nothing: XFS reports them as directories
    even without ftype.)"""
    handle = _libc.opendir(os.fsencode(directory))
    if not handle:
        return None
    try:
        while True:
            entry = _libc.readdir(handle)
            if not entry:
                return None
            name = ctypes.string_at(entry + _DIRENT_TYPE_OFFSET + 1)
            if name not in (b".", b".."):
                return ctypes.c_ubyte.from_address(entry + _DIRENT_TYPE_OFFSET).value \
                    != DT_UNKNOWN
    finally:
        _libc.closedir(handle)


def check_home(home: Path) -> None:
    """What can be checked without writing anything: the kernel, the backing filesystem and
    d_type at ``home`` (or its nearest existing ancestor). Load adds a real test mount."""
    check_kernel()
    where = Path(fsinfo.existing_ancestor(home))
    backing = check_backing(where)
    if dtype_known(where) is False:
        raise NotSupported(dtype_message(backing, where))


def dtype_message(backing: str, where: Path) -> str:
    hint = {"xfs": "reformat it with mkfs.xfs -n ftype=1",
            "extfs": "enable it with tune2fs -O filetype"}.get(backing, "use a filesystem with d_type")
    return f"overlay2 needs d_type support on the backing filesystem ({backing}) of {where}: {hint}"


def check_backing(home: Path) -> str:
    """Name of the backing filesystem, or NotSupported when overlay cannot live on it."""
    name = fs_name(home)
    if name in INCOMPATIBLE:
        raise NotSupported(f"overlay2 cannot use {home}: {INCOMPATIBLE[name]}")
    return name


def default_mount_options() -> list[tuple[str, str | None]]:
    """Options that keep the upper dir a complete record of the layer (native diff safe).

    index=off as Docker does (layers are remounted in new combinations);
    redirect_dir=off and metacopy=off so a renamed directory or a chmod copies
    up the whole entry instead of leaving a pointer into a lower layer.
    """
    params = Path("/sys/module/overlay/parameters")
    options: list[tuple[str, str | None]] = []
    for name in ("index", "redirect_dir", "metacopy"):
        if (params / name).exists():
            options.append((name, "off"))
    return options


@dataclass
class Features:
    backing_fs: str = ""
    d_type: bool = True
    native_diff: bool = True
    naive_reason: str = ""
    metacopy: bool = False
    options: list[tuple[str, str | None]] = field(default_factory=list)


MountFn = Callable[[str, list[str], str | None, str | None, bool], None]


def test_mount(scratch: Path, mount_fn: MountFn, features: Features) -> None:
    """Mount an overlay with two lowers in ``scratch`` and check what the upper records.

    ``mount_fn(target, lowers, upper, work, readonly)`` takes paths relative to
    ``scratch`` (the caller runs it with ``scratch`` as cwd).
    """
    for name in ("l1/d1", "l1/o", "l2/o", "u", "w", "m"):
        (scratch / name).mkdir(parents=True)
    (scratch / "l1/file").write_bytes(b"x")
    (scratch / "l2/o/keep").write_bytes(b"x")
    os.setxattr(scratch / "l1/o", OPAQUE_XATTR, b"y")
    try:
        mount_fn("m", ["l1", "l2"], "u", "w", False)
    except OSError as exc:
        raise NotSupported(f"overlay2 cannot mount an overlay in {scratch.parent}: "
                           f"{exc.strerror or exc}; the kernel needs overlayfs "
                           "(modprobe overlay) and the home a filesystem that can host it") \
            from None
    merged = scratch / "m"
    try:
        reasons = []
        try:
            os.rename(merged / "d1", merged / "d2")
            if has_xattr(scratch / "u/d2", REDIRECT_XATTR):
                reasons.append("the kernel's overlayfs records renamed directories as "
                               "redirects (redirect_dir)")
        except OSError as exc:
            if exc.errno != errno.EXDEV:
                raise
        os.chmod(merged / "file", 0o600)
        if has_xattr(scratch / "u/file", METACOPY_XATTR):
            features.metacopy = True
            reasons.append("the kernel's overlayfs copies up metadata only (metacopy)")
        (merged / "o/new").write_bytes(b"y")
        if is_opaque(scratch / "u/o"):
            reasons.append("the kernel copies the opaque flag up wrongly (needs Linux 4.8+)")
        if reasons:
            features.native_diff = False
            features.naive_reason = "; ".join(reasons)
    finally:
        _mount.umount(merged, _mount.MNT_DETACH)

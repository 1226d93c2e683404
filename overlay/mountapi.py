"""Mounting an overlay: the new mount API (fsopen/fsconfig/fsmount/move_mount) or mount(2).

- new API (kernel >= 6.8): one ``fsconfig(lowerdir+)`` call per lower layer,
  so there is no page limit (the kernel's own limit is 500 lowers) and the
  driver passes absolute paths from its own thread.
- mount(2): the whole option string must fit in one page (4095 bytes). The
  driver mounts from a short-lived thread that has its own filesystem context
  (``unshare(CLONE_FS)``) and has chdir'd to the driver home (``in_directory``),
  so every path is relative (``l/<short>``, ``<id>/diff``): that is how the
  lower list of a deep chain stays short, without changing the cwd of the
  calling process (a Python process has other threads).
"""
from __future__ import annotations

import ctypes
import errno
import os
import shutil
import threading
from typing import Callable, Sequence, TypeVar

from graphdrivers.kernel import mount as _mount

T = TypeVar("T")

# Syscall numbers of the new mount API are the same on every architecture but alpha.
SYS_MOVE_MOUNT = 429
SYS_FSOPEN = 430
SYS_FSCONFIG = 431
SYS_FSMOUNT = 432

FSOPEN_CLOEXEC = 0x1
FSCONFIG_SET_FLAG = 0
FSCONFIG_SET_STRING = 1
FSCONFIG_CMD_CREATE = 6
FSMOUNT_CLOEXEC = 0x1
MOUNT_ATTR_RDONLY = 0x1
MOVE_MOUNT_F_EMPTY_PATH = 0x4
AT_FDCWD = -100
CLONE_FS = 0x200

PAGE_LIMIT = 4095          # mount(2) copies at most one page of option data

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
_libc.unshare.argtypes = [ctypes.c_int]


class MountError(OSError):
    """A failed overlay mount, with the kernel's own explanation when it gave one."""


def _check(result: int, what: str) -> int:
    if result < 0:
        err = ctypes.get_errno()
        raise MountError(err, f"{what}: {os.strerror(err)}")
    return result


def _fsopen(fstype: str) -> int:
    return _check(_libc.syscall(SYS_FSOPEN, ctypes.c_char_p(fstype.encode()),
                                ctypes.c_uint(FSOPEN_CLOEXEC)), f"fsopen({fstype})")


def _fsconfig(fd: int, cmd: int, key: str | None = None, value: str | None = None) -> None:
    _check(_libc.syscall(SYS_FSCONFIG, ctypes.c_int(fd), ctypes.c_uint(cmd),
                         ctypes.c_char_p(key.encode() if key else None),
                         ctypes.c_char_p(os.fsencode(value) if value is not None else None),
                         ctypes.c_int(0)),
           f"fsconfig {key or 'create'}{'=' + value if value else ''}")


def _kernel_log(fd: int) -> str:
    """Messages the kernel queued on an fs context fd (why a mount was refused)."""
    lines = []
    try:
        os.set_blocking(fd, False)
        while True:
            data = os.read(fd, 4096)
            if not data:
                break
            lines.append(data.decode(errors="replace").strip())
    except OSError:
        pass
    return "; ".join(lines)


def in_directory(path: str | os.PathLike, fn: Callable[[], T]) -> T:
    """Run ``fn`` with ``path`` as cwd, in a thread whose cwd change nobody else sees."""
    box: dict[str, object] = {}

    def run() -> None:
        try:
            if _libc.unshare(CLONE_FS) != 0:
                err = ctypes.get_errno()
                raise OSError(err, f"unshare(CLONE_FS): {os.strerror(err)}")
            os.chdir(path)
            box["value"] = fn()
        except BaseException as exc:  # handed to the caller's thread
            box["error"] = exc

    worker = threading.Thread(target=run, name="overlay-mount", daemon=True)
    worker.start()
    worker.join()
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    return box["value"]  # type: ignore[return-value]


def supports_lowerdir_plus(scratch_parent: str | os.PathLike) -> tuple[bool, str]:
    """Whether overlayfs takes ``lowerdir+`` through fsconfig (kernel >= 6.8), and why not.

    Kernels before 6.5 pass fsconfig keys through unchecked and only fail at
    create time, so the probe builds a real (never attached) superblock over
    two scratch directories.
    """
    scratch = os.path.join(os.fspath(scratch_parent),
                           f".lowerdir-probe-{os.getpid()}-{os.urandom(4).hex()}")
    try:
        fd = _fsopen("overlay")
    except OSError as exc:
        return False, f"fsopen unavailable ({exc.strerror})"
    try:
        os.makedirs(os.path.join(scratch, "a"))
        os.mkdir(os.path.join(scratch, "b"))
        for name in ("a", "b"):
            _fsconfig(fd, FSCONFIG_SET_STRING, "lowerdir+", os.path.join(scratch, name))
        _fsconfig(fd, FSCONFIG_CMD_CREATE)
        return True, ""
    except OSError as exc:
        if exc.errno != errno.EINVAL:
            return False, f"fsconfig lowerdir+ failed: {exc.strerror}"
        return False, "this kernel's overlayfs has no lowerdir+ (needs Linux 6.8 or later)"
    finally:
        os.close(fd)
        shutil.rmtree(scratch, ignore_errors=True)


def mount_new_api(target: str, lowers: Sequence[str], upper: str | None, work: str | None,
                  options: Sequence[tuple[str, str | None]], *, readonly: bool) -> None:
    """Mount an overlay at ``target`` via fsopen/fsconfig/fsmount/move_mount."""
    fd = _fsopen("overlay")
    try:
        try:
            for key, value in options:
                if value is None:
                    _fsconfig(fd, FSCONFIG_SET_FLAG, key)
                else:
                    _fsconfig(fd, FSCONFIG_SET_STRING, key, value)
            for lower in lowers:
                _fsconfig(fd, FSCONFIG_SET_STRING, "lowerdir+", lower)
            if upper is not None:
                _fsconfig(fd, FSCONFIG_SET_STRING, "upperdir", upper)
                _fsconfig(fd, FSCONFIG_SET_STRING, "workdir", work)
            _fsconfig(fd, FSCONFIG_CMD_CREATE)
        except MountError as exc:
            detail = _kernel_log(fd)
            raise MountError(exc.errno, f"{exc.strerror}{' (' + detail + ')' if detail else ''}") \
                from None
        mfd = _check(_libc.syscall(SYS_FSMOUNT, ctypes.c_int(fd), ctypes.c_uint(FSMOUNT_CLOEXEC),
                                   ctypes.c_uint(MOUNT_ATTR_RDONLY if readonly else 0)), "fsmount")
    finally:
        os.close(fd)
    try:
        _check(_libc.syscall(SYS_MOVE_MOUNT, ctypes.c_int(mfd), ctypes.c_char_p(b""),
                             ctypes.c_int(AT_FDCWD), ctypes.c_char_p(os.fsencode(target)),
                             ctypes.c_uint(MOVE_MOUNT_F_EMPTY_PATH)), f"move_mount to {target}")
    finally:
        os.close(mfd)


def legacy_data(lowers: Sequence[str], upper: str | None, work: str | None,
                options: Sequence[tuple[str, str | None]]) -> str:
    """The mount(2) option string (may be longer than a page; the caller checks)."""
    # an SELinux context holds commas, so mount(2) needs it quoted (fsconfig does not)
    parts = [key if value is None else f'{key}="{value}"' if key == "context" else
             f"{key}={value}" for key, value in options]
    parts.append("lowerdir=" + ":".join(lowers))
    if upper is not None:
        parts += [f"upperdir={upper}", f"workdir={work}"]
    return ",".join(parts)


def mount_legacy(target: str, lowers: Sequence[str], upper: str | None, work: str | None,
                 options: Sequence[tuple[str, str | None]], *, readonly: bool) -> None:
    """Mount an overlay at ``target`` with mount(2); the option data must fit one page."""
    data = legacy_data(lowers, upper, work, options)
    if len(data.encode()) > PAGE_LIMIT:
        raise MountError(errno.E2BIG, f"overlay mount options are {len(data.encode())} bytes, "
                                      f"mount(2) takes at most {PAGE_LIMIT}")
    _mount.mount("overlay", target, "overlay", _mount.MS_RDONLY if readonly else 0, data)

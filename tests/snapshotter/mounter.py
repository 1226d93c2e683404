"""Mount what the snapshotter returns as containerd (1.6, mount_linux.go) does: option
words become mount(2) flags or data; overlay options that reach PAGE - 512 bytes are
shortened by mounting from the lowers' common directory with relative names; a
read-only bind is remounted read-only (one bind call ignores MS_RDONLY)."""
from __future__ import annotations

import os

from graphdrivers.kernel import mount as kmount
from graphdrivers.overlay.mountapi import in_directory

PAGE = os.sysconf("SC_PAGE_SIZE")
FLAGS = {"ro": (kmount.MS_RDONLY, False), "rw": (kmount.MS_RDONLY, True),
         "bind": (kmount.MS_BIND, False), "rbind": (kmount.MS_BIND | kmount.MS_REC, False),
         "nosuid": (kmount.MS_NOSUID, False), "nodev": (kmount.MS_NODEV, False)}


def _shorten(options: list[str]) -> tuple[str | None, list[str]]:
    index = next((i for i, o in enumerate(options) if o.startswith("lowerdir=")), None)
    if index is None:
        return None, options
    dirs = options[index][len("lowerdir="):].split(":")
    common = os.path.dirname(os.path.commonprefix(dirs))
    if len(dirs) == 1 or common in ("", "/"):
        return None, options
    rest = options[:index] + options[index + 1:]
    return common, rest + ["lowerdir=" + ":".join(d[len(common) + 1:] for d in dirs)]


def mount_all(mounts, target: str) -> None:
    for m in mounts:
        options, chdir = list(m.options), None
        if m.type == "overlay" and sum(map(len, options)) >= PAGE - 512:
            chdir, options = _shorten(options)
        flags, data = 0, []
        for option in options:
            if option in FLAGS:
                bit, clear = FLAGS[option]
                flags = flags & ~bit if clear else flags | bit
            else:
                data.append(option)
        text = ",".join(data) or None
        if text and len(text) > PAGE:
            raise OSError(7, "mount options is too long")
        call = lambda: kmount.mount(m.source, target, m.type, flags, text)  # noqa: E731
        in_directory(chdir, call) if chdir else call()
        if flags & kmount.MS_BIND and flags & kmount.MS_RDONLY:
            kmount.mount("", target, None, flags | kmount.MS_REMOUNT, None)


def unmount(target: str) -> None:
    kmount.umount(target, retries=5)

"""Overlay mounts for a caller that performs them itself (containerd via the snapshotter).

Such a caller mounts with mount(2), whose data is one page: at most PAGE_SIZE - 1 bytes of
options. The lowers are given as absolute ``<home>/l/<short>`` links (26-character
names). containerd (1.6 to 2.x, ``mount_linux.go``) shortens overlay options that reach
PAGE_SIZE - 512 bytes itself: it mounts from the lowers' common directory (``<home>/l``)
with relative names, 27 bytes per lower ("<short>:"). So the depth that mounts is
(4095 - the other options) / 27: about 144 lowers with a home of 20 characters, fewer
with a longer home, since upperdir and workdir stay absolute. ``check_fits`` refuses a
chain past that point with the numbers, before the caller's mount would fail.
"""
from __future__ import annotations

import os

from graphdrivers.capabilities import MountSpec
from graphdrivers.errors import LimitExceeded

PAGE = os.sysconf("SC_PAGE_SIZE")


class TooDeepForOneMount(LimitExceeded):
    """The overlay options of a layer's chain do not fit in one mount(2) call."""


def overlay_mount(lowers: list[str], upper: str | None, work: str | None,
                  options: list[tuple[str, str | None]], *, readonly: bool) -> MountSpec:
    """An ``overlay`` MountSpec: ``lowers`` absolute, nearest parent first."""
    opts = [k if v is None else f"{k}={v}" for k, v in options]
    if readonly or upper is None:
        opts.insert(0, "ro")
    else:
        opts += [f"workdir={work}", f"upperdir={upper}"]
    opts.append("lowerdir=" + ":".join(lowers))
    spec = MountSpec("overlay", "overlay", tuple(opts))
    check_fits(spec, len(lowers))
    return spec


def data_size(options: tuple[str, ...]) -> int:
    """Bytes of mount(2) data the caller passes: the non-flag options joined by commas,
    after containerd's shortening of the lowers when the options reach PAGE - 512."""
    data = [o for o in options if o not in ("ro", "rw")]
    if sum(len(o) for o in options) >= PAGE - 512:
        data = [_relative_lowers(o) if o.startswith("lowerdir=") else o for o in data]
    return len(",".join(data).encode())


def _relative_lowers(option: str) -> str:
    dirs = option[len("lowerdir="):].split(":")
    common = os.path.dirname(os.path.commonprefix(dirs))
    if len(dirs) == 1 or common in ("", "/"):
        return option
    return "lowerdir=" + ":".join(d[len(common) + 1:] for d in dirs)


def check_fits(spec: MountSpec, depth: int) -> None:
    size = data_size(spec.options)
    if size <= PAGE - 1:
        return
    per_lower = max(1, len(_relative_lowers(
        next(o for o in spec.options if o.startswith("lowerdir="))).encode()) // max(depth, 1))
    fits = depth - (size - (PAGE - 1) + per_lower - 1) // per_lower
    raise TooDeepForOneMount(
        f"a chain of {depth} lower layers needs {size} bytes of overlay mount options; "
        f"mount(2) takes at most {PAGE - 1}, so at most about {fits} lower layers mount "
        "here; squash the image or start a new chain (a shorter --home path leaves room "
        "for a few more)")

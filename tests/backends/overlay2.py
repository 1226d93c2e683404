"""overlay2's conformance home: XFS with project quotas when this kernel has them.

overlay2 itself runs on any ext4 or xfs directory, but its ``size`` option
needs XFS mounted with ``pquota``. Where the kernel supports XFS quotas
(Debian's does; the development host's kernel lacks CONFIG_XFS_QUOTA), the
home is put on a fresh XFS on a loop device so the quota cases run too;
elsewhere a plain temporary directory is used. The check is made once per
session.
"""
from __future__ import annotations

import contextlib
import shutil
import subprocess
from pathlib import Path

from graphdrivers import loopback, mount

SIZE = 320 << 20          # XFS's smallest filesystem; sparse, so it costs what is written
_xfs_quota: bool | None = None


@contextlib.contextmanager
def _xfs(tmp_path: Path):
    """Yield the mount point of a fresh XFS (prjquota) on a loop device, or None."""
    mkfs = shutil.which("mkfs.xfs")
    if mkfs is None:
        yield None
        return
    image, target = tmp_path / "xfs.img", tmp_path / "xfs"
    target.mkdir()
    with open(image, "wb") as f:
        f.truncate(SIZE)
    try:
        subprocess.run([mkfs, "-q", "-f", str(image)], check=True, capture_output=True)
        device = loopback.attach(image)
        try:
            try:
                mount.mount(device.path, target, "xfs", 0, "prjquota")
            except OSError:
                yield None
                return
            try:
                yield target
            finally:
                mount.unmount_all_under(target / "home")
                try:
                    mount.umount(target, retries=20)
                except OSError:
                    mount.umount(target, mount.MNT_DETACH)
        finally:
            device.close()
    finally:
        image.unlink(missing_ok=True)


@contextlib.contextmanager
def backend(tmp_path: Path):
    global _xfs_quota
    if _xfs_quota is False:
        yield tmp_path / "home", {}
        return
    with _xfs(tmp_path) as target:
        _xfs_quota = target is not None
        yield (target if target is not None else tmp_path) / "home", {}

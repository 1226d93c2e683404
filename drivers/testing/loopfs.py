"""A fresh filesystem on a sparse file behind a loop device, for tests that need
a particular backing filesystem (btrfs, XFS with project quotas, a small ext4).

Skips only when the machine really cannot do it (no mkfs, no loop device, the
kernel refuses the mount), saying which. Everything is released on exit: the
mounts under it, the mount itself, then the loop device (autoclear).
"""
from __future__ import annotations

import contextlib
import shutil
import subprocess
from pathlib import Path
from typing import Iterator

import pytest
from graphdrivers.kernel import loop as loopback
from graphdrivers.kernel import mount

HINTS = {"xfs": "project quotas need CONFIG_XFS_QUOTA; Debian's kernel has it "
                "(scripts/vm-test runs these tests there)"}


@contextlib.contextmanager
def loop_filesystem(tmp_path: Path, fstype: str, size: int, options: str = "",
                    name: str | None = None) -> Iterator[Path]:
    """Make ``fstype`` on a ``size``-byte sparse file, mount it with ``options``; yield it."""
    mkfs = shutil.which(f"mkfs.{fstype}")
    if mkfs is None:
        pytest.skip(f"mkfs.{fstype} is not installed")
    name = name or fstype
    image, target = tmp_path / f"{name}.img", tmp_path / name
    target.mkdir()
    with open(image, "wb") as f:
        f.truncate(size)
    try:
        force = ["-F"] if fstype.startswith("ext") else ["-f"]
        subprocess.run([mkfs, "-q", *force, str(image)], check=True, capture_output=True)
        try:
            device = loopback.attach(image)
        except OSError as exc:
            pytest.skip(f"no loop device for a test {fstype}: {exc}")
        try:
            try:
                mount.mount(device.path, target, fstype, 0, options or None)
            except OSError as exc:
                hint = f"; {HINTS[fstype]}" if fstype in HINTS and options else ""
                pytest.skip(f"the kernel refused to mount {fstype} with {options or 'defaults'!r} "
                            f"({exc.strerror}){hint}")
            try:
                yield target
            finally:
                mount.unmount_all_under(target)
        finally:
            device.close()        # autoclear detaches the loop device once unmounted
    finally:
        image.unlink(missing_ok=True)

"""A btrfs filesystem for the btrfs driver's tests: a sparse file on a loop device.

``backend`` is the driver's home maker for the conformance suite (registered in
setup.cfg under the graphdrivers.testing.homes entry points).

Everything made here is released in ``finally`` blocks: the mount, then the
loop device (autoclear, so closing our descriptor after the unmount frees it).
"""
from __future__ import annotations

import contextlib
from pathlib import Path

from graphdrivers.testing.loopfs import loop_filesystem

SIZE = 1 << 30       # sparse: costs only what is written


@contextlib.contextmanager
def filesystem(tmp_path: Path, size: int = SIZE):
    """Mount a fresh btrfs on a loop device; yield the mount point."""
    with loop_filesystem(tmp_path, "btrfs", size) as target:
        yield target


@contextlib.contextmanager
def backend(tmp_path: Path):
    with filesystem(tmp_path) as target:
        yield target / "home", {}

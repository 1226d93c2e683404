"""devicemapper test backend: a small loopback thin pool under the test's tmp dir.

``backend`` is the driver's home maker for the conformance suite (registered in
setup.cfg under the graphdrivers.testing.homes entry points).

Skips on a kernel without device-mapper (the development hosts); in the VM
(scripts/vm-test) it yields a home with a 2GB/64MB loop pool and a 512MB base,
and afterwards removes every mount, dm device and loop device the test left.
"""
from __future__ import annotations

import contextlib
import errno
import os
import time
from pathlib import Path

import pytest

SMALL_POOL = {"dm.loopdatasize": "2GB", "dm.loopmetadatasize": "64MB", "dm.basesize": "512MB"}


def without_loop_sizes(options: dict) -> dict:
    """The options of a restart that leaves the loop files' sizes to the pool."""
    return {k: v for k, v in options.items() if k not in ("dm.loopdatasize", "dm.loopmetadatasize")}


def require_dm() -> None:
    from graphdrivers.devmapper import dm
    reason = dm.available()
    if reason:
        pytest.skip(f"devicemapper: {reason}")


@contextlib.contextmanager
def backend(tmp_path: Path, options: dict | None = None):
    require_dm()
    from graphdrivers.devmapper import dm
    before = set(dm.list_devices())
    try:
        yield tmp_path / "home", dict(SMALL_POOL if options is None else options)
    finally:
        teardown(tmp_path, before)


def teardown(root: Path, keep: set[str]) -> None:
    """Remove what a test under ``root`` left: mounts, dm devices (not in ``keep``), loops."""
    from graphdrivers.kernel import loop as loopback
    from graphdrivers.devmapper import dm
    from graphdrivers.kernel.mount import MNT_DETACH, mounts_under, umount
    for target in mounts_under(root):
        try:
            umount(target, retries=3)
        except OSError:
            umount(target, MNT_DETACH)
    leftover = [n for n in dm.list_devices() if n not in keep and n.startswith("graphdrivers-")]
    pools = [n for n in leftover if _is_pool(n)]
    for name in [n for n in leftover if n not in pools] + pools:
        info = dm.info(name)
        if info is None:
            continue
        if info.suspended:
            dm.resume(name)
        for _ in range(50):
            try:
                dm.remove(name)
                break
            except OSError:
                time.sleep(0.1)
    prefix = os.path.realpath(root)
    for entry in Path("/sys/block").glob("loop*/loop/backing_file"):
        try:
            backing = entry.read_text().strip()
        except OSError:   # detached meanwhile (autoclear runs asynchronously)
            continue
        if backing.startswith(prefix + "/"):
            try:
                loopback.detach("/dev/" + entry.parts[3])
            except OSError:
                pass


def pool_device_ids(pool, upto: int) -> set[int]:
    """Thin ids the kernel pool holds below ``upto``, probed with create_thin (EEXIST = taken)."""
    taken = set()
    for device_id in range(upto):
        try:
            pool.create_thin(device_id)
        except OSError as exc:
            assert exc.errno == errno.EEXIST, exc
            taken.add(device_id)
        else:
            pool.delete_thin(device_id)
    return taken


def wait_for(condition, timeout: float, step: float = 0.2) -> bool:
    """Poll ``condition`` until true or ``timeout`` seconds passed; returns the last answer."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return bool(condition())
        time.sleep(step)
    return True


def _is_pool(name: str) -> bool:
    from graphdrivers.devmapper import dm
    try:
        rows = dm.table(name)
    except OSError:
        return False
    return bool(rows) and rows[0][2] == "thin-pool"

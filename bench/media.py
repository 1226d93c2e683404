"""Backing media for the benchmarks: one filesystem, either on a loop file or
directly on a block device, with the same device underneath in both cases.

The point of the loop-versus-block comparison is that only the layering differs:

* ``block``    mkfs FSTYPE on the device itself;
* ``loop``     mkfs ext4 on the device, a sparse image file on it, a loop device
               on that file (buffered: the image's pages are cached a second
               time by the host filesystem, as Docker's loop-lvm did), mkfs
               FSTYPE on the loop device;
* ``loop-dio`` the same with the loop device in direct-I/O mode (no second
               page cache).
* ``delay``    the buffered loop device under a dm-delay table that holds every
               flush for GRAPHDRIVERS_BENCH_FLUSH_MS (default 2: a SATA SSD's cache
               flush; 8-15 is a spinning disk's) and passes reads and writes at once:
               a disk whose flushes cost what real ones do, where zram's cost
               nothing (needs device-mapper: the VM).

The device is a fresh zram device (``/sys/class/zram-control/hot_add``, RAM
backed, removed again with ``hot_remove``) unless the operator names a real
block device, which is wiped (mkfs) and so needs an explicit consent flag.
Everything made here is released in ``finally`` blocks, also on Ctrl-C.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator

from graphdrivers.kernel import loop as loopback
from graphdrivers.kernel import mount

KINDS = ("loop", "loop-dio", "block", "delay")
ZRAM_CONTROL = Path("/sys/class/zram-control")
# ext4's lazy inode-table init would keep writing in the background during the
# measurements; do it all in mkfs instead.
MKFS = {
    "ext4": ["mkfs.ext4", "-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0"],
    "xfs": ["mkfs.xfs", "-q", "-f"],
    "btrfs": ["mkfs.btrfs", "-q", "-f"],
}


class MediumError(RuntimeError):
    """The medium cannot be prepared on this machine (reason in the message)."""


@dataclass
class Medium:
    kind: str                 # loop | loop-dio | block
    fstype: str               # filesystem the driver's home sits on
    backing: str              # "zram" or the operator's device path
    device: str               # block device holding FSTYPE (/dev/loopN or the backing device)
    mountpoint: Path
    size: int
    details: dict = field(default_factory=dict)

    def describe(self) -> dict:
        d = asdict(self)
        d["mountpoint"] = str(self.mountpoint)
        return d


def mkfs(fstype: str, device: str) -> None:
    cmd = MKFS.get(fstype)
    if cmd is None:
        raise MediumError(f"no mkfs recipe for {fstype!r}")
    if shutil.which(cmd[0]) is None:
        raise MediumError(f"{cmd[0]} is not installed")
    subprocess.run([*cmd, device], check=True, capture_output=True)


@contextlib.contextmanager
def mounted(device: str, target: Path, fstype: str) -> Iterator[Path]:
    target.mkdir(parents=True, exist_ok=True)
    mount.mount(device, target, fstype)
    try:
        yield target
    finally:
        if mount.is_mountpoint(target):     # a cleanup under it may have unmounted it already
            try:
                mount.umount(target, retries=20)
            except OSError:         # still busy: detach so the device can be released
                mount.umount(target, mount.MNT_DETACH)


def _wait_detached(device: str, timeout: float = 5.0) -> None:
    """Autoclear detaches asynchronously; the host filesystem under the image
    can only be unmounted once the loop device let go of the file."""
    backing = Path("/sys/block") / Path(device).name / "loop" / "backing_file"
    deadline = time.monotonic() + timeout
    while backing.exists() and time.monotonic() < deadline:
        time.sleep(0.05)


@contextlib.contextmanager
def zram_device(size: int) -> Iterator[str]:
    """A fresh zram block device of ``size`` bytes, hot-removed afterwards."""
    if not (ZRAM_CONTROL / "hot_add").exists():
        raise MediumError("no zram (modprobe zram: /sys/class/zram-control/hot_add is missing)")
    num = int((ZRAM_CONTROL / "hot_add").read_text().strip())
    sysdir = Path(f"/sys/block/zram{num}")
    try:
        (sysdir / "disksize").write_text(str(size))
        yield f"/dev/zram{num}"
    finally:
        # a lazily detached mount or a loop device still closing can hold the
        # device for a moment: retry rather than leak it
        for _ in range(50):
            try:
                (sysdir / "reset").write_text("1")      # frees its memory
                (ZRAM_CONTROL / "hot_remove").write_text(str(num))
                break
            except OSError:
                time.sleep(0.1)


@contextlib.contextmanager
def backing_device(size: int, device: str | None) -> Iterator[tuple[str, str]]:
    """Yield (device path, label): the operator's device, or a zram device."""
    if device:
        yield device, device
    else:
        # room for the host filesystem's own metadata when it holds the image file
        with zram_device(size + max(size // 16, 64 << 20)) as dev:
            yield dev, "zram"


def check_operator_device(device: str, destroy_ok: bool) -> None:
    """Refuse anything but an unmounted block device the operator agreed to wipe."""
    import stat
    if not destroy_ok:
        raise MediumError(f"{device} would be wiped: pass --yes-destroy-data to allow it")
    try:
        st = os.stat(device)
    except OSError as exc:
        raise MediumError(f"{device}: {exc.strerror}") from exc
    if not stat.S_ISBLK(st.st_mode):
        raise MediumError(f"{device} is not a block device")
    real = os.path.realpath(device)
    for entry in mount.mountinfo():
        if entry.source.startswith("/dev/") and os.path.realpath(entry.source) == real:
            raise MediumError(f"{device} is mounted; refusing to wipe it")


def flush_ms() -> int:
    return int(os.environ.get("GRAPHDRIVERS_BENCH_FLUSH_MS", "2"))


@contextlib.contextmanager
def flush_delayed(device: str, kind: str) -> Iterator[str]:
    """``device`` itself, or for ``delay`` a dm-delay device over it that holds flushes.
    (Over a write-through device such as zram the kernel drops flushes before dm-delay
    sees them; the buffered loop device under it has a write cache, so they reach it.)"""
    if kind != "delay":
        yield device
        return
    from graphdrivers.devmapper import blockdev, dm
    if dm.available():
        raise MediumError(f"the delay medium needs device-mapper: {dm.available()}")
    name = f"gdbench-delay-{os.getpid()}-{os.path.basename(device)}"   # one per medium
    sectors = blockdev.size_bytes(device) // 512
    dm.create(name, [(0, sectors, "delay",
                      f"{device} 0 0 {device} 0 0 {device} 0 {flush_ms()}")])
    try:
        yield dm.device_path(name)
    finally:
        dm.remove(name, retries=50)


@contextlib.contextmanager
def medium(kind: str, fstype: str, workdir: Path, size: int,
           device: str | None = None) -> Iterator[Medium]:
    """Prepare ``fstype`` for the benchmarks on medium ``kind``; yield it mounted."""
    if kind not in KINDS:
        raise MediumError(f"unknown medium {kind!r} (one of {', '.join(KINDS)})")
    workdir.mkdir(parents=True, exist_ok=True)
    with backing_device(size, device) as (dev, label):
        if kind == "block":
            mkfs(fstype, dev)
            with mounted(dev, workdir / "fs", fstype) as target:
                yield Medium(kind, fstype, label, dev, target, size)
            return
        mkfs("ext4", dev)
        with mounted(dev, workdir / "host", "ext4") as host:
            image = host / "image"
            with open(image, "wb") as f:
                f.truncate(size)     # sparse, as Docker's loop files are
            loop = loopback.attach(image, direct_io=(kind == "loop-dio"))
            try:
                dio = loopback.direct_io_enabled(loop.path)
                if kind == "loop-dio" and not dio:
                    raise MediumError(f"{loop.path}: the kernel refused direct I/O")
                with flush_delayed(loop.path, kind) as fs_device:
                    mkfs(fstype, fs_device)
                    with mounted(fs_device, workdir / "fs", fstype) as target:
                        details = {"image_on": f"ext4 on {dev}", "loop_direct_io": dio}
                        if kind == "delay":
                            details["flush_delay_ms"] = flush_ms()
                        yield Medium(kind, fstype, label, fs_device, target, size, details)
            finally:
                loop.close()        # autoclear: the loop device goes with the last user
                _wait_detached(loop.path)

"""The ``dm.*`` storage options: parsing and cross-checks, no side effects.

Every option keeps Docker's spelling and default (see docs/devicemapper.md).
Parsing goes through graphdrivers.options so unknown keys and bad values raise
InvalidOption before anything is created on disk.
"""
from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from typing import Any, Mapping

from graphdrivers.errors import InvalidOption
from graphdrivers.options import Option, parse_bool, parse_int, parse_options, parse_size

from .poolstatus import MAX_BLOCK_SECTORS, MIN_BLOCK_SECTORS, SECTOR

GiB = 1 << 30
MiB = 1 << 20
KiB = 1 << 10


def _fs(text: str) -> str:
    value = str(text).strip().lower()
    if value not in ("xfs", "ext4"):
        raise ValueError("only xfs and ext4 are supported")
    return value


def _blocksize(text: str) -> int:
    # The thin-pool target wants a multiple of 64 KiB between 64 KiB and 1 GiB.
    size = parse_size(text)
    low, high = MIN_BLOCK_SECTORS * SECTOR, MAX_BLOCK_SECTORS * SECTOR
    if size % low or not low <= size <= high:
        raise ValueError("must be a multiple of 64KB between 64KB and 1GB")
    return size


def _min_free(text: str) -> int:
    value = str(text).strip()
    if not value.endswith("%") or not value[:-1].isdigit() or not 0 <= int(value[:-1]) < 100:
        raise ValueError("must be a percentage from 0% to 99% (for example 10%)")
    return int(value[:-1])


def _pct_below_100(text: str) -> int:
    value = str(text).strip().rstrip("%")
    if not value.isdigit() or not 0 < int(value) < 100:
        raise ValueError("must be a percentage between 1 and 99")
    return int(value)


def _pct_to_100(text: str) -> int:
    value = str(text).strip().rstrip("%")
    if not value.isdigit() or not 0 < int(value) <= 100:
        raise ValueError("must be a percentage between 1 and 100")
    return int(value)


def _uint(text: str) -> int:
    value = parse_int(text)
    if value < 0:
        raise ValueError("must be 0 or a positive integer")
    return value


def _log_level(text: str) -> int:
    value = parse_int(text)
    if not 2 <= value <= 7:
        raise ValueError("must be an integer from 2 (fatal) to 7 (debug)")
    return value


def _pool_name(text: str) -> str:
    value = str(text).strip()
    if value.startswith("/dev/mapper/"):
        value = value[len("/dev/mapper/"):]
    if "/" in value:
        raise ValueError("name the pool as /dev/mapper/<name> or <name>")
    return value


def _mkfsargs(text: str) -> list[str]:
    return shlex.split(str(text))


def _size_min(minimum: int):
    def parse(text: str) -> int:
        size = parse_size(text)
        if size < minimum:
            raise ValueError(f"must be at least {minimum // MiB}MB")
        return size
    return parse


OPTIONS: dict[str, Option] = {
    "dm.basesize": Option(_size_min(16 * MiB), None, "size of the base device = largest layer filesystem (default 10GB)"),
    "dm.loopdatasize": Option(_size_min(16 * MiB), None, "size of the sparse data file (default 100GB)"),
    "dm.loopmetadatasize": Option(_size_min(2 * MiB), None, "size of the sparse metadata file (default 2GB)"),
    "dm.loopdirectio": Option(parse_bool, False, "attach the loop files with direct I/O (no double page cache)"),
    "dm.fs": Option(_fs, None, "filesystem of the base device: xfs (default when mkfs.xfs exists) or ext4"),
    "dm.mkfsarg": Option(_mkfsargs, [], "extra mkfs arguments (shell words)"),
    "dm.mountopt": Option(str, "", "extra mount options, comma separated"),
    "dm.thinpooldev": Option(_pool_name, "", "use this existing thin pool (/dev/mapper/<name>)"),
    "dm.datadev": Option(str, "", "block device for pool data instead of the loop file"),
    "dm.metadatadev": Option(str, "", "block device for pool metadata instead of the loop file"),
    "dm.blocksize": Option(_blocksize, 64 * KiB, "thin-pool allocation unit (default 64KB)"),
    "dm.blkdiscard": Option(parse_bool, None, "discard a device's blocks before deleting it (default: true on loop files)"),
    "dm.override_udev_sync_check": Option(parse_bool, False, "accepted for compatibility; raw ioctls never wait for udev"),
    "dm.use_deferred_removal": Option(parse_bool, None, "deactivate busy devices lazily (default: when the kernel supports it)"),
    "dm.use_deferred_deletion": Option(parse_bool, None, "delete busy devices later in the background (default: as dm.use_deferred_removal)"),
    "dm.min_free_space": Option(_min_free, 10, "refuse new layers when the pool has less free space (default 10%)"),
    "dm.xfs_nospace_max_retries": Option(_uint, None, "xfs retries on ENOSPC before failing (0 = fail at once)"),
    "dm.directlvm_device": Option(str, "", "build an LVM thin pool on this block device"),
    "dm.directlvm_device_force": Option(parse_bool, False, "wipe dm.directlvm_device even if it holds a filesystem"),
    "dm.thinp_percent": Option(_pct_below_100, None, "data LV size in % of the volume group (default 95)"),
    "dm.thinp_metapercent": Option(_pct_below_100, None, "metadata LV size in % of the volume group (default 1)"),
    "dm.thinp_autoextend_threshold": Option(_pct_to_100, 80, "lvm autoextend threshold %"),
    "dm.thinp_autoextend_percent": Option(_pct_to_100, 20, "lvm autoextend step %"),
    "dm.libdm_log_level": Option(_log_level, 2, "level of device-mapper messages logged: 2 none (default), 3 errors, 4 warnings, 5-6 info, 7 every ioctl"),
}

LAYER_OPTIONS: dict[str, Option] = {
    "size": Option(parse_size, None, "size of this layer's filesystem (at least the base size)"),
}

DEFAULT_BASESIZE = 10 * GiB
DEFAULT_LOOPDATASIZE = 100 * GiB
DEFAULT_LOOPMETADATASIZE = 2 * GiB


@dataclass
class Config:
    basesize: int
    basesize_given: bool
    loopdatasize: int
    loopdatasize_given: bool
    loopmetadatasize: int
    loopmetadatasize_given: bool
    loop_direct_io: bool
    fs: str | None
    mkfsargs: list[str]
    mountopt: str
    thinpooldev: str
    datadev: str
    metadatadev: str
    blocksize: int
    blkdiscard: bool | None
    override_udev_sync_check: bool
    deferred_removal: bool | None
    deferred_deletion: bool | None
    min_free_space: int
    xfs_nospace_max_retries: int | None
    directlvm_device: str
    directlvm_force: bool
    thinp_percent: int
    thinp_metapercent: int
    thinp_autoextend_threshold: int
    thinp_autoextend_percent: int
    log_level: int
    raw: dict[str, Any] = field(default_factory=dict)

    @property
    def uses_loop_files(self) -> bool:
        return not (self.thinpooldev or self.directlvm_device or self.datadev)


def parse_config(given: Mapping[str, str] | None) -> Config:
    """Parse and cross-check the driver options (InvalidOption on any problem)."""
    v = parse_options(given, OPTIONS)
    if bool(v["dm.datadev"]) != bool(v["dm.metadatadev"]):
        raise InvalidOption("dm.datadev and dm.metadatadev must be given together")
    sources = [k for k in ("dm.thinpooldev", "dm.datadev", "dm.directlvm_device") if v[k]]
    if len(sources) > 1:
        raise InvalidOption(f"{' and '.join(sources)} exclude each other: choose one pool source")
    if (v["dm.thinp_percent"] is None) != (v["dm.thinp_metapercent"] is None):
        raise InvalidOption("dm.thinp_percent and dm.thinp_metapercent must be given together")
    percent = v["dm.thinp_percent"] or 95
    metapercent = v["dm.thinp_metapercent"] or 1
    if percent + metapercent > 100:
        raise InvalidOption(f"dm.thinp_percent ({percent}) + dm.thinp_metapercent ({metapercent}) exceed 100%")
    lvm_keys = ("dm.thinp_percent", "dm.thinp_metapercent", "dm.directlvm_device_force")
    if not v["dm.directlvm_device"] and any(
            key in {str(k).strip().lower() for k in (given or {})} for key in lvm_keys):
        raise InvalidOption("dm.thinp_* and dm.directlvm_device_force need dm.directlvm_device")
    if v["dm.use_deferred_deletion"] and v["dm.use_deferred_removal"] is False:
        raise InvalidOption("dm.use_deferred_deletion=true needs dm.use_deferred_removal (it is false)")
    return Config(
        basesize=v["dm.basesize"] or DEFAULT_BASESIZE,
        basesize_given=v["dm.basesize"] is not None,
        loopdatasize=v["dm.loopdatasize"] or DEFAULT_LOOPDATASIZE,
        loopdatasize_given=v["dm.loopdatasize"] is not None,
        loopmetadatasize=v["dm.loopmetadatasize"] or DEFAULT_LOOPMETADATASIZE,
        loopmetadatasize_given=v["dm.loopmetadatasize"] is not None,
        loop_direct_io=v["dm.loopdirectio"],
        fs=v["dm.fs"],
        mkfsargs=list(v["dm.mkfsarg"]),
        mountopt=v["dm.mountopt"].strip(","),
        thinpooldev=v["dm.thinpooldev"],
        datadev=v["dm.datadev"],
        metadatadev=v["dm.metadatadev"],
        blocksize=v["dm.blocksize"],
        blkdiscard=v["dm.blkdiscard"],
        override_udev_sync_check=v["dm.override_udev_sync_check"],
        deferred_removal=v["dm.use_deferred_removal"],
        deferred_deletion=v["dm.use_deferred_deletion"],
        min_free_space=v["dm.min_free_space"],
        xfs_nospace_max_retries=v["dm.xfs_nospace_max_retries"],
        directlvm_device=v["dm.directlvm_device"],
        directlvm_force=v["dm.directlvm_device_force"],
        thinp_percent=percent,
        thinp_metapercent=metapercent,
        thinp_autoextend_threshold=v["dm.thinp_autoextend_threshold"],
        thinp_autoextend_percent=v["dm.thinp_autoextend_percent"],
        log_level=v["dm.libdm_log_level"],
        raw=dict(given or {}),
    )

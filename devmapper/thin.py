"""dm-thin on top of dm.py: pool messages, status parsing and table builders.

Facts from the kernel's Documentation/admin-guide/device-mapper/thin-provisioning.rst:
- pool table: ``<meta dev> <data dev> <block sectors> <low water blocks> <#features> <features...>``,
  block size a multiple of 128 sectors (64 KiB) between 128 and 2097152;
- thin table: ``<pool dev> <dev id>``; device ids are 24 bits;
- pool status: ``<transaction id> <used meta>/<total meta> <used data>/<total data>
  <held metadata root|-> ro|rw|out_of_data_space [no_]discard_passdown
  error|queue_if_no_space needs_check|- [metadata low watermark]``, or ``Fail``;
- thin status: ``<mapped sectors> <highest mapped sector>``, ``-`` for the latter when
  nothing is mapped, or ``Fail``;
- ``create_snap`` needs an active origin suspended first (the caller does that).
"""
from __future__ import annotations

import errno
from dataclasses import dataclass

from . import dm

MAX_DEVICE_ID = 0xFFFFFF   # 24-bit thin device ids
MIN_BLOCK_SECTORS = 128
MAX_BLOCK_SECTORS = 2097152
METADATA_BLOCK_BYTES = 4096   # thin-pool metadata blocks are always 4 KiB
DEFAULT_LOW_WATER_BLOCKS = 32768


@dataclass(frozen=True)
class PoolStatus:
    transaction_id: int
    used_meta_blocks: int
    total_meta_blocks: int
    used_data_blocks: int
    total_data_blocks: int
    held_root: int | None
    mode: str                   # "rw", "ro", "out_of_data_space" or "fail"
    needs_check: bool
    discard_passdown: bool = True
    no_space_policy: str = "queue"      # "queue" or "error"
    metadata_low_watermark: int | None = None
    sectors: int = 0            # the pool's length (its data device in use)

    @property
    def block_sectors(self) -> int:
        return self.sectors // self.total_data_blocks if self.total_data_blocks else 0

    @property
    def data_used_bytes(self) -> int:
        return self.used_data_blocks * self.block_sectors * 512

    @property
    def data_total_bytes(self) -> int:
        return self.total_data_blocks * self.block_sectors * 512

    @property
    def meta_used_bytes(self) -> int:
        return self.used_meta_blocks * METADATA_BLOCK_BYTES

    @property
    def meta_total_bytes(self) -> int:
        return self.total_meta_blocks * METADATA_BLOCK_BYTES


@dataclass(frozen=True)
class ThinStatus:
    mapped_sectors: int
    highest_mapped_sector: int | None
    failed: bool = False


def _used_total(field: str, line: str) -> tuple[int, int]:
    used, sep, total = field.partition("/")
    if not sep:
        raise ValueError(f"thin-pool status {line!r}: expected used/total, got {field!r}")
    return int(used), int(total)


def parse_pool_status(sectors: int, line: str) -> PoolStatus:
    """Parse a thin-pool target's status line."""
    fields = line.split()
    if fields and fields[0] == "Fail":
        return PoolStatus(0, 0, 0, 0, 0, None, "fail", True, sectors=sectors)
    if len(fields) < 5:
        raise ValueError(f"not a thin-pool status line: {line!r}")
    meta_used, meta_total = _used_total(fields[1], line)
    data_used, data_total = _used_total(fields[2], line)
    rest = fields[5:]
    low_watermark = None
    if len(rest) >= 4 and rest[3].isdigit():
        low_watermark = int(rest[3])
    return PoolStatus(
        transaction_id=int(fields[0]),
        used_meta_blocks=meta_used, total_meta_blocks=meta_total,
        used_data_blocks=data_used, total_data_blocks=data_total,
        held_root=None if fields[3] == "-" else int(fields[3]),
        mode=fields[4],
        discard_passdown=not (rest and rest[0] == "no_discard_passdown"),
        no_space_policy="error" if "error_if_no_space" in rest else "queue",
        needs_check="needs_check" in rest,
        metadata_low_watermark=low_watermark,
        sectors=sectors)


def parse_thin_status(line: str) -> ThinStatus:
    fields = line.split()
    if not fields or fields[0] == "Fail":
        return ThinStatus(0, None, failed=True)
    highest = None if len(fields) < 2 or fields[1] == "-" else int(fields[1])
    return ThinStatus(int(fields[0]), highest)


def _single(name: str, rows: dm.Table, target: str) -> tuple[int, int, str, str]:
    if len(rows) != 1 or rows[0][2] != target:
        kinds = ", ".join(r[2] for r in rows) or "no table"
        raise dm.DmError(errno.EINVAL, "status", name, f"expected one {target} target, found {kinds}")
    return rows[0]


def pool_status(pool: str, *, noflush: bool = False) -> PoolStatus:
    """The pool's status from the kernel (by default the pool commits metadata first)."""
    _start, length, _target, line = _single(pool, dm.status(pool, noflush=noflush), "thin-pool")
    return parse_pool_status(length, line)


def thin_status(name: str) -> ThinStatus:
    _start, _length, _target, line = _single(name, dm.status(name), "thin")
    return parse_thin_status(line)


# -- pool messages ---------------------------------------------------------------

def _check_id(dev_id: int) -> None:
    if not 0 <= dev_id <= MAX_DEVICE_ID:
        raise dm.DmError(errno.EINVAL, "thin device id", str(dev_id), "must be 0..0xffffff")


def create_thin(pool: str, dev_id: int) -> None:
    """New empty thin device ``dev_id`` (EEXIST if the id is taken)."""
    _check_id(dev_id)
    dm.message(pool, f"create_thin {dev_id}")


def create_snap(pool: str, dev_id: int, origin_id: int) -> None:
    """Snapshot ``origin_id`` as ``dev_id``; an active origin must be suspended."""
    _check_id(dev_id)
    _check_id(origin_id)
    dm.message(pool, f"create_snap {dev_id} {origin_id}")


def delete_thin(pool: str, dev_id: int) -> None:
    """Delete thin device ``dev_id`` from the pool (it must not be active)."""
    _check_id(dev_id)
    dm.message(pool, f"delete {dev_id}")


def set_transaction_id(pool: str, old: int, new: int) -> None:
    """Compare-and-set the pool's 64-bit transaction id (EINVAL if ``old`` is wrong)."""
    dm.message(pool, f"set_transaction_id {old} {new}")


# -- tables ------------------------------------------------------------------------

def thin_pool_table(meta_dev: str, data_dev: str, data_sectors: int, block_sectors: int,
                    low_water_blocks: int = DEFAULT_LOW_WATER_BLOCKS,
                    features: tuple[str, ...] | list[str] = ("skip_block_zeroing",)) -> dm.Table:
    """A one-target thin-pool table; ``data_sectors`` is rounded down to whole blocks."""
    if (block_sectors % MIN_BLOCK_SECTORS or not
            MIN_BLOCK_SECTORS <= block_sectors <= MAX_BLOCK_SECTORS):
        raise ValueError(f"thin-pool block size {block_sectors} sectors: must be a multiple of "
                         f"{MIN_BLOCK_SECTORS} between {MIN_BLOCK_SECTORS} and {MAX_BLOCK_SECTORS}")
    sectors = data_sectors // block_sectors * block_sectors
    if sectors <= 0:
        raise ValueError(f"data device of {data_sectors} sectors is smaller than one block")
    params = f"{meta_dev} {data_dev} {block_sectors} {low_water_blocks} {len(features)}"
    if features:
        params += " " + " ".join(features)
    return [(0, sectors, "thin-pool", params)]


def thin_table(pool_dev: str, dev_id: int, sectors: int) -> dm.Table:
    """A one-target thin table mapping ``sectors`` of thin device ``dev_id``."""
    _check_id(dev_id)
    if sectors <= 0:
        raise ValueError(f"thin device size must be positive, got {sectors} sectors")
    return [(0, sectors, "thin", f"{pool_dev} {dev_id}")]

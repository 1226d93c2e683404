"""The thin-pool and thin targets' text, both ways: status lines parsed, table lines
built, and the limits they obey. No kernel access here (pool.py sends them).

Facts from the kernel's Documentation/admin-guide/device-mapper/thin-provisioning.rst:
- pool table: ``<meta dev> <data dev> <block sectors> <low water blocks> <#features> <features...>``,
  block size a multiple of 128 sectors (64 KiB) between 128 and 2097152 (1 GiB);
- thin table: ``<pool dev> <dev id>``; device ids are 24 bits;
- pool status: ``<transaction id> <used meta>/<total meta> <used data>/<total data>
  <held metadata root|-> ro|rw|out_of_data_space [no_]discard_passdown
  error|queue_if_no_space needs_check|- [metadata low watermark]``, or ``Fail``;
- thin status: ``<mapped sectors> <highest mapped sector>``, ``-`` for the latter when
  nothing is mapped, or ``Fail``.
"""
from __future__ import annotations

import errno
from dataclasses import dataclass

from .dm import DmError, Table

SECTOR = 512
METADATA_BLOCK = 4096          # thin-pool metadata blocks are always 4 KiB
MAX_DEVICE_ID = 0xFFFFFF       # thin device ids are 24 bits
MIN_BLOCK_SECTORS = 128        # 64 KiB
MAX_BLOCK_SECTORS = 2097152    # 1 GiB
LOW_WATER_BLOCKS = 32768


@dataclass
class PoolStatus:
    transaction_id: int
    used_meta_blocks: int
    total_meta_blocks: int
    used_data_blocks: int
    total_data_blocks: int
    block_sectors: int
    mode: str               # rw, ro, out_of_data_space, fail
    needs_check: bool
    length_sectors: int
    held_root: int | None = None
    discard_passdown: bool = True
    no_space_policy: str = "queue"      # "queue" or "error"
    metadata_low_watermark: int | None = None

    @property
    def block_bytes(self) -> int:
        return self.block_sectors * SECTOR

    @property
    def data_used(self) -> int:
        return self.used_data_blocks * self.block_bytes

    @property
    def data_total(self) -> int:
        return self.total_data_blocks * self.block_bytes

    @property
    def meta_used(self) -> int:
        return self.used_meta_blocks * METADATA_BLOCK

    @property
    def meta_total(self) -> int:
        return self.total_meta_blocks * METADATA_BLOCK


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


def parse_pool_status(length: int, params: str) -> PoolStatus:
    """Parse a thin-pool target's status line; ``length`` is the target's length in sectors."""
    fields = params.split()
    if not fields or fields[0] in ("Fail", "Error"):
        return PoolStatus(0, 0, 0, 0, 0, 0, "fail", True, length)
    if len(fields) < 5:
        raise ValueError(f"not a thin-pool status line: {params!r}")
    meta_used, meta_total = _used_total(fields[1], params)
    data_used, data_total = _used_total(fields[2], params)
    rest = fields[5:]
    return PoolStatus(
        transaction_id=int(fields[0]), used_meta_blocks=meta_used, total_meta_blocks=meta_total,
        used_data_blocks=data_used, total_data_blocks=data_total,
        block_sectors=length // data_total if data_total else 0,
        mode=fields[4], needs_check="needs_check" in rest, length_sectors=length,
        held_root=None if fields[3] == "-" else int(fields[3]),
        discard_passdown=not (rest and rest[0] == "no_discard_passdown"),
        no_space_policy="error" if "error_if_no_space" in rest else "queue",
        metadata_low_watermark=int(rest[3]) if len(rest) >= 4 and rest[3].isdigit() else None)


def parse_thin_status(params: str) -> ThinStatus:
    """Parse a thin target's status line."""
    fields = params.split()
    if not fields or fields[0] == "Fail":
        return ThinStatus(0, None, failed=True)
    highest = None if len(fields) < 2 or fields[1] == "-" else int(fields[1])
    return ThinStatus(int(fields[0]), highest)


def check_device_id(device_id: int) -> None:
    """Refuse an id the pool cannot hold before it reaches the kernel."""
    if not 0 <= device_id <= MAX_DEVICE_ID:
        raise DmError(errno.EINVAL, "thin device id", str(device_id), "must be 0..0xffffff")


def thin_pool_table(meta_dev: str, data_dev: str, data_sectors: int, block_sectors: int,
                    low_water_blocks: int = LOW_WATER_BLOCKS,
                    features: tuple[str, ...] | list[str] = ()) -> Table:
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


def thin_table(pool_dev: str, device_id: int, sectors: int) -> Table:
    """A one-target thin table mapping ``sectors`` of thin device ``device_id``."""
    check_device_id(device_id)
    if sectors <= 0:
        raise ValueError(f"thin device size must be positive, got {sectors} sectors")
    return [(0, sectors, "thin", f"{pool_dev} {device_id}")]

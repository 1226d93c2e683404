"""The thin-pool status line, parsed (no kernel access here)."""
from __future__ import annotations

from dataclasses import dataclass

SECTOR = 512
METADATA_BLOCK = 4096          # thin-pool metadata blocks are always 4 KiB


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


def parse_pool_status(length: int, params: str) -> PoolStatus:
    """Parse a thin-pool status line (kernel Documentation/admin-guide/device-mapper/thin-provisioning)."""
    fields = params.split()
    if not fields or fields[0] in ("Fail", "Error"):
        return PoolStatus(0, 0, 0, 0, 0, 0, "fail", True, length)
    meta_used, meta_total = (int(x) for x in fields[1].split("/"))
    data_used, data_total = (int(x) for x in fields[2].split("/"))
    return PoolStatus(
        transaction_id=int(fields[0]), used_meta_blocks=meta_used, total_meta_blocks=meta_total,
        used_data_blocks=data_used, total_data_blocks=data_total,
        block_sectors=length // data_total if data_total else 0,
        mode=fields[4] if len(fields) > 4 else "rw",
        needs_check="needs_check" in fields[5:], length_sectors=length)

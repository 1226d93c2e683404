"""The pool as an operator sees it: ``docker info`` rows, ``pool status`` numbers,
the free-space check before a new layer, and the online resize.

Reads go to the kernel's pool status; only the resize changes the pool, and it
takes the locks in the order devices.py writes down (instance lock, then pool lock).
"""
from __future__ import annotations

from typing import Any, Callable

from graphdrivers.errors import NoSpace
from graphdrivers.options import format_size

from . import dm
from .devices import ThinDevices
from .pool import LOOPBACK_WARNING, Pool
from .poolstatus import METADATA_BLOCK, PoolStatus


def _pool(devices: ThinDevices) -> Pool:
    assert devices.pool is not None
    return devices.pool


def check_free_space(devices: ThinDevices) -> None:
    """Refuse a new layer when the pool is full or under dm.min_free_space."""
    pool = _pool(devices)
    st = pool.status()
    if st.mode == "out_of_data_space":
        raise NoSpace(f"thin pool {pool.name} is out of data space "
                      f"({format_size(st.data_used)} of {format_size(st.data_total)} used); "
                      "grow it with `graphdrivers pool resize`")
    pct = devices.cfg.min_free_space
    if not pct:
        return
    for what, used, total, unit in (
            ("data", st.used_data_blocks, st.total_data_blocks, st.block_bytes),
            ("metadata", st.used_meta_blocks, st.total_meta_blocks, METADATA_BLOCK)):
        free, minimum = total - used, max(1, total * pct // 100)
        if free < minimum:
            raise NoSpace(
                f"thin pool {pool.name} has {free} free {what} blocks "
                f"({format_size(free * unit)}), less than the minimum {minimum} "
                f"({pct}% of {total} blocks, {format_size(minimum * unit)}); grow the pool "
                "(graphdrivers pool resize) or lower dm.min_free_space")


def status_rows(devices: ThinDevices) -> list[tuple[str, str]]:
    """The driver's ``status()``: the rows ``docker info`` shows for devicemapper."""
    pool = _pool(devices)
    st = pool.status()
    base = devices.store.base()
    rows = [("Pool Name", pool.name),
            ("Pool Blocksize", format_size(st.block_bytes)),
            ("Base Device Size", format_size(base.size if base else devices.cfg.basesize)),
            ("Backing Filesystem", devices.fs),   # what the thin devices hold, as docker info says
            ("Udev Sync Supported", str(dm.udev_sync_supported()).lower()),
            ("Data file", pool.data_device), ("Metadata file", pool.metadata_device)]
    if pool.kind == "loop":
        rows += [("Data loop file", str(pool.data_file)),
                 ("Metadata loop file", str(pool.metadata_file))]
    data_avail, meta_avail = _available(pool, st)
    pct = devices.cfg.min_free_space
    rows += [("Data Space Used", format_size(st.data_used)),
             ("Data Space Total", format_size(st.data_total)),
             ("Data Space Available", format_size(data_avail)),
             ("Metadata Space Used", format_size(st.meta_used)),
             ("Metadata Space Total", format_size(st.meta_total)),
             ("Metadata Space Available", format_size(meta_avail)),
             ("Thin Pool Minimum Free Space",
              format_size(st.total_data_blocks * pct // 100 * st.block_bytes)),
             ("Pool Mode", _mode_text(st.mode)),
             ("Deferred Removal Enabled", str(devices.deferred_removal).lower()),
             ("Deferred Deletion Enabled", str(devices.deferred_deletion).lower()),
             ("Deferred Deleted Device Count", str(len(devices.store.deleted()))),
             ("Library Version", dm.library_version())]
    if pool.kind == "loop":
        rows.append(("Warning", LOOPBACK_WARNING))
    return rows


def _available(pool: Pool, st: PoolStatus) -> tuple[int, int]:
    data_avail = st.data_total - st.data_used
    meta_avail = st.meta_total - st.meta_used
    if pool.kind == "loop":
        # a sparse file can only grow as far as the host filesystem lets it
        free = pool.host_free() or 0
        data_avail, meta_avail = min(data_avail, free), min(meta_avail, free)
    return data_avail, meta_avail


def pool_status(devices: ThinDevices) -> dict[str, Any]:
    """The pool in numbers (bytes), for `graphdrivers pool status` and embedding engines."""
    with devices.lock:
        pool = _pool(devices)
        st = pool.status()
        data_avail, meta_avail = _available(pool, st)
        result: dict[str, Any] = {
            "pool_name": pool.name, "pool_kind": pool.kind,
            "mode": st.mode, "needs_check": st.needs_check,
            "transaction_id": st.transaction_id,
            "block_size": st.block_bytes,
            "thin_devices": len(devices.store.all_device_ids()),
            "data_used": st.data_used, "data_total": st.data_total, "data_available": data_avail,
            "metadata_used": st.meta_used, "metadata_total": st.meta_total,
            "metadata_available": meta_avail,
            "min_free_space_percent": devices.cfg.min_free_space,
            "data_device": pool.data_device, "metadata_device": pool.metadata_device,
        }
        if pool.kind == "loop":
            result["data_loop_file"] = str(pool.data_file)
            result["metadata_loop_file"] = str(pool.metadata_file)
            result["host_free_space"] = pool.host_free()
        result["warnings"] = _warnings(pool, st, devices.cfg.min_free_space)
        return result


def _warnings(pool: Pool, st: PoolStatus, pct: int) -> list[str]:
    warnings = [LOOPBACK_WARNING] if pool.kind == "loop" else []
    if st.mode == "out_of_data_space":
        warnings.append("the pool is out of data space: writes fail with ENOSPC; grow it "
                        "with `graphdrivers pool resize --storage-opt dm.loopdatasize=SIZE`")
    elif st.mode in ("ro", "fail"):
        warnings.append(f"the pool is in {st.mode} mode (metadata problem); check it with "
                        "thin_check after deactivating it")
    if pct and st.total_data_blocks and \
            (st.total_data_blocks - st.used_data_blocks) * 100 < st.total_data_blocks * pct:
        warnings.append(f"free data space is under dm.min_free_space ({pct}%): "
                        "new layers are refused")
    if pct and st.total_meta_blocks and \
            (st.total_meta_blocks - st.used_meta_blocks) * 100 < st.total_meta_blocks * pct:
        warnings.append(f"free metadata space is under dm.min_free_space ({pct}%)")
    return warnings


def resize_pool(devices: ThinDevices, data_size: int | None = None,
                metadata_size: int | None = None, force: bool = False,
                progress: Callable[[str], None] | None = None, extend: str | None = None,
                extend_metadata: str | None = None) -> dict[str, Any]:
    """Grow the pool online (the driver's ``resize_pool``, documented there)."""
    say = progress or (lambda message: None)
    with devices.changing_pool():   # instance lock, then pool lock: the order creates use
        devices.check_open()
        if extend or extend_metadata:
            say("running lvextend on the thin pool")
        elif data_size or metadata_size:
            say("growing the backing files")
        else:
            say("reloading the table")
        _pool(devices).resize(data_size=data_size, metadata_size=metadata_size, force=force,
                              extend=extend, extend_metadata=extend_metadata)
        say("done")
    return pool_status(devices)


def _mode_text(mode: str) -> str:
    if mode == "out_of_data_space":
        return "out_of_data_space (the pool is full: writes fail; grow it with graphdrivers pool resize)"
    return mode

"""The devicemapper driver: every layer is a thin device in a thin pool.

The base device holds a fresh filesystem; a layer is a thin snapshot of its
parent (or of the base), so creating one costs a metadata update in the pool,
whatever the size of the parent. Mounting activates the device and mounts it at
``mnt/<id>``; the layer's root is ``mnt/<id>/rootfs``. Diffs come from the
naive differ (a block device cannot tell which files changed).

Pieces: config (dm.* options), pool (where the pool lives, messages, growth),
metadata (records + device ids), transaction (crash consistency), filesystem
(mkfs/grow), dm (kernel ioctls). This module only composes them.
"""
from __future__ import annotations

import errno
import hashlib
import logging
import os
import pathlib
import shutil
import threading
from typing import Any, Callable, Mapping

from graphdrivers.capabilities import PoolAdmin
from graphdrivers.driver import Driver
from graphdrivers.errors import (DriverError, InvalidOption, LayerExists, LayerInUse,
                                 LayerNotFound, NoSpace, NotSupported)
from graphdrivers.layerid import check_id
from graphdrivers.store.locks import IdLocks
from graphdrivers.kernel.mount import MNT_DETACH, is_mountpoint, umount
from graphdrivers.naivediff import NaiveDiff
from graphdrivers.options import format_size, parse_options
from graphdrivers.store.refcount import RefCounter

from . import dm, faults, filesystem
from .config import LAYER_OPTIONS, OPTIONS, Config, parse_config
from .metadata import DeviceRecord, MetadataStore
from .pool import LOOPBACK_WARNING, Pool, PoolLock, block_path, device_prefix
from .transaction import TransactionLog

log = logging.getLogger(__name__)

_DEFERRED_MIN_VERSION = (4, 27, 0)   # kernel dm with DM_DEFERRED_REMOVE


class DeviceMapperDriver(NaiveDiff, PoolAdmin, Driver):
    name = "devicemapper"
    OPTIONS = OPTIONS
    RESIZE_OPTIONS = {"dm.loopdatasize": "data_size", "dm.loopmetadatasize": "metadata_size"}
    deferred_delete_period = 30.0     # seconds between retries of busy deletions

    @classmethod
    def probe(cls, home: pathlib.Path) -> None:
        reason = dm.available()
        if reason:
            raise NotSupported(f"devicemapper: {reason}")

    def __init__(self, home: str | os.PathLike, options: Mapping[str, str] | None = None):
        super().__init__(home, options)
        self.cfg: Config = parse_config(options)   # before touching anything
        self.probe(self.home)
        self._lock = threading.RLock()
        self._ids = IdLocks(self.home_run)
        self._refs = RefCounter(is_mountpoint, self.home_run)
        self._stop = threading.Event()
        self._worker: threading.Thread | None = None
        self._closed = False
        self._active: set[str] = set()     # dm devices this instance activated
        empty_home = not any(self.home.iterdir())
        fresh = not (self.home / "metadata" / "base").exists()
        self.prefix = device_prefix(self.home)
        self._set_deferred_modes()
        self._pool_lock = PoolLock(self.home / "pool.lock")
        try:
            self.mnt = self.home / "mnt"
            self.mnt.mkdir(mode=0o700, exist_ok=True)
            self.store = MetadataStore(self.home / "metadata")
            with self._pool_lock:
                self.pool = Pool.setup(self.home, self.prefix, self.cfg, fresh=fresh)
                self.txn = TransactionLog(self.store, self.pool)
                self.txn.recover()
                self.alloc = self.store.allocator()
                self.deviceset = self.store.deviceset()
                self._setup_base()
            if self.deferred_deletion:
                self._worker = threading.Thread(target=self._deletion_worker, daemon=True,
                                                name="devicemapper-deferred-deletion")
                self._worker.start()
        except BaseException:
            self._shutdown()
            if empty_home:   # refuse without leaving half-made state behind
                for entry in list(self.home.iterdir()):
                    if entry.is_dir():
                        shutil.rmtree(entry, ignore_errors=True)
                    else:
                        entry.unlink()
            raise

    # -- setup ------------------------------------------------------------
    def _set_deferred_modes(self) -> None:
        version = tuple(int(x) for x in dm.driver_version().split(".")[:3])
        supported = version >= _DEFERRED_MIN_VERSION
        removal = self.cfg.deferred_removal
        if removal and not supported:
            raise InvalidOption(f"dm.use_deferred_removal needs device-mapper >= 4.27 "
                                f"(this kernel has {dm.driver_version()})")
        self.deferred_removal = supported if removal is None else removal
        deletion = self.cfg.deferred_deletion
        self.deferred_deletion = self.deferred_removal if deletion is None else deletion
        if self.deferred_deletion and not self.deferred_removal:
            raise InvalidOption("dm.use_deferred_deletion needs deferred removal, which is off")
        blkdiscard = self.cfg.blkdiscard
        self.blkdiscard = self.cfg.uses_loop_files if blkdiscard is None else blkdiscard

    def _setup_base(self) -> None:
        base = self.store.base()
        if base is not None and not base.initialized:
            # a crash between create and mkfs: start the base over
            self._delete_device(base, sync=True)
            base = None
        if base is None:
            fs = self.cfg.fs or filesystem.default_fs()
            base = self._new_device("create", "", None, self.cfg.basesize,
                                    lambda device_id: self.pool.create_thin(device_id),
                                    initialized=False)
            path = self._activate("", base)
            try:
                filesystem.mkfs(path, fs, self.cfg.mkfsargs)
                uuid = filesystem.uuid(path)
            finally:
                self._deactivate("")
            base.initialized = True
            self.store.save(base)
            self.deviceset.update({"base_fs": fs, "base_uuid": uuid})
            self._save_deviceset()
            return
        fs = self.deviceset.get("base_fs") or filesystem.default_fs()
        if self.cfg.fs and self.cfg.fs != fs:
            log.warning("devicemapper: the base device holds %s; dm.fs=%s is ignored", fs, self.cfg.fs)
        if self.cfg.basesize_given and self.cfg.basesize != base.size:
            if self.cfg.basesize < base.size:
                raise InvalidOption(
                    f"dm.basesize {format_size(self.cfg.basesize)} is smaller than the existing base "
                    f"device ({format_size(base.size)}); a base device cannot shrink")
            base.size = self.cfg.basesize
            self.store.save(base)
            self._grow_fs("", base)

    @property
    def fs(self) -> str:
        return self.deviceset.get("base_fs") or "ext4"

    def _save_deviceset(self) -> None:
        self.deviceset["next_device_id"] = self.alloc.next_id
        self.store.save_deviceset(self.deviceset)

    def _devname(self, layer: str) -> str:
        if layer == "":
            return f"{self.prefix}-base"
        if layer in ("base", "pool") or len(self.prefix) + 1 + len(layer) > 120:
            return f"{self.prefix}-h{hashlib.sha256(layer.encode()).hexdigest()[:40]}"
        return f"{self.prefix}-{layer}"

    # -- pool changes ------------------------------------------------------
    def _new_device(self, step: str, layer: str, parent: str | None, size: int,
                    make: Callable[[int], None], *, initialized: bool = True) -> DeviceRecord:
        """Allocate an id, send the pool message in a transaction, register the record."""
        for _attempt in range(64):
            device_id = self.alloc.allocate()
            try:
                with self._pool_lock, self.txn.open("create", step, layer, device_id) as txn:
                    try:
                        make(device_id)
                    except OSError as exc:
                        if exc.errno == errno.EEXIST:   # the pool knows the id: someone else's
                            raise _IdTaken() from None
                        raise
                    faults.point(f"devmapper.{step}.after_message")
                    record = DeviceRecord(layer, device_id, size, txn.open_transaction_id,
                                          initialized=initialized, parent=parent)
                    self.store.save(record)
                    faults.point(f"devmapper.{step}.after_register")
            except _IdTaken:
                log.error("devicemapper: device id %d exists in the pool but in no record; "
                          "skipping it", device_id)
                continue
            except BaseException:
                self.alloc.free(device_id)
                raise
            return record
        raise DriverError("devicemapper: no free device id after 64 attempts; the pool metadata "
                          "and the records disagree, check the pool with thin_check")

    def _delete_device(self, record: DeviceRecord, *, sync: bool) -> bool:
        """Delete a thin device; returns False when it was busy and its deletion was deferred."""
        layer = record.layer
        name = self._devname(layer) if not record.deleted else None
        if self.blkdiscard and not record.deleted:
            self._discard(record)
        if name:
            try:
                self.pool.deactivate(name, deferred=self.deferred_deletion and not sync)
                self._active.discard(name)
            except OSError as exc:
                if exc.errno == errno.EBUSY:
                    raise LayerInUse(f"layer {layer!r}: its device {name} is open by another "
                                     "process; close it and retry") from None
                raise
        deferred = False
        with self._pool_lock, self.txn.open("delete", "remove", layer, record.device_id):
            try:
                self.pool.delete_thin(record.device_id)
            except OSError as exc:
                if exc.errno == errno.ENODATA:
                    pass           # already gone from the pool
                elif exc.errno == errno.EBUSY and self.deferred_deletion and not sync:
                    deferred = True
                elif exc.errno == errno.EBUSY:
                    raise LayerInUse(f"layer {layer!r}: its thin device {record.device_id} is busy "
                                     "(still open); close it and retry") from None
                else:
                    raise
            faults.point("devmapper.remove.after_message")
            if deferred:
                if not record.deleted:
                    self.store.mark_deleted(record)
            else:
                self.store.remove(record)
            faults.point("devmapper.remove.after_register")
        if not deferred:
            self.alloc.free(record.device_id)
        return not deferred

    def _discard(self, record: DeviceRecord) -> None:
        """Give the layer's blocks back to the loop file (punches holes through the pool)."""
        name = self._devname(record.layer)
        info = dm.info(name)
        if info is not None and info.open_count:
            return
        try:
            path = self.pool.activate(name, record.device_id, record.size)
            # only up to the highest mapped sector: an unwritten device costs nothing
            fields = dm.status(name)[0][3].split()
            if len(fields) >= 2 and fields[0].isdigit() and int(fields[0]) > 0 and fields[1].isdigit():
                filesystem.discard(path, (int(fields[1]) + 1) * 512)
        except OSError as exc:
            log.warning("devicemapper: discard of %s failed: %s", name, exc)

    # -- layers -----------------------------------------------------------
    def create(self, id: str, parent: str | None = None, *, rw: bool = False,
               mount_label: str = "", storage_opt: Mapping[str, str] | None = None) -> None:
        check_id(id)
        if parent is not None:
            check_id(parent)
        opts = parse_options(storage_opt, LAYER_OPTIONS)
        with self._ids.hold(id), self._lock:
            self._check_open()
            if self.store.layer(id) is not None:
                raise LayerExists(f"layer {id!r} already exists")
            origin = self.store.base() if not parent else self.store.layer(parent)
            if origin is None:
                raise LayerNotFound(f"parent layer {parent!r} does not exist")
            size = opts["size"] or origin.size
            if size < origin.size:
                raise InvalidOption(f"size {format_size(size)} is smaller than the parent's "
                                    f"{format_size(origin.size)}; a layer cannot shrink")
            self._check_free_space()
            origin_name = self._devname(parent or "")
            info = dm.info(origin_name)
            if info is not None and info.deferred_remove:
                self.pool.activate(origin_name, origin.device_id, origin.size)  # cancels it
            active = info is not None
            if active:
                dm.suspend(origin_name)   # the kernel wants a quiet origin for create_snap
            try:
                record = self._new_device(
                    "snapshot", id, parent or None, size,
                    lambda device_id: self.pool.create_snap(device_id, origin.device_id))
            finally:
                if active:
                    dm.resume(origin_name)
                if info is not None and info.deferred_remove:   # put the pending removal back
                    self.pool.deactivate(origin_name, deferred=True)
            if size > origin.size:
                self._grow_fs(id, record)

    def remove(self, id: str) -> None:
        check_id(id)
        with self._ids.hold(id), self._lock:
            self._check_open()
            record = self.store.layer(id)
            if record is None:
                raise LayerNotFound(f"layer {id!r} does not exist")
            mountpoint = self.mnt / id
            busy = self._refs.in_use(str(mountpoint))
            if busy:
                raise LayerInUse(f"layer {id!r} is {busy}; unmount it before removing it")
            if is_mountpoint(mountpoint):
                # mounted, but not by this driver: left by a process that died (its mount
                # outlives it in a shared namespace); detach it so the device can go
                log.warning("devicemapper: detaching stale mount %s before removing %s", mountpoint, id)
                umount(mountpoint, MNT_DETACH)
            self._delete_device(record, sync=False)
            try:
                os.rmdir(mountpoint)
            except OSError:
                pass
            self.home_run.forget_lock(id)

    def mount(self, id: str, mount_label: str = "") -> pathlib.Path:
        check_id(id)
        with self._ids.hold(id):
            self._check_open()
            record = self.store.layer(id)
            if record is None:
                raise LayerNotFound(f"layer {id!r} does not exist")
            mountpoint = self.mnt / id
            rootfs = mountpoint / "rootfs"
            if self._refs.increment(str(mountpoint)) > 1 or (
                    self._refs.others(str(mountpoint)) and is_mountpoint(mountpoint)):
                return rootfs   # mounted already, here or by another live process
            try:
                self._mount_device(id, record, mountpoint, mount_label)
                if not rootfs.exists():
                    rootfs.mkdir(mode=0o755)
                    os.chmod(rootfs, 0o755)   # whatever the umask
                idfile = mountpoint / "id"
                if not idfile.exists():
                    fd = os.open(idfile, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
                    os.write(fd, id.encode())
                    os.close(fd)
            except BaseException:
                self._refs.decrement(str(mountpoint))
                self._unmount_device(id, mountpoint)
                raise
            return rootfs

    def unmount(self, id: str) -> None:
        check_id(id)
        with self._ids.hold(id):
            if self.store.layer(id) is None:
                raise LayerNotFound(f"layer {id!r} does not exist")
            mountpoint = self.mnt / id
            if self._refs.decrement(str(mountpoint)) > 0 or self._refs.others(str(mountpoint)):
                return
            self._unmount_device(id, mountpoint)

    def _mount_device(self, layer: str, record: DeviceRecord, mountpoint: pathlib.Path,
                      mount_label: str = "") -> None:
        with self._lock:
            path = self._activate(layer, record)
        mountpoint.mkdir(mode=0o755, parents=True, exist_ok=True)
        if is_mountpoint(mountpoint):
            return
        options = ["nouuid"] if self.fs == "xfs" else []
        if self.cfg.mountopt:
            options.append(self.cfg.mountopt)
        if mount_label:
            options.append(f'context="{mount_label}"')
        filesystem.mount(path, mountpoint, self.fs, ",".join(options))
        if self.fs == "xfs" and self.cfg.xfs_nospace_max_retries is not None:
            filesystem.set_xfs_nospace_retries(path, self.cfg.xfs_nospace_max_retries)

    def _unmount_device(self, layer: str, mountpoint: pathlib.Path) -> None:
        if is_mountpoint(mountpoint):
            try:
                umount(mountpoint, retries=5)
            except OSError:
                umount(mountpoint, MNT_DETACH)
        try:
            os.rmdir(mountpoint)
        except OSError:
            pass
        with self._lock:
            self._deactivate(layer, deferred=self.deferred_removal)

    def _activate(self, layer: str, record: DeviceRecord) -> str:
        name = self._devname(layer)
        path = self.pool.activate(name, record.device_id, record.size)
        self._active.add(name)
        return path

    def _deactivate(self, layer: str, *, deferred: bool = False) -> None:
        name = self._devname(layer)
        self.pool.deactivate(name, deferred=deferred)
        self._active.discard(name)

    def _grow_fs(self, layer: str, record: DeviceRecord) -> None:
        """Grow the filesystem of a device whose record size grew (size option, dm.basesize)."""
        mountpoint = self.mnt / f".grow-{record.device_id}"
        name = self._devname(layer)
        was_active = dm.info(name) is not None
        self._mount_device(layer, record, mountpoint)
        try:
            filesystem.grow(block_path(name), mountpoint, self.fs)
        finally:
            umount(mountpoint, retries=5)
            os.rmdir(mountpoint)
            if not was_active:
                self._deactivate(layer)

    def exists(self, id: str) -> bool:
        try:
            check_id(id)
        except DriverError:
            return False
        return self.store.layer(id) is not None

    def layers(self) -> list[str]:
        return [r.layer for r in self.store.layers()]

    def parent(self, id: str) -> str | None:
        check_id(id)
        record = self.store.layer(id)
        if record is None:
            raise LayerNotFound(f"layer {id!r} does not exist")
        return record.parent

    def metadata(self, id: str) -> dict[str, str]:
        check_id(id)
        record = self.store.layer(id)
        if record is None:
            raise LayerNotFound(f"layer {id!r} does not exist")
        return {"DeviceId": str(record.device_id), "DeviceSize": str(record.size),
                "DeviceName": self._devname(id)}

    # -- space ------------------------------------------------------------
    def _check_free_space(self) -> None:
        st = self.pool.status()
        if st.mode == "out_of_data_space":
            raise NoSpace(f"thin pool {self.pool.name} is out of data space "
                          f"({format_size(st.data_used)} of {format_size(st.data_total)} used); "
                          "grow it with `graphdrivers pool resize`")
        pct = self.cfg.min_free_space
        if not pct:
            return
        for what, used, total, unit in (("data", st.used_data_blocks, st.total_data_blocks, st.block_bytes),
                                        ("metadata", st.used_meta_blocks, st.total_meta_blocks, 4096)):
            free, minimum = total - used, max(1, total * pct // 100)
            if free < minimum:
                raise NoSpace(
                    f"thin pool {self.pool.name} has {free} free {what} blocks "
                    f"({format_size(free * unit)}), less than the minimum {minimum} "
                    f"({pct}% of {total} blocks, {format_size(minimum * unit)}); grow the pool "
                    "(graphdrivers pool resize) or lower dm.min_free_space")

    # -- status -----------------------------------------------------------
    def status(self) -> list[tuple[str, str]]:
        st = self.pool.status()
        base = self.store.base()
        rows = [("Pool Name", self.pool.name),
                ("Pool Blocksize", format_size(st.block_bytes)),
                ("Base Device Size", format_size(base.size if base else self.cfg.basesize)),
                ("Backing Filesystem", self.fs),   # what the thin devices hold, as docker info says
                ("Udev Sync Supported", str(dm.udev_sync_supported()).lower()
                 if hasattr(dm, "udev_sync_supported") else "false")]
        if self.pool.kind == "loop":
            rows += [("Data file", self.pool.data_device), ("Metadata file", self.pool.metadata_device),
                     ("Data loop file", str(self.pool.data_file)),
                     ("Metadata loop file", str(self.pool.metadata_file))]
        else:
            rows += [("Data file", self.pool.data_device), ("Metadata file", self.pool.metadata_device)]
        data_avail, meta_avail = self._available(st)
        pct = self.cfg.min_free_space
        rows += [("Data Space Used", format_size(st.data_used)),
                 ("Data Space Total", format_size(st.data_total)),
                 ("Data Space Available", format_size(data_avail)),
                 ("Metadata Space Used", format_size(st.meta_used)),
                 ("Metadata Space Total", format_size(st.meta_total)),
                 ("Metadata Space Available", format_size(meta_avail)),
                 ("Thin Pool Minimum Free Space",
                  format_size(st.total_data_blocks * pct // 100 * st.block_bytes)),
                 ("Pool Mode", _mode_text(st.mode)),
                 ("Deferred Removal Enabled", str(self.deferred_removal).lower()),
                 ("Deferred Deletion Enabled", str(self.deferred_deletion).lower()),
                 ("Deferred Deleted Device Count", str(len(self.store.deleted()))),
                 ("Library Version", dm.library_version())]
        if self.pool.kind == "loop":
            rows.append(("Warning", LOOPBACK_WARNING))
        return rows

    def _available(self, st) -> tuple[int, int]:
        data_avail = st.data_total - st.data_used
        meta_avail = st.meta_total - st.meta_used
        if self.pool.kind == "loop":
            # a sparse file can only grow as far as the host filesystem lets it
            free = self.pool.host_free() or 0
            data_avail, meta_avail = min(data_avail, free), min(meta_avail, free)
        return data_avail, meta_avail

    def pool_status(self) -> dict[str, Any]:
        """The pool in numbers (bytes), for `graphdrivers pool status` and embedding engines."""
        with self._lock:
            st = self.pool.status()
            data_avail, meta_avail = self._available(st)
            result: dict[str, Any] = {
                "pool_name": self.pool.name, "pool_kind": self.pool.kind,
                "mode": st.mode, "needs_check": st.needs_check,
                "transaction_id": st.transaction_id,
                "block_size": st.block_bytes,
                "thin_devices": len(self.store.all_device_ids()),
                "data_used": st.data_used, "data_total": st.data_total, "data_available": data_avail,
                "metadata_used": st.meta_used, "metadata_total": st.meta_total,
                "metadata_available": meta_avail,
                "min_free_space_percent": self.cfg.min_free_space,
                "data_device": self.pool.data_device, "metadata_device": self.pool.metadata_device,
            }
            warnings = []
            if self.pool.kind == "loop":
                result["data_loop_file"] = str(self.pool.data_file)
                result["metadata_loop_file"] = str(self.pool.metadata_file)
                result["host_free_space"] = self.pool.host_free()
                warnings.append(LOOPBACK_WARNING)
            if st.mode == "out_of_data_space":
                warnings.append("the pool is out of data space: writes fail with ENOSPC; grow it "
                                "with `graphdrivers pool resize --storage-opt dm.loopdatasize=SIZE`")
            elif st.mode in ("ro", "fail"):
                warnings.append(f"the pool is in {st.mode} mode (metadata problem); check it with "
                                "thin_check after deactivating it")
            pct = self.cfg.min_free_space
            if pct and st.total_data_blocks and \
                    (st.total_data_blocks - st.used_data_blocks) * 100 < st.total_data_blocks * pct:
                warnings.append(f"free data space is under dm.min_free_space ({pct}%): "
                                "new layers are refused")
            if pct and st.total_meta_blocks and \
                    (st.total_meta_blocks - st.used_meta_blocks) * 100 < st.total_meta_blocks * pct:
                warnings.append(f"free metadata space is under dm.min_free_space ({pct}%)")
            result["warnings"] = warnings
            return result

    def resize_pool(self, data_size: int | None = None, metadata_size: int | None = None,
                    force: bool = False, progress: Callable[[str], None] | None = None,
                    extend: str | None = None, extend_metadata: str | None = None) -> dict[str, Any]:
        """Grow the pool online; layers stay mounted. Shrinking is refused, nothing touched.

        Loop pools: ``data_size`` / ``metadata_size`` are the new file sizes (bytes).
        Block-device and external pools: no sizes; the table is reloaded at the devices'
        current sizes (after the operator grew them). Direct-lvm pools: ``extend`` /
        ``extend_metadata`` run lvextend on the thin pool LV first (``"10G"``, ``"+10G"``,
        or for data ``"50%FREE"``); without them the table is reloaded as for block devices.
        Returns :meth:`pool_status` after the resize.
        """
        say = progress or (lambda message: None)
        with self._pool_lock, self._lock:
            self._check_open()
            if extend or extend_metadata:
                say("running lvextend on the thin pool")
            elif data_size or metadata_size:
                say("growing the backing files")
            else:
                say("reloading the table")
            self.pool.resize(data_size=data_size, metadata_size=metadata_size, force=force,
                             extend=extend, extend_metadata=extend_metadata)
            say("done")
        return self.pool_status()

    # -- deferred deletion -------------------------------------------------
    def cleanup_deleted(self) -> int:
        """Retry the deletion of devices that were busy; returns how many are still pending."""
        with self._lock:
            if self._closed:
                return 0
            for record in self.store.deleted():
                try:
                    self._delete_device(record, sync=False)
                except (OSError, DriverError) as exc:
                    log.debug("devicemapper: deferred deletion of %d: %s", record.device_id, exc)
            return len(self.store.deleted())

    def _deletion_worker(self) -> None:
        while not self._stop.wait(self.deferred_delete_period):
            try:
                self.cleanup_deleted()
            except Exception:   # keep retrying; a failure here must not kill the driver
                log.exception("devicemapper: deferred deletion")

    # -- shutdown ---------------------------------------------------------
    def _check_open(self) -> None:
        if self._closed:
            raise DriverError("this devicemapper driver was cleaned up; load it again")

    def cleanup(self) -> None:
        if self._closed:
            return
        self._stop.set()
        if self._worker is not None:
            self._worker.join(timeout=10)
        self._shutdown()

    def _shutdown(self) -> None:
        """Unmount and deactivate everything, save the allocator hint, tear down our pool."""
        with self._lock:
            self._closed = True
            pool = getattr(self, "pool", None)
            if hasattr(self, "alloc"):
                try:
                    self._save_deviceset()
                except OSError as exc:
                    log.warning("devicemapper: saving device set metadata: %s", exc)
            # only what this instance mounted and activated: another process (a plugin
            # while the CLI resizes) may use the same pool
            for path in sorted(self._refs.paths(), key=len, reverse=True):
                self._refs.forget(path)
                if is_mountpoint(path) and not self._refs.others(path):
                    try:
                        umount(path, retries=3)
                    except OSError:
                        umount(path, MNT_DETACH)
            if pool is None:
                return
            for name in sorted(self._active):
                try:
                    pool.deactivate(name, deferred=self.deferred_removal)
                except OSError as exc:
                    log.warning("devicemapper: deactivating %s: %s", name, exc)
            self._active.clear()
            info = dm.info(pool.name)
            if pool.owned and info is not None and info.open_count == 0:
                try:
                    pool.teardown()
                except OSError as exc:   # a device opened meanwhile keeps the pool
                    log.warning("devicemapper: removing pool %s: %s", pool.name, exc)


class _IdTaken(Exception):
    pass


def _mode_text(mode: str) -> str:
    if mode == "out_of_data_space":
        return "out_of_data_space (the pool is full: writes fail; grow it with graphdrivers pool resize)"
    return mode

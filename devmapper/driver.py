"""The devicemapper driver: every layer is a thin device in a thin pool.

The base device holds a fresh filesystem; a layer is a thin snapshot of its
parent (or of the base), so creating one costs a metadata update in the pool,
whatever the size of the parent. Mounting activates the device and mounts it at
``mnt/<id>``; the layer's root is ``mnt/<id>/rootfs``. Diffs come from the
naive differ (a block device cannot tell which files changed).

The layer graph (which layers exist, parent, rw) is in the framework's layer
store (``<home>/_layers.json``), and the Driver template does the bookkeeping:
ids, id locks, the children rule, the crash rule. A layer's device (device id,
size, transaction id) is its data, in ``metadata/layers/<id>``: made (in a pool
transaction) before the layer is recorded, deleted after its record is dropped,
and deleted at load when a crash left it without a record.

This module holds the template's hooks only, composed from: devices (the
thin-device lifecycle and the lock order), poolreport (status, free space,
resize), config (dm.* options), metadata (device records), filesystem (mkfs/grow),
external (mounts for containerd: a bind of the mounted device's rootfs/).
Below devices: pool (where the pool lives, its messages), transaction (crash
consistency), poolstatus (the targets' text), dm (kernel ioctls).
"""
from __future__ import annotations

import contextlib
import logging
import os
import pathlib
import shutil
import time
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping

from graphdrivers.capabilities import DiffFromChanges, PoolAdmin
from graphdrivers.driver import Driver
from graphdrivers.errors import DriverError, InvalidOption, LayerInUse, LayerNotFound, NotSupported
from graphdrivers.layerid import is_valid_id
from graphdrivers.kernel.mount import MNT_DETACH, is_mountpoint, umount
from graphdrivers.naivediff import NaiveDiff
from graphdrivers.options import format_size, parse_options
from graphdrivers.store.atomicfile import fsync_dir, write_json
from graphdrivers.store.layers import LayerRecord
from graphdrivers.store.refcount import RefCounter

from . import dm, poolreport
from .config import LAYER_OPTIONS, OPTIONS, Config, parse_config
from .devices import ThinDevices
from .external import ExternalMounts
from .metadata import DeviceRecord, MetadataStore
from .pool import Pool
from .transaction import TransactionLog

if TYPE_CHECKING:
    from graphdrivers.check.findings import Finding

log = logging.getLogger(__name__)


class DeviceMapperDriver(NaiveDiff, DiffFromChanges, ExternalMounts, PoolAdmin, Driver):
    name = "devicemapper"
    OPTIONS = OPTIONS
    RESIZE_OPTIONS = {"dm.loopdatasize": "data_size", "dm.loopmetadatasize": "metadata_size"}

    @classmethod
    def probe(cls, home: pathlib.Path) -> None:
        reason = dm.available()
        if reason:
            raise NotSupported(f"devicemapper: {reason}")

    def __init__(self, home: str | os.PathLike, options: Mapping[str, str] | None = None):
        super().__init__(home, options)
        self.cfg: Config = parse_config(options)   # before touching anything
        dm.set_log_level(self.cfg.log_level)
        self.probe(self.home)
        self._refs = RefCounter(is_mountpoint, self.home_run)
        self._served: set[str] = set()      # mounts held for containerd (external.py)
        self._closed = False
        empty_home = not any(self.home.iterdir())
        # the pool is shared by the live instances on this home: the last one out tears
        # it down (the hold is published before the pool is brought up)
        self._pool_hold = str(self.home / "pool")
        self.home_run.set_hold(self._pool_hold, 1)
        try:
            self.devices = ThinDevices(self.home, self.cfg,
                                       lambda: bool(self.home_run.other_holders(self._pool_hold)))
            self.mnt = self.devices.mnt
            self._lock = self.devices.lock   # lock 2 of the order in devices.py
            self._open_store()               # after the pool's own transaction is resolved
            self.devices.start_worker()      # after the orphan pass queued the orphans
        except BaseException:
            self._closed = True
            if hasattr(self, "devices"):
                self.devices.close()
            self.home_run.set_hold(self._pool_hold, 0)
            if empty_home:   # refuse without leaving half-made state behind
                for entry in list(self.home.iterdir()):
                    if entry.is_dir():
                        shutil.rmtree(entry, ignore_errors=True)
                    else:
                        entry.unlink()
            raise

    # what tests and tools inspect
    @property
    def pool(self) -> Pool:
        assert self.devices.pool is not None
        return self.devices.pool

    @property
    def store(self) -> MetadataStore:
        return self.devices.store

    @property
    def txn(self) -> TransactionLog:
        return self.devices.txn

    @property
    def fs(self) -> str:
        return self.devices.fs

    @property
    def deferred_removal(self) -> bool:
        return self.devices.deferred_removal

    @property
    def deferred_deletion(self) -> bool:
        return self.devices.deferred_deletion

    # -- hooks of the Driver template --------------------------------------
    def _import_records(self) -> Iterable[LayerRecord]:
        """A home from before the layer store: its device records named each parent."""
        for layer, parent in self.store.layer_parents():
            yield LayerRecord(layer, parent)

    def _data_ids(self) -> list[str]:
        return [i for i in self.store.layer_ids() if is_valid_id(i)]

    def _create_options(self, storage_opt: Mapping[str, str] | None, rw: bool) -> int:
        return parse_options(storage_opt, LAYER_OPTIONS)["size"]

    def _create_data(self, record: LayerRecord, parent: LayerRecord | None, size: int,
                     mount_label: str) -> None:
        # the parent's id lock too (lock 1, after the new id's): the snapshot suspends and
        # resumes the parent's device, which a mount or unmount of the parent in another
        # process must not interleave with (mount(2) of a frozen device is EBUSY, a device
        # removed while suspended fails the resume)
        parent_lock = contextlib.nullcontext() if parent is None else self._locks.hold(parent.id)
        with parent_lock, self._lock:
            self.devices.check_open()
            origin = self.store.base() if parent is None else self.store.layer(parent.id)
            if origin is None:
                what = "the base device" if parent is None else f"parent layer {parent.id}"
                raise DriverError(f"devicemapper: {what} has no device record in "
                                  f"{self.store.root}; restore the metadata from a backup")
            size = size or origin.size
            if size < origin.size:
                raise InvalidOption(f"size {format_size(size)} is smaller than the parent's "
                                    f"{format_size(origin.size)}; a layer cannot shrink")
            poolreport.check_free_space(self.devices)
            stale = self.store.layer(record.id)
            if stale is not None:      # a device a crash left under this id (no layer record)
                self.devices.delete(stale, sync=False)
            self.devices.snapshot(record.id, parent.id if parent else None, origin, size)

    def _busy(self, id: str) -> str | None:
        return self._refs.in_use(str(self.mnt / id))

    def _prepare_remove(self, id: str) -> None:
        """Everything that may refuse, while the layer is still recorded."""
        with self._lock:
            self.devices.check_open()
            record = self.store.layer(id)
            mountpoint = self.mnt / id
            if is_mountpoint(mountpoint):
                # mounted, but not by this driver: left by a process that died (its mount
                # outlives it in a shared namespace); detach it so the device can go
                log.warning("devicemapper: detaching stale mount %s before removing %s",
                            mountpoint, id)
                umount(mountpoint, MNT_DETACH)
            if record is not None:
                self.devices.release(record)    # inactive, or LayerInUse

    def _remove_data(self, id: str) -> None:
        """Delete the layer's device (after its record; or a crash's orphan at load)."""
        with self._lock:
            self.devices.check_open()
            record = self.store.layer(id)
            mountpoint = self.mnt / id
            if record is not None:
                if is_mountpoint(mountpoint) and not self._refs.in_use(str(mountpoint)):
                    umount(mountpoint, MNT_DETACH)     # an orphan a dead process mounted
                try:
                    self.devices.delete(record, sync=False)
                except LayerInUse as exc:
                    # the layer is gone already; its device record stays, and the next
                    # load deletes the device (an orphan)
                    log.warning("devicemapper: %s; the device of removed layer %s is deleted "
                                "at the next load", exc, id)
            with contextlib.suppress(OSError):
                os.rmdir(mountpoint)

    def _mount_data(self, record: LayerRecord, mount_label: str) -> pathlib.Path:
        self.devices.check_open()
        id = record.id
        device = self._device(id)
        mountpoint = self.mnt / id
        rootfs = mountpoint / "rootfs"
        if self._refs.increment(str(mountpoint)) > 1 or (
                self._refs.others(str(mountpoint)) and is_mountpoint(mountpoint)):
            return rootfs   # mounted already, here or by another live process
        try:
            self.devices.mount(id, device, mountpoint, mount_label)
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
            self.devices.unmount(id, mountpoint)
            raise
        return rootfs

    def _unmount_data(self, id: str, record: LayerRecord | None) -> None:
        if record is None:
            raise LayerNotFound(f"layer {id!r} does not exist in {self.home}")
        mountpoint = self.mnt / id
        if self._refs.decrement(str(mountpoint)) > 0 or self._refs.others(str(mountpoint)):
            return
        self.devices.unmount(id, mountpoint)

    def _layer_options(self, record: LayerRecord) -> dict[str, str]:
        # a size was given when the device is larger than the one it was snapshotted from
        device = self.store.layer(record.id)
        origin = self.store.base() if record.parent is None else self.store.layer(record.parent)
        if device is None or origin is None or device.size <= origin.size:
            return {}
        return {"size": str(device.size)}

    def space_available(self) -> int | None:
        return self.pool_status()["data_available"]

    def _metadata(self, record: LayerRecord) -> dict[str, str]:
        device = self._device(record.id)
        return {"DeviceId": str(device.device_id), "DeviceSize": str(device.size),
                "DeviceName": self.devices.devname(record.id)}

    def _device(self, id: str) -> DeviceRecord:
        device = self.store.layer(id)
        if device is None:
            raise DriverError(f"devicemapper: layer {id} has no device record in "
                              f"{self.store.root}; restore the metadata from a backup or "
                              "remove the layer")
        return device

    # -- pool -------------------------------------------------------------
    def status(self) -> list[tuple[str, str]]:
        return poolreport.status_rows(self.devices)

    def status_notes(self) -> dict[str, str]:
        return {
            "Udev Sync Supported": "false by design: device nodes are made here and nothing "
                                   "waits for udev, so this is not the data-loss warning it "
                                   "is in Docker",
            "Library Version": "the kernel's device-mapper interface, driven through raw "
                               "ioctls; there is no libdevmapper",
        }

    def pool_status(self) -> dict[str, Any]:
        """The pool in numbers (bytes), for `graphdrivers pool status` and embedding engines."""
        return poolreport.pool_status(self.devices)

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
        return poolreport.resize_pool(self.devices, data_size, metadata_size, force=force,
                                      progress=progress, extend=extend,
                                      extend_metadata=extend_metadata)

    def cleanup_deleted(self) -> int:
        """Discard and delete the queued devices of removed layers now (those that are not
        busy); returns how many are still pending."""
        return self.devices.cleanup_deleted()

    # -- `graphdrivers check` (drivers/check/, check.py) ------------------------
    def check_findings(self) -> list[Finding]:
        from . import check
        return check.findings(self)

    def _quarantine_data(self, id: str, dest: pathlib.Path) -> None:
        """The device record goes into the quarantine (the thin device stays in the pool
        under its id, which check then leaves alone); the device is deactivated."""
        with self._lock:
            record = self.store.layer(id)
            if record is None:
                return
            mountpoint = self.mnt / id
            if is_mountpoint(mountpoint):
                umount(mountpoint, MNT_DETACH)     # stale: nobody holds it (_busy)
            self.devices.deactivate(id)
            write_json(dest, record.to_json())
            self.store.remove(record)
            fsync_dir(self.store.layers_dir)    # else the record may come back, an orphan
            with contextlib.suppress(OSError):
                os.rmdir(mountpoint)

    def _mount_layer(self, mountpoint: str) -> str | None:
        parent, name = os.path.split(mountpoint)
        return name if parent == str(self.mnt) and is_valid_id(name) else None

    # -- shutdown ---------------------------------------------------------
    def release(self) -> None:
        """As the template's; the deferred-deletion worker stops too, as it would with the
        process (else it keeps polling a home its caller may delete)."""
        self.devices.stop_worker()
        super().release()

    def cleanup(self) -> None:
        if self._closed:
            return
        self.devices.stop_worker()
        self._closed = True
        # only what this instance mounted or activated: another process (a plugin while
        # the CLI resizes) may use the same pool. Each layer under its id lock (lock 1,
        # before the instance lock): another process mounting it meanwhile decides under
        # that lock whether to share the mount, and activates and mounts its device
        for path in sorted(self._refs.paths(), key=len, reverse=True):
            with self._locks.hold(os.path.basename(path)):
                self._refs.forget(path)
                if is_mountpoint(path) and not self._refs.others(path):
                    try:
                        umount(path, retries=3)
                    except OSError:
                        umount(path, MNT_DETACH)
        for layer in self.devices.active_layers():
            if layer:                  # the base device has no id lock; close() takes it
                with self._locks.hold(layer):
                    try:
                        self.devices.deactivate(layer, deferred=self.deferred_removal)
                    except OSError as exc:   # open elsewhere, without deferred removal
                        log.warning("devicemapper: deactivating the device of %s: %s", layer, exc)
        # the queued deletions, bounded (what is left, the next load finishes)
        self.devices.drain(time.monotonic() + self.devices.drain_timeout)
        with self.devices.lock:
            self.devices.close()
            self.home_run.set_hold(self._pool_hold, 0)
        super().cleanup()

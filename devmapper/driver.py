"""The devicemapper driver: every layer is a thin device in a thin pool.

The base device holds a fresh filesystem; a layer is a thin snapshot of its
parent (or of the base), so creating one costs a metadata update in the pool,
whatever the size of the parent. Mounting activates the device and mounts it at
``mnt/<id>``; the layer's root is ``mnt/<id>/rootfs``. Diffs come from the
naive differ (a block device cannot tell which files changed).

This module holds the layer operations only, composed from: devices (the
thin-device lifecycle and the lock order), poolreport (status, free space,
resize), config (dm.* options), metadata (records), filesystem (mkfs/grow).
Below devices: pool (where the pool lives, its messages), transaction (crash
consistency), poolstatus (the targets' text), dm (kernel ioctls).
"""
from __future__ import annotations

import logging
import os
import pathlib
import shutil
from typing import Any, Callable, Mapping

from graphdrivers.capabilities import PoolAdmin
from graphdrivers.driver import Driver
from graphdrivers.errors import DriverError, InvalidOption, LayerExists, LayerInUse, LayerNotFound, NotSupported
from graphdrivers.layerid import check_id
from graphdrivers.store.locks import IdLocks
from graphdrivers.kernel.mount import MNT_DETACH, is_mountpoint, umount
from graphdrivers.naivediff import NaiveDiff
from graphdrivers.options import format_size, parse_options
from graphdrivers.store.refcount import RefCounter

from . import dm, poolreport
from .config import LAYER_OPTIONS, OPTIONS, Config, parse_config
from .devices import ThinDevices
from .metadata import MetadataStore
from .pool import Pool
from .transaction import TransactionLog

log = logging.getLogger(__name__)


class DeviceMapperDriver(NaiveDiff, PoolAdmin, Driver):
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
        self.probe(self.home)
        self._ids = IdLocks(self.home_run)
        self._refs = RefCounter(is_mountpoint, self.home_run)
        self._closed = False
        empty_home = not any(self.home.iterdir())
        try:
            self.devices = ThinDevices(self.home, self.cfg)
        except BaseException:
            self._closed = True
            if empty_home:   # refuse without leaving half-made state behind
                for entry in list(self.home.iterdir()):
                    if entry.is_dir():
                        shutil.rmtree(entry, ignore_errors=True)
                    else:
                        entry.unlink()
            raise
        self.mnt = self.devices.mnt
        self._lock = self.devices.lock   # lock 2 of the order in devices.py

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

    # -- layers -----------------------------------------------------------
    def create(self, id: str, parent: str | None = None, *, rw: bool = False,
               mount_label: str = "", storage_opt: Mapping[str, str] | None = None) -> None:
        check_id(id)
        if parent is not None:
            check_id(parent)
        opts = parse_options(storage_opt, LAYER_OPTIONS)
        with self._ids.hold(id), self._lock:
            self.devices.check_open()
            if self.store.layer(id) is not None:
                raise LayerExists(f"layer {id!r} already exists")
            origin = self.store.base() if not parent else self.store.layer(parent)
            if origin is None:
                raise LayerNotFound(f"parent layer {parent!r} does not exist")
            size = opts["size"] or origin.size
            if size < origin.size:
                raise InvalidOption(f"size {format_size(size)} is smaller than the parent's "
                                    f"{format_size(origin.size)}; a layer cannot shrink")
            poolreport.check_free_space(self.devices)
            self.devices.snapshot(id, parent or None, origin, size)

    def remove(self, id: str) -> None:
        check_id(id)
        with self._ids.hold(id), self._lock:
            self.devices.check_open()
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
            self.devices.delete(record, sync=False)
            try:
                os.rmdir(mountpoint)
            except OSError:
                pass
            self.home_run.forget_lock(id)

    def mount(self, id: str, mount_label: str = "") -> pathlib.Path:
        check_id(id)
        with self._ids.hold(id):
            self.devices.check_open()
            record = self.store.layer(id)
            if record is None:
                raise LayerNotFound(f"layer {id!r} does not exist")
            mountpoint = self.mnt / id
            rootfs = mountpoint / "rootfs"
            if self._refs.increment(str(mountpoint)) > 1 or (
                    self._refs.others(str(mountpoint)) and is_mountpoint(mountpoint)):
                return rootfs   # mounted already, here or by another live process
            try:
                self.devices.mount(id, record, mountpoint, mount_label)
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

    def unmount(self, id: str) -> None:
        check_id(id)
        with self._ids.hold(id):
            if self.store.layer(id) is None:
                raise LayerNotFound(f"layer {id!r} does not exist")
            mountpoint = self.mnt / id
            if self._refs.decrement(str(mountpoint)) > 0 or self._refs.others(str(mountpoint)):
                return
            self.devices.unmount(id, mountpoint)

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
                "DeviceName": self.devices.devname(id)}

    # -- pool -------------------------------------------------------------
    def status(self) -> list[tuple[str, str]]:
        return poolreport.status_rows(self.devices)

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
        """Retry the deletion of devices that were busy; returns how many are still pending."""
        return self.devices.cleanup_deleted()

    # -- shutdown ---------------------------------------------------------
    def cleanup(self) -> None:
        if self._closed:
            return
        self.devices.stop_worker()
        with self.devices.lock:
            self._closed = True
            # only what this instance mounted: another process (a plugin while the
            # CLI resizes) may use the same pool
            for path in sorted(self._refs.paths(), key=len, reverse=True):
                self._refs.forget(path)
                if is_mountpoint(path) and not self._refs.others(path):
                    try:
                        umount(path, retries=3)
                    except OSError:
                        umount(path, MNT_DETACH)
            self.devices.close()

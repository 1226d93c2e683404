"""The thin-device lifecycle: between the driver's layers and the pool's messages.

A layer's device is born by a snapshot (the base device by ``create_thin``),
each inside a pool transaction (transaction.py) so a crash leaves either the
whole device with its device record or neither. The layer itself (parent, rw)
is recorded in the framework's layer store after its device exists, and
unrecorded before its device goes (the Driver template's crash rule): a device
record without a layer record is a crash's leftover, deleted at the next load.
It is activated for a mount,
deactivated after the last unmount (deferred by the kernel while still open,
with ``dm.use_deferred_removal``), grown when its record grows, and deleted.

Where blocks are discarded before the delete (``dm.blkdiscard``, on for loop
pools: the data file gets its space back), a remove does not wait for it: its
device record moves to ``deleted/`` (the queue, durable: metadata.park) and a
worker discards and deletes the queued devices in batches, one pool transaction
per batch, off the caller's path: a thread woken by each remove (and every
``deferred_delete_period`` for the busy ones), drained by ``cleanup()`` within
``drain_timeout`` and by the next ``load()`` (after a crash). Elsewhere the
device is deleted at once, and, when it is still busy and
``dm.use_deferred_deletion`` is on, queued the same way. A queued device is
activated under a name of its own (``<prefix>-deleted-<id>``), since its layer id
may already belong to a new layer, and is never deleted while a live record has
its id.

Locks, and the one order they are taken in
------------------------------------------
1. per-id locks (``IdLocks``, the Driver template's): a thread lock plus a flock
   under the home's run directory, one per layer id, held by every public driver
   method for its id; a create on a parent also holds the parent's, taken after the new
   id's (a child's before its parent's; nothing takes two the other way round): the
   snapshot suspends the parent's device, which the parent's mount, unmount and
   remove in other processes touch under the parent's lock;
2. ``ThinDevices.lock``, this process's RLock: the device set of this instance
   (allocator, active devices, the closed flag); the driver holds it over the
   device part of a create or remove (not over the layer store's record);
3. ``ThinDevices.pool_lock``, the ``PoolLock`` on ``<home>/pool.lock``: a flock
   that serialises every change of the pool (message + transaction record,
   resize) across threads and processes.

The deletion queue's drainer (``ThinDevices.drain``: a thread lock, then the
``deleting.lock`` flock, non-blocking across processes) is taken before 2 and 3
and never while holding either, nor any id lock.

Always 1 → 2 → 3, any prefix allowed, never backwards: nothing holding the pool
lock takes the RLock, and nothing holding either takes an id lock. The layer
store's home flock is taken inside single store calls only, under 1 and never
under 2 or 3. A resize
(poolreport.resize_pool) takes 2 then 3 like a create. ``changing_pool()`` takes
2 and 3 in that order; every pool change goes through it.
"""
from __future__ import annotations

import errno
import hashlib
import logging
import os
import pathlib
import threading
import time
from contextlib import contextmanager
from typing import Callable, Iterator

from graphdrivers.errors import DriverError, InvalidOption, LayerInUse
from graphdrivers.kernel.mount import MNT_DETACH, is_mountpoint, umount
from graphdrivers.options import format_size

from . import dm, faults, filesystem
from .config import Config
from .metadata import DeviceRecord, MetadataStore
from .pool import Pool, PoolLock, block_path, device_prefix, thin_status, try_flock
from .transaction import NothingMade, TransactionLog

log = logging.getLogger(__name__)

_DEFERRED_MIN_VERSION = (4, 27, 0)   # kernel dm with DM_DEFERRED_REMOVE
_ID_ATTEMPTS = 64


class ThinDevices:
    """The thin devices of one home: pool, records, transaction log, id allocator."""

    deferred_delete_period = 30.0     # seconds between retries of busy deletions
    drain_timeout = 60.0              # seconds cleanup() and load() spend on the queue
    batch_size = 32                   # queued devices deleted in one pool transaction
    # removes come in bursts (an image's layers): the worker starts once none was queued
    # for settle_delay seconds, or max_delay after the first, so that its discards (kernel
    # work, and hole punches whose journal commits the callers' flushes wait for) do not
    # run under the burst, and its batches hold more devices
    settle_delay = 0.5
    max_delay = 5.0

    def __init__(self, home: pathlib.Path, cfg: Config,
                 others_use_pool: Callable[[], bool] = lambda: False) -> None:
        self.cfg = cfg
        self._others_use_pool = others_use_pool   # other live instances on this home
        self.lock = threading.RLock()
        self.pool_lock = PoolLock(home / "pool.lock")
        self.closed = False
        self._active: dict[str, str] = {}  # dm devices this instance activated: name -> layer
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._last_queued = 0.0                     # time.monotonic() of the last park
        self._drain_lock = threading.Lock()         # one drainer per process...
        self._drain_flock = home / "deleting.lock"  # ...and per home
        self._worker: threading.Thread | None = None
        self.pool: Pool | None = None
        fresh = not (home / "metadata" / "base").exists()
        self.prefix = device_prefix(home)
        self._set_deferred_modes()
        self.mnt = home / "mnt"
        self.mnt.mkdir(mode=0o700, exist_ok=True)
        self.store = MetadataStore(home / "metadata")
        try:
            with self.changing_pool():
                self.pool = Pool.setup(home, self.prefix, cfg, fresh=fresh)
                self.txn = TransactionLog(self.store, self.pool)
                self.txn.recover()
                self.alloc = self.store.allocator()
                self.deviceset = self.store.deviceset()
                self._setup_base()
        except BaseException:
            self.close()
            raise

    def start_worker(self) -> None:
        """Finish what the queue holds (a crash's, bounded), then start the worker that
        deletes queued devices (after the driver's orphan pass queued its orphans)."""
        self.drain(time.monotonic() + self.drain_timeout)
        if self.deferred_deletion or self.defer_deletes:
            self._worker = threading.Thread(target=self._deletion_worker, daemon=True,
                                            name="devicemapper-deferred-deletion")
            self._worker.start()

    @contextmanager
    def changing_pool(self) -> Iterator[None]:
        """Locks 2 then 3 (see the module docstring): the only way into a pool change."""
        with self.lock, self.pool_lock:
            yield

    def check_open(self) -> None:
        if self.closed:
            raise DriverError("this devicemapper driver was cleaned up; load it again")

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
        # the discard is what makes a delete slow: queue such deletes for the worker
        self.defer_deletes = self.blkdiscard

    def _setup_base(self) -> None:
        base = self.store.base()
        if base is not None and not base.initialized:
            # a crash between create and mkfs: start the base over
            self.delete(base, sync=True)
            base = None
        if base is None:
            self._create_base()
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
            self.grow_fs("", base)

    def _create_base(self) -> None:
        assert self.pool is not None
        pool = self.pool
        fs = self.cfg.fs or filesystem.default_fs()
        base = self._new_device("create", "", self.cfg.basesize, pool.create_thin,
                                initialized=False)
        path = self.activate("", base)
        try:
            filesystem.mkfs(path, fs, self.cfg.mkfsargs)
            uuid = filesystem.uuid(path)
        finally:
            self.deactivate("")
        base.initialized = True
        self.store.save(base)
        self.deviceset.update({"base_fs": fs, "base_uuid": uuid})
        self.save_deviceset()

    @property
    def fs(self) -> str:
        return self.deviceset.get("base_fs") or "ext4"

    def save_deviceset(self) -> None:
        self.deviceset["next_device_id"] = self.alloc.next_id
        self.store.save_deviceset(self.deviceset)

    def devname(self, layer: str) -> str:
        """The dm name of a layer's device ("" is the base device)."""
        if layer == "":
            return f"{self.prefix}-base"
        if layer in ("base", "pool") or len(self.prefix) + 1 + len(layer) > 120:
            return f"{self.prefix}-h{hashlib.sha256(layer.encode()).hexdigest()[:40]}"
        return f"{self.prefix}-{layer}"

    # -- birth ------------------------------------------------------------
    def snapshot(self, layer: str, parent: str | None, origin: DeviceRecord,
                 size: int) -> DeviceRecord:
        """A new device for ``layer``: a thin snapshot of ``origin`` (the parent's or the base)."""
        assert self.pool is not None
        pool = self.pool
        with self.lock:
            origin_name = self.devname(parent or "")
            info = dm.info(origin_name)
            if info is not None and info.deferred_remove:
                pool.activate(origin_name, origin.device_id, origin.size)  # cancels it
            active = info is not None
            if active:
                dm.suspend(origin_name)   # the kernel wants a quiet origin for create_snap
            try:
                record = self._new_device(
                    "snapshot", layer, size,
                    lambda device_id: pool.create_snap(device_id, origin.device_id))
            finally:
                if active:
                    dm.resume(origin_name)
                if info is not None and info.deferred_remove:   # put the pending removal back
                    pool.deactivate(origin_name, deferred=True)
            if size > origin.size:
                self.grow_fs(layer, record)
            return record

    def _new_device(self, step: str, layer: str, size: int,
                    make: Callable[[int], None], *, initialized: bool = True) -> DeviceRecord:
        """Allocate an id, send the pool message in a transaction, register the record."""
        for _attempt in range(_ID_ATTEMPTS):
            with self.changing_pool():
                device_id = self.alloc.allocate()
                try:
                    with self.txn.open("create", step, layer, device_id) as txn:
                        try:
                            make(device_id)
                        except OSError as exc:
                            if exc.errno == errno.EEXIST:   # the pool knows the id: someone else's
                                raise _IdTaken() from None
                            raise
                        faults.point(f"devmapper.{step}.after_message")
                        record = DeviceRecord(layer, device_id, size, txn.open_transaction_id,
                                              initialized=initialized)
                        self.store.save(record)
                        faults.point(f"devmapper.{step}.after_register")
                except _IdTaken:
                    self._id_taken(device_id)
                    continue
                except BaseException:
                    self.alloc.free(device_id)
                    raise
            return record
        raise DriverError(f"devicemapper: no free device id after {_ID_ATTEMPTS} attempts; the pool "
                          "metadata and the records disagree, check the pool with thin_check")

    def _id_taken(self, device_id: int) -> None:
        """The pool has ``device_id`` already: another process on this home made a device
        since we read the records. Catch up with them; only an id no record owns is odd."""
        self.alloc = self.store.allocator()
        if not self.alloc.is_used(device_id):
            self.alloc.mark_used(device_id)
            log.error("devicemapper: device id %d exists in the pool but in no record; "
                      "skipping it", device_id)

    # -- death ------------------------------------------------------------
    def release(self, record: DeviceRecord) -> None:
        """Before a layer's record goes: deactivate its device (with deferred deletion, a
        deferred removal: the kernel removes it at its last close, and delete() parks the
        thin device), or LayerInUse, nothing changed, when another process has it open.
        Its blocks stay until delete(): the removal may still be refused."""
        assert self.pool is not None
        with self.lock:
            self._deactivate(record.layer, deferred=self.deferred_deletion)

    def _deactivate(self, layer: str, *, deferred: bool) -> None:
        """deactivate(), with a device still open reported as LayerInUse."""
        try:
            self.deactivate(layer, deferred=deferred)
        except OSError as exc:
            if exc.errno == errno.EBUSY:
                raise LayerInUse(f"layer {layer!r}: its device {self.devname(layer)} is open "
                                 "by another process; close it and retry") from None
            raise

    def delete(self, record: DeviceRecord, *, sync: bool) -> bool:
        """Delete a thin device; returns False when its deletion was queued (busy, or a
        discard to do first: the worker deletes it)."""
        assert self.pool is not None
        with self.lock:
            if not sync and self.defer_deletes and not record.deleted:
                self._deactivate(record.layer, deferred=self.deferred_deletion)
                self.store.park(record)
                faults.point("devmapper.remove.after_park")
                self._last_queued = time.monotonic()
                self._wake.set()
                return False
            if not record.deleted:
                if self.blkdiscard:
                    self._discard(record, self.devname(record.layer))
                self._deactivate(record.layer, deferred=self.deferred_deletion and not sync)
            with self.changing_pool():
                if record.deleted and self.store.parked(record.device_id) is None:
                    return True     # another process on this home finished it
                deferred = self._delete_in_pool(record, sync)
                if not deferred:
                    self.alloc.free(record.device_id)
            return not deferred

    def _delete_in_pool(self, record: DeviceRecord, sync: bool) -> bool:
        """The delete message and the record change, in one transaction; True if deferred."""
        assert self.pool is not None
        deferred = False
        with self.txn.open("delete", "remove", record.layer, record.device_id):
            try:
                self.pool.delete_thin(record.device_id)
            except OSError as exc:
                if exc.errno == errno.ENODATA:
                    pass           # already gone from the pool
                elif exc.errno == errno.EBUSY and self.deferred_deletion and not sync:
                    deferred = True
                elif exc.errno == errno.EBUSY:
                    raise LayerInUse(f"layer {record.layer!r}: its thin device {record.device_id} "
                                     "is busy (still open); close it and retry") from None
                else:
                    raise
            faults.point("devmapper.remove.after_message")
            if deferred:
                if not record.deleted:
                    self.store.mark_deleted(record)
            else:
                self.store.remove(record)
            faults.point("devmapper.remove.after_register")
        return deferred

    def _discard(self, record: DeviceRecord, name: str) -> None:
        """Give the device's blocks back to the loop file (punches holes through the pool),
        through dm device ``name`` (activated here if it is not)."""
        assert self.pool is not None
        info = dm.info(name)
        if info is not None and info.open_count:
            return
        try:
            path = self.pool.activate(name, record.device_id, record.size)
            # only up to the highest mapped sector: an unwritten device costs nothing
            mapped = thin_status(name)
            if mapped.mapped_sectors and mapped.highest_mapped_sector is not None:
                filesystem.discard(path, (mapped.highest_mapped_sector + 1) * 512)
        except (OSError, ValueError, DriverError) as exc:
            log.warning("devicemapper: discard of %s failed: %s", name, exc)

    # -- the deletion queue (deleted/) ---------------------------------------
    def cleanup_deleted(self) -> int:
        """Discard and delete the queued devices now; returns how many are still pending."""
        with self.lock:
            if self.closed:
                return 0
        self.drain(None)
        return len(self.store.deleted())

    def drain(self, deadline: float | None, stop: threading.Event | None = None) -> None:
        """Discard and delete queued devices, in batches, until the queue is empty (but for
        busy ones) or ``deadline`` (time.monotonic()) passed. Only the instance lock and
        the pool lock over each batch's pool transaction: creates and removes go on
        meanwhile. Another process draining the same home is left to it."""
        if not self._drain_lock.acquire(timeout=-1 if deadline is None
                                        else max(0.0, deadline - time.monotonic())):
            return
        try:
            with try_flock(self._drain_flock) as held:
                if not held:
                    return
                seen: set[int] = set()
                live = self.store.live_device_ids()
                while ((deadline is None or time.monotonic() < deadline)
                       and not (stop is not None and stop.is_set())):
                    batch = [r for r in self.store.deleted() if r.device_id not in seen]
                    if not batch or self.closed or self.pool is None:
                        return
                    batch = batch[:self.batch_size]
                    seen.update(r.device_id for r in batch)
                    for record in [r for r in batch if r.device_id in live]:
                        # neither discarded nor deleted: its blocks are a live layer's
                        log.error("devicemapper: queued device %d is also in a live record; "
                                  "left alone", record.device_id)
                    ready = [r for r in batch
                             if r.device_id not in live and self._discard_queued(r)]
                    if ready:
                        self._delete_queued(ready)
        finally:
            self._drain_lock.release()

    def _still_open(self, record: DeviceRecord) -> bool:
        """Whether the removed layer's own dm device (its removal deferred) still maps
        this thin device: open elsewhere; its id may already name a new layer's device."""
        if record.layer == "":
            return False
        name = self.devname(record.layer)
        try:
            rows = dm.table(name) if dm.info(name) is not None else []
        except OSError:
            return False
        return any(row[2] == "thin" and row[3].split()[1:2] == [str(record.device_id)]
                   for row in rows)

    def _discard_queued(self, record: DeviceRecord) -> bool:
        """The discard of one queued device; False while it is still open (not deletable)."""
        assert self.pool is not None
        if self._still_open(record):
            return False
        if self.blkdiscard and record.size > 0:
            name = f"{self.prefix}-deleted-{record.device_id}"
            self._discard(record, name)
            try:
                self.pool.deactivate(name)
            except OSError as exc:
                log.warning("devicemapper: deactivating %s: %s", name, exc)
                return False
            faults.point("devmapper.remove.after_discard")
        return True

    def _delete_queued(self, records: list[DeviceRecord]) -> None:
        """Delete discarded queued devices in one pool transaction and drop their records."""
        assert self.pool is not None
        with self.changing_pool():
            if self.closed:
                return
            live = self.store.live_device_ids()
            ids = []
            for record in records:
                if self.store.parked(record.device_id) is None:
                    continue          # another process on this home finished it
                if record.device_id in live:
                    # an orphan record of the same device not queued yet (after a crash),
                    # or a live layer's: never delete it from here
                    log.error("devicemapper: queued device %d is also in a live record; "
                              "not deleted", record.device_id)
                    continue
                ids.append(record.device_id)
            if not ids:
                return
            gone = []
            with self.txn.open("delete-parked", "remove", "", ids[0], ids):
                for device_id in ids:
                    try:
                        self.pool.delete_thin(device_id)
                    except OSError as exc:
                        if exc.errno != errno.ENODATA:   # busy: stays queued
                            log.debug("devicemapper: deferred deletion of %d: %s", device_id, exc)
                            continue
                    gone.append(device_id)
                faults.point("devmapper.remove.after_message")
                self.store.unpark(gone)
                faults.point("devmapper.remove.after_register")
            for device_id in gone:
                self.alloc.free(device_id)

    def _settle(self) -> None:
        """Wait for a pause in the removes (settle_delay), at most max_delay."""
        start = time.monotonic()
        while not self._stop.is_set():
            now = time.monotonic()
            idle = now - self._last_queued
            if idle >= self.settle_delay or now - start >= self.max_delay:
                return
            self._stop.wait(min(self.settle_delay - idle, start + self.max_delay - now))

    def _deletion_worker(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.deferred_delete_period)
            self._wake.clear()
            self._settle()
            if self._stop.is_set():
                return
            try:
                self.drain(None, self._stop)
            except Exception:   # keep retrying; a failure here must not kill the driver
                log.exception("devicemapper: deferred deletion")

    # -- activation and the filesystem on it -------------------------------
    def activate(self, layer: str, record: DeviceRecord) -> str:
        """Make the layer's device node (a no-op when active); returns its path."""
        assert self.pool is not None
        with self.lock:
            name = self.devname(layer)
            path = self.pool.activate(name, record.device_id, record.size)
            self._active[name] = layer
            return path

    def deactivate(self, layer: str, *, deferred: bool = False) -> None:
        assert self.pool is not None
        with self.lock:
            name = self.devname(layer)
            self.pool.deactivate(name, deferred=deferred)
            self._active.pop(name, None)

    def mount(self, layer: str, record: DeviceRecord, mountpoint: pathlib.Path,
              mount_label: str = "") -> None:
        """Activate the device and mount its filesystem at ``mountpoint`` (unless mounted)."""
        path = self.activate(layer, record)
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

    def unmount(self, layer: str, mountpoint: pathlib.Path) -> None:
        """Unmount (detaching if busy), drop the mountpoint, deactivate the device."""
        if is_mountpoint(mountpoint):
            try:
                umount(mountpoint, retries=5)
            except OSError:
                umount(mountpoint, MNT_DETACH)
        try:
            os.rmdir(mountpoint)
        except OSError:
            pass
        self.deactivate(layer, deferred=self.deferred_removal)

    def grow_fs(self, layer: str, record: DeviceRecord) -> None:
        """Grow the filesystem of a device whose record size grew (size option, dm.basesize)."""
        mountpoint = self.mnt / f".grow-{record.device_id}"
        name = self.devname(layer)
        was_active = dm.info(name) is not None
        self.mount(layer, record, mountpoint)
        try:
            filesystem.grow(block_path(name), mountpoint, self.fs)
        finally:
            umount(mountpoint, retries=5)
            os.rmdir(mountpoint)
            if not was_active:
                self.deactivate(layer)

    # -- shutdown ---------------------------------------------------------
    def stop_worker(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._worker is not None:
            self._worker.join(timeout=10)

    def active_layers(self) -> list[str]:
        """The layers whose devices this instance activated ("" is the base device)."""
        with self.lock:
            return sorted(set(self._active.values()))

    def close(self) -> None:
        """Save the allocator hint, deactivate what this instance activated, tear down our pool
        unless another live instance uses it.

        The caller unmounts first. Only this instance's devices: another process (a
        plugin while the CLI resizes) may use the same pool.
        """
        with self.lock:
            self.closed = True
            if hasattr(self, "alloc"):
                try:
                    self.save_deviceset()
                except OSError as exc:
                    log.warning("devicemapper: saving device set metadata: %s", exc)
            pool = self.pool
            if pool is None:
                return
            for name in sorted(self._active):
                try:
                    pool.deactivate(name, deferred=self.deferred_removal)
                except OSError as exc:
                    log.warning("devicemapper: deactivating %s: %s", name, exc)
            self._active.clear()
            with self.pool_lock:    # an instance starting now waits, then brings it up again
                info = dm.info(pool.name)
                if (pool.owned and info is not None and info.open_count == 0
                        and not self._others_use_pool()):
                    try:
                        pool.teardown()
                    except OSError as exc:   # a device opened meanwhile keeps the pool
                        log.warning("devicemapper: removing pool %s: %s", pool.name, exc)


class _IdTaken(NothingMade):
    pass

"""Crash-consistent pool changes, tied to the thin pool's own transaction id.

Every change of the pool runs as: open (write ``transaction-metadata`` with the
pool's transaction id + 1) → pool message (create_thin / create_snap / delete)
→ register (write or remove the device record) → commit (``set_transaction_id
old new`` in the pool, then drop the file). The kernel commits its metadata on
every message, so after a crash the pool id tells how far we got: equal to the
open id → committed; lower → resolved on the next start:

* a create is undone: the thin device is deleted and its record removed, so no
  half-made layer and no leaked device id survive;
* a delete is finished: the device is deleted (or, still busy, queued for
  deferred deletion) and its record removed;
* a batch delete of queued devices (``delete-parked``: the worker's, several ids in
  one transaction) is finished likewise: each device still in the queue and owned
  by no live record is deleted and its queued record dropped.

Several processes may share the pool (one at a time in a transaction: the pool
lock). A process whose id allocator is behind may open a create for an id
another process's device has: the message fails with EEXIST and makes nothing
(``NothingMade``), and neither the rollback nor a recovery after a crash there
deletes a device that another record owns.
"""
from __future__ import annotations

import errno
import logging
from contextlib import contextmanager
from typing import Iterator, Protocol

from . import faults
from .metadata import DeviceRecord, MetadataStore, Transaction

log = logging.getLogger(__name__)


class NothingMade(Exception):
    """Raised inside a create's transaction when its message made no device: nothing to undo."""


class PoolOps(Protocol):
    def transaction_id(self) -> int: ...
    def set_transaction_id(self, old: int, new: int) -> None: ...
    def delete_thin(self, device_id: int) -> None: ...


class TransactionLog:
    def __init__(self, store: MetadataStore, pool: PoolOps):
        self.store = store
        self.pool = pool
        self.current = pool.transaction_id()

    @contextmanager
    def open(self, op: str, step: str, layer: str, device_id: int,
             device_ids: list[int] | None = None) -> Iterator[Transaction]:
        """Run one pool change; ``op`` is "create", "delete" or "delete-parked" (then
        ``device_ids`` are the queued devices it deletes), ``step`` names fault points."""
        self.current = self.pool.transaction_id()   # another process may have moved it
        txn = Transaction(self.current + 1, op, layer, device_id, list(device_ids or ()))
        self.store.save_transaction(txn)
        faults.point(f"devmapper.{step}.after_open")
        try:
            yield txn
        except BaseException as exc:
            if op == "create" and not isinstance(exc, NothingMade):
                self._resolve(txn)   # make sure nothing half-made stays in the pool
            self.store.clear_transaction()
            raise
        self.pool.set_transaction_id(self.current, txn.open_transaction_id)
        self.current = txn.open_transaction_id
        faults.point(f"devmapper.{step}.after_commit")
        self.store.clear_transaction()

    def recover(self) -> str | None:
        """Resolve a transaction a crashed process left open; return what was done."""
        txn = self.store.transaction()
        if txn is None:
            return None
        if txn.open_transaction_id <= self.current:
            self.store.clear_transaction()   # committed; only the file removal was missed
            return None
        outcome = self._resolve(txn)
        self.store.clear_transaction()
        log.warning("devicemapper: %s of device %d (layer %r) was interrupted: %s",
                    txn.op, txn.device_id, txn.layer or "<base>", outcome)
        return outcome

    def _resolve(self, txn: Transaction) -> str:
        if txn.op == "delete-parked":
            return self._finish_parked(txn.device_ids)
        if txn.op == "create" and self.store.owned_elsewhere(txn.device_id, txn.layer):
            # the id was another device's (an allocator behind another process's): the
            # message failed, nothing of this transaction is in the pool
            return "rolled back (the device id belongs to another device)"
        try:
            self.pool.delete_thin(txn.device_id)
            deleted = True
        except OSError as exc:
            deleted = exc.errno == errno.ENODATA   # never created / already gone
            if not deleted:
                log.warning("devicemapper: deleting device %d: %s", txn.device_id, exc)
        live = self.store.base() if txn.layer == "" else self.store.layer(txn.layer)
        if live is not None and live.device_id == txn.device_id:
            if deleted:
                self.store.remove(live)
            else:
                self.store.mark_deleted(live)
        parked = [r for r in self.store.deleted() if r.device_id == txn.device_id]
        if deleted:
            for record in parked:
                self.store.remove(record)
        elif live is None and not parked:   # keep the id reserved until the worker deletes it
            self.store.save(DeviceRecord(txn.layer, txn.device_id, 0, deleted=True))
        verb = "rolled back" if txn.op == "create" else "finished"
        return verb if deleted else f"{verb}; device still busy, deletion deferred"

    def _finish_parked(self, device_ids: list[int]) -> str:
        """Delete the queued devices of an interrupted batch (those still queued)."""
        live = self.store.live_device_ids()
        gone, busy = [], 0
        for device_id in device_ids:
            if self.store.parked(device_id) is None:
                continue                      # finished before the crash
            if device_id in live:             # never a live layer's device
                log.error("devicemapper: queued device %d belongs to a live record; "
                          "not deleted", device_id)
                continue
            try:
                self.pool.delete_thin(device_id)
            except OSError as exc:
                if exc.errno != errno.ENODATA:
                    busy += 1
                    log.warning("devicemapper: deleting device %d: %s", device_id, exc)
                    continue
            gone.append(device_id)
        self.store.unpark(gone)
        return "finished" + (f"; {busy} device(s) still busy, deletion deferred" if busy else "")

"""The device records: one JSON file per thin device, written atomically.

Layout under ``<home>/metadata`` (``home`` = ``<load home>/devicemapper``)::

    base                    record of the base device (the thin device holding the fresh filesystem)
    layers/<id>             the device of each layer: device id, size, transaction id
    deleted/<device id>     the deletion queue: devices of removed layers waiting for their
                            discard and delete (or still busy), deleted by the worker
    deviceset-metadata      {"next_device_id", "base_uuid", "base_fs"}
    transaction-metadata    the open transaction, present only while one is open

These are the layers' *data*, as a directory is vfs' data: the layer graph (which
layers exist, parent, rw) is in the framework's layer store (``<home>/_layers.json``).
A device record is written before its layer's record and dropped after it, so a
device record without a layer record is what a crash left; the driver deletes it at
load. Homes from before the layer store kept each layer's parent here
(``"parent"`` in ``layers/<id>``): it is read once, when the first load builds the
layer store (``layer_parents``), and ignored afterwards.

Layer records live in their own directory so that a layer may be called
``base`` or ``transaction-metadata``. Device ids are allocated from a 24-bit
space (the thin-pool limit) and the allocator is rebuilt from the records at
start, so nothing but the records themselves needs to survive a crash.
"""
from __future__ import annotations

import errno
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator

from graphdrivers.store.atomicfile import fsync_dir, read_json, remove_stale_temps, write_json
from graphdrivers.errors import DriverError, NoSpace

from .poolstatus import MAX_DEVICE_ID


@dataclass
class DeviceRecord:
    """One thin device. ``layer`` is the layer id, "" for the base device."""
    layer: str
    device_id: int
    size: int
    transaction_id: int = 0
    initialized: bool = False
    deleted: bool = False

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> "DeviceRecord":
        return cls(layer=str(data.get("layer", "")), device_id=int(data["device_id"]),
                   size=int(data["size"]), transaction_id=int(data.get("transaction_id", 0)),
                   initialized=bool(data.get("initialized", False)),
                   deleted=bool(data.get("deleted", False)))


@dataclass
class Transaction:
    open_transaction_id: int
    op: str              # "create" (undone on rollback), "delete" or "delete-parked" (finished)
    layer: str           # layer id, "" for the base device
    device_id: int
    # "delete-parked": the queued devices (deleted/) this one transaction deletes
    device_ids: list[int] = field(default_factory=list)


class DeviceIdAllocator:
    """Free 24-bit device ids; the next search starts after the last id handed out."""

    def __init__(self, used: set[int] | None = None, next_id: int = 0,
                 max_id: int = MAX_DEVICE_ID):
        self._max = max_id          # a power of two minus one (a bit mask)
        self._used = set(used or ())
        self._next = next_id & max_id

    def allocate(self) -> int:
        if len(self._used) > self._max:
            raise NoSpace(f"all {self._max + 1} thin device ids are in use")
        candidate = self._next
        while True:
            candidate = (candidate + 1) & self._max
            if candidate not in self._used:
                self._used.add(candidate)
                self._next = candidate
                return candidate

    def mark_used(self, device_id: int) -> None:
        self._used.add(device_id)

    def free(self, device_id: int) -> None:
        self._used.discard(device_id)

    def is_used(self, device_id: int) -> bool:
        return device_id in self._used

    @property
    def next_id(self) -> int:
        return self._next

    @property
    def used(self) -> frozenset[int]:
        return frozenset(self._used)


class MetadataStore:
    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self.layers_dir = self.root / "layers"
        self.deleted_dir = self.root / "deleted"
        for directory in (self.root, self.layers_dir, self.deleted_dir):
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            remove_stale_temps(directory)

    # -- device records -------------------------------------------------
    def _path(self, record: DeviceRecord) -> Path:
        if record.deleted:
            return self.deleted_dir / str(record.device_id)
        if record.layer == "":
            return self.root / "base"
        return self.layers_dir / record.layer

    def save(self, record: DeviceRecord) -> None:
        write_json(self._path(record), record.to_json())

    def remove(self, record: DeviceRecord) -> None:
        # a layer's device record is dropped after its layer record; if the unlink is
        # lost in a crash, the record comes back as an orphan the next load deletes
        # (its device id cannot be reused meanwhile: the next device record written
        # in layers/ flushes the directory before that device's layer is recorded)
        live_layer = record.layer != "" and not record.deleted
        _unlink(self._path(record), flush=not live_layer)

    def park(self, record: DeviceRecord) -> DeviceRecord:
        """Queue a removed layer's device for deletion: rename ``layers/<id>`` to
        ``deleted/<device id>`` (one flush: the queue's directory).

        Atomic, so the record is in one place or the other. The flush is for the same
        layer id made again (by any process): its new record flushes ``layers/``, and
        the queued entry must not be lost behind it (a leaked thin device). A lost
        unlink from ``layers/`` brings back an orphan that the next load queues again."""
        os.rename(self._path(record), self.deleted_dir / str(record.device_id))
        fsync_dir(self.deleted_dir)
        record.deleted = True
        return record

    def unpark(self, device_ids: list[int]) -> None:
        """Drop the queued records of deleted devices; one flush for all: an id is
        freed only after it, so no new device can meet an old queued record of its id."""
        for device_id in device_ids:
            _unlink(self.deleted_dir / str(device_id), flush=False)
        if device_ids:
            fsync_dir(self.deleted_dir)

    def mark_deleted(self, record: DeviceRecord) -> DeviceRecord:
        """Move a record to ``deleted/`` (new file first: a crash leaves it in both, never in none)."""
        live_path = self._path(record)
        record.deleted = True
        self.save(record)
        _unlink(live_path)
        return record

    def base(self) -> DeviceRecord | None:
        return self._read(self.root / "base")

    def layer(self, layer_id: str) -> DeviceRecord | None:
        return self._read(self.layers_dir / layer_id)

    def layer_ids(self) -> list[str]:
        """Layers that have a device record (the layer store may not know them: orphans)."""
        return sorted(e for e in os.listdir(self.layers_dir) if not e.startswith("."))

    def layers(self) -> Iterator[DeviceRecord]:
        for entry in self.layer_ids():
            record = self._read(self.layers_dir / entry)
            if record is not None:
                yield record

    def layer_parents(self) -> Iterator[tuple[str, str | None]]:
        """(layer, parent) from the records of a home written before the layer store."""
        for entry in self.layer_ids():
            path = self.layers_dir / entry
            try:
                data = read_json(path)
            except FileNotFoundError:
                continue
            except ValueError as exc:
                raise DriverError(f"devicemapper metadata file {path} is damaged ({exc}); "
                                  "restore it from a backup or remove the layer's record") from None
            yield entry, data.get("parent") or None

    def deleted(self) -> list[DeviceRecord]:
        records = []
        for entry in sorted(os.listdir(self.deleted_dir), key=lambda e: (len(e), e)):
            if entry.isdigit():
                record = self._read_parked(self.deleted_dir / entry)
                if record is not None:
                    records.append(record)
        return records

    def owned_elsewhere(self, device_id: int, layer: str) -> bool:
        """Whether a record other than ``layer``'s live one holds ``device_id`` (a scan:
        recovery only)."""
        base = self.base()
        if base is not None and base.device_id == device_id and layer != "":
            return True
        if any(r.device_id == device_id for r in self.deleted()):
            return True
        return any(r.device_id == device_id and r.layer != layer for r in self.layers())

    def parked(self, device_id: int) -> DeviceRecord | None:
        """The record of a device waiting for deferred deletion, if still there."""
        return self._read_parked(self.deleted_dir / str(device_id))

    def live_device_ids(self) -> set[int]:
        """Device ids of the base and of every layer record (not the queue's)."""
        ids = {r.device_id for r in self.layers()}
        base = self.base()
        if base is not None:
            ids.add(base.device_id)
        return ids

    def all_device_ids(self) -> set[int]:
        ids = {r.device_id for r in self.layers()} | {r.device_id for r in self.deleted()}
        base = self.base()
        if base is not None:
            ids.add(base.device_id)
        return ids

    def _read_parked(self, path: Path) -> DeviceRecord | None:
        record = self._read(path)
        if record is not None:
            record.deleted = True     # park() moves a layer's record unchanged
        return record

    def _read(self, path: Path) -> DeviceRecord | None:
        try:
            return DeviceRecord.from_json(read_json(path))
        except FileNotFoundError:
            return None
        except (ValueError, KeyError, TypeError) as exc:
            raise DriverError(f"devicemapper metadata file {path} is damaged ({exc}); "
                              "restore it from a backup or remove the layer's record") from None

    # -- device set and transaction files -------------------------------
    def deviceset(self) -> dict:
        try:
            return dict(read_json(self.root / "deviceset-metadata"))
        except FileNotFoundError:
            return {}

    def save_deviceset(self, values: dict) -> None:
        write_json(self.root / "deviceset-metadata", values)

    def transaction(self) -> Transaction | None:
        try:
            data = read_json(self.root / "transaction-metadata")
        except FileNotFoundError:
            return None
        return Transaction(int(data["open_transaction_id"]), str(data["op"]),
                           str(data["layer"]), int(data["device_id"]),
                           [int(i) for i in data.get("device_ids", [])])

    def save_transaction(self, txn: Transaction) -> None:
        write_json(self.root / "transaction-metadata", asdict(txn))

    def clear_transaction(self) -> None:
        # no flush: a file that comes back after a crash names a transaction id the
        # pool has reached, which recover() recognises as committed and drops
        _unlink(self.root / "transaction-metadata", flush=False)

    def allocator(self) -> DeviceIdAllocator:
        """Rebuild the id allocator from every record (and an open transaction's id)."""
        used = self.all_device_ids()
        txn = self.transaction()
        if txn is not None:
            used.add(txn.device_id)
            used.update(txn.device_ids)
        return DeviceIdAllocator(used, int(self.deviceset().get("next_device_id", 0)))


def _unlink(path: Path, *, flush: bool = True) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        return
    except OSError as exc:
        if exc.errno != errno.ENOENT:
            raise
    if flush:
        fsync_dir(path.parent)

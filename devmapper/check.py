"""devicemapper's part of `graphdrivers check`: records against the thin pool itself.

- a layer recorded without a device record, or whose thin device the pool no longer
  has (probed by activating it under a temporary name: a table for an unknown device
  id is refused with ENODATA, nothing changes in the pool): damaged, quarantined;
- a device record under a name no layer can take: its device deleted;
- a thin device id in the pool that no record owns (nor a quarantined layer): deleted
  in a pool transaction, as the driver deletes a layer's device;
- a device of this home (its dm name prefix) that is active while nothing has it open
  (no mount, no holder): deactivated;
- the pool's transaction id behind the highest one a device record names (the pool
  metadata was rolled back or replaced): moved forward to it, so that the next
  transaction does not reuse an id a record names.

The probing holds the pool lock (devices.changing_pool): no create or delete of
another process on this home runs between what the probe sees and the repair.
"""
from __future__ import annotations

import contextlib
import errno
import itertools
import json
import os
from typing import TYPE_CHECKING, Iterator

from graphdrivers.check import generic, quarantine
from graphdrivers.check.findings import DATA_WITHOUT_LAYER, LAYER_WITHOUT_DATA, Finding
from graphdrivers.layerid import is_valid_id

from . import dm
from .metadata import DeviceRecord
from .poolstatus import thin_table

if TYPE_CHECKING:
    from .driver import DeviceMapperDriver

ORPHAN_DEVICE = "orphan-thin-device"
LEAKED_DEVICE = "leaked-dm-device"
POOL_TRANSACTION = "pool-transaction-id"
_SLACK = 64          # ids probed past the allocator's hint
_PROBE_SECTORS = 8
_probes = itertools.count()


def findings(driver: DeviceMapperDriver) -> list[Finding]:
    devices = driver.devices
    found: list[Finding] = []
    with devices.changing_pool():
        store = driver.store
        pool_txn = driver.pool.transaction_id()
        quarantined = _quarantined_ids(driver)
        highest = max((r.transaction_id for r in store.layers()), default=0)
        base = store.base()
        highest = max(highest, base.transaction_id if base else 0)
        if pool_txn < highest:
            found.append(Finding(POOL_TRANSACTION, driver.pool.name,
                                 f"the pool's transaction id is {pool_txn}, behind the {highest} "
                                 "a device record names (its metadata was rolled back?)",
                                 f"set it to {highest}",
                                 lambda new=highest: _set_txn(driver, new)))
        layers = {r.id: r for r in driver.layer_store.records()}
        for layer_id, record in layers.items():
            if record.parent is not None and record.parent not in layers:
                continue                      # a broken parent: the framework's finding
            device = store.layer(layer_id)
            if device is None:
                found.append(generic.damaged(driver, LAYER_WITHOUT_DATA, layer_id,
                                             "the layer has no device record"))
            elif not _exists(driver, device):
                found.append(generic.damaged(
                    driver, LAYER_WITHOUT_DATA, layer_id,
                    f"the pool has no thin device {device.device_id} for it"))
        for name in store.layer_ids():
            if not is_valid_id(name) and (device := store.layer(name)) is not None:
                found.append(Finding(DATA_WITHOUT_LAYER, str(store.layers_dir / name),
                                     "a device record that no layer name can own",
                                     f"delete thin device {device.device_id} and the record",
                                     lambda d=device: _delete(driver, d)))
        owned = store.all_device_ids() | quarantined
        txn = store.transaction()
        if txn is not None:
            owned.add(txn.device_id)
        for device_id in _candidates(driver, owned):
            if _probe(driver, device_id):
                found.append(Finding(ORPHAN_DEVICE, str(device_id),
                                     f"thin device {device_id} is in the pool and in no record",
                                     "delete it from the pool (in a pool transaction)",
                                     lambda i=device_id: _delete_orphan(driver, i)))
    found += _idle_devices(driver, layers)
    return found


# -- the pool's thin devices ------------------------------------------------------------
def _candidates(driver: DeviceMapperDriver, owned: set[int]) -> Iterator[int]:
    limit = max([driver.devices.alloc.next_id, *owned, 0]) + _SLACK
    return (i for i in range(limit) if i not in owned)


def _exists(driver: DeviceMapperDriver, device: DeviceRecord) -> bool:
    if dm.info(driver.devices.devname(device.layer)) is not None:
        return True                           # active: its thin device is there
    return _probe(driver, device.device_id)


def _probe(driver: DeviceMapperDriver, device_id: int) -> bool:
    """Whether the pool has thin device ``device_id``: activate it under a name of our
    own and take it down again (the kernel refuses an unknown id with ENODATA)."""
    # a new name each time: udev may still be making or dropping the last probe's node
    name = f"{driver.devices.prefix}-check-{os.getpid()}-{next(_probes)}"
    try:
        dm.create(name, thin_table(driver.pool.majmin(), device_id, _PROBE_SECTORS))
    except OSError as exc:
        if exc.errno == errno.ENODATA:
            return False
        raise
    dm.remove(name)
    return True


def _quarantined_ids(driver: DeviceMapperDriver) -> set[int]:
    """Device ids of quarantined layers: their thin devices stay in the pool."""
    ids = set()
    for entry in quarantine.entries(driver.home):
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            ids.add(int(json.loads((entry / "data").read_text())["device_id"]))
    return ids


def _delete(driver: DeviceMapperDriver, device: DeviceRecord) -> None:
    driver.devices.delete(device, sync=True)


def _delete_orphan(driver: DeviceMapperDriver, device_id: int) -> None:
    devices = driver.devices
    with devices.lock, devices.changing_pool():
        if device_id in driver.store.all_device_ids():
            return                               # recorded meanwhile
        devices._delete_in_pool(DeviceRecord(f".orphan-{device_id}", device_id, 0), sync=True)
        devices.alloc.free(device_id)


def _set_txn(driver: DeviceMapperDriver, new: int) -> None:
    """First of the repairs (the others' pool transactions build on it); the pool's id
    is read again under the pool lock: only forward, never back."""
    with driver.devices.changing_pool():
        old = driver.pool.transaction_id()
        if old < new:
            driver.pool.set_transaction_id(old, new)
            driver.txn.current = new


# -- active devices -------------------------------------------------------------------
def _idle_devices(driver: DeviceMapperDriver, layers: dict) -> list[Finding]:
    devices = driver.devices
    names = {devices.devname(layer_id): layer_id for layer_id in layers}
    names[devices.devname("")] = ""
    found = []
    for name in dm.list_devices():
        if not name.startswith(devices.prefix + "-") or name == driver.pool.name:
            continue
        info = dm.info(name)
        if info is None or info.open_count or info.deferred_remove or name in devices._active:
            continue
        layer = names.get(name)
        what = f"layer {layer}" if layer else ("the base device" if layer == "" else
                                               "no layer")
        found.append(Finding(LEAKED_DEVICE, name, f"active, of {what}, and nothing has it open",
                             "deactivate it", lambda n=name, l=layer: _deactivate(driver, n, l)))
    return found


def _deactivate(driver: DeviceMapperDriver, name: str, layer: str | None) -> None:
    lock = driver._locks.hold(layer) if layer else contextlib.nullcontext()
    with lock:
        info = dm.info(name)
        if info is not None and not info.open_count:
            driver.pool.deactivate(name)

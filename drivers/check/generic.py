"""The inspections every driver gets: layer records against the data and the kernel.

Each uses what the driver already has: the layer store (records, parents, children),
the backend's ``_data_present``/``_data_ids``/``_remove_data`` hooks (the ones load's
recovery uses), the run directory's holds and in-flight marks, the mount table and the
loop devices' sysfs. Repairs take the layer's id lock and look again before acting, as
load's recovery does, so a live process's work in progress is left alone.
"""
from __future__ import annotations

import glob
import os
from typing import TYPE_CHECKING, Callable

from graphdrivers.check import quarantine
from graphdrivers.check.findings import (BROKEN_PARENT, DATA_WITHOUT_LAYER, FIXED_AT_LOAD,
                                         HALF_MADE, LAYER_WITHOUT_DATA, LEAKED_LOOP, LEAKED_MOUNT,
                                         RECOVERED, STALE_MARK, Finding)
from graphdrivers.errors import LayerInUse
from graphdrivers.kernel import loop, mount

if TYPE_CHECKING:
    from graphdrivers.driver import Driver


def inspect(driver: Driver) -> list[Finding]:
    return (recovered_at_load(driver) + records(driver) + orphans(driver)
            + abandoned(driver) + leaked_mounts(driver) + leaked_loops(driver))


# -- what the load before the inspection did ------------------------------------
def recovered_at_load(driver: Driver) -> list[Finding]:
    """What the driver's load had to clear, reported once (the next inspection of the
    same instance does not repeat it)."""
    done = getattr(driver, "load_recovery", {})
    driver.load_recovery = {"removed": [], "rebuilt": []}
    found = [Finding(RECOVERED, i, "data without a layer record (a create or remove cut "
                     "short by a crash)", "deleted by load's recovery", state=FIXED_AT_LOAD)
             for i in done.get("removed", ())]
    found += [Finding(RECOVERED, i, "a recorded layer whose data a power cut lost",
                      "rebuilt by load's recovery as its create made it (empty, or its "
                      "parent's copy): what was applied to it later is gone",
                      state=FIXED_AT_LOAD)
              for i in done.get("rebuilt", ())]
    return found


# -- records against data ----------------------------------------------------------
def records(driver: Driver) -> list[Finding]:
    store = driver.layer_store
    by_id = {r.id: r for r in store.records()}
    found = []
    for record in by_id.values():
        problem = _chain_problem(record.id, by_id)
        if problem:
            found.append(damaged(driver, BROKEN_PARENT, record.id, problem))
        elif not driver._data_present(record):
            found.append(damaged(driver, LAYER_WITHOUT_DATA, record.id,
                                  "the layer is recorded but its data is missing"))
    return found


def _chain_problem(layer_id: str, by_id: dict) -> str:
    seen = []
    current = layer_id
    while True:
        record = by_id[current]
        seen.append(current)
        if record.parent is None:
            return ""
        if record.parent in seen:
            return f"its parent chain loops ({' -> '.join(seen + [record.parent])})"
        if record.parent not in by_id:
            if current == layer_id:
                return f"its parent {record.parent} has no record"
            return ""          # reported for the layer whose own parent is missing
        current = record.parent


def orphans(driver: Driver) -> list[Finding]:
    """Data of the backend's naming scheme without a record that appeared after load's
    recovery ran (a process that died since, or one still creating it: the repair waits
    for its id lock and looks again)."""
    found = []
    for layer_id in driver.layer_store.orphans(driver._data_ids()):
        found.append(Finding(DATA_WITHOUT_LAYER, layer_id,
                             "layer data with no layer record",
                             "delete the data (no layer needs it)",
                             _remove_orphan(driver, layer_id)))
    return found


def _remove_orphan(driver: Driver, layer_id: str) -> Callable[[], None]:
    def run() -> None:
        with driver._locks.hold(layer_id):
            if not driver.layer_store.exists(layer_id):
                driver._remove_data(layer_id)
    return run


def abandoned(driver: Driver) -> list[Finding]:
    """Layers an apply_diff was changing when its process died (holds.in_flight)."""
    found = []
    for layer_id in driver.home_run.abandoned():
        if driver.layer_store.exists(layer_id):
            found.append(damaged(driver, HALF_MADE, layer_id,
                                  "an apply_diff into it was cut short (its process died): "
                                  "its content is half applied"))
        else:
            found.append(Finding(STALE_MARK, layer_id,
                                 "an unfinished-apply mark for a layer that no longer exists",
                                 "drop the mark",
                                 lambda i=layer_id: driver.home_run.clear_abandoned(i)))
    return found


def damaged(driver: Driver, kind: str, layer_id: str, detail: str) -> Finding:
    """A finding whose repair quarantines the layer and everything built on it."""
    tree = subtree(driver, layer_id)
    if tree is None:
        return Finding(kind, layer_id, detail, "")    # a loop: needs an operator's decision
    built_on = tree[:-1]
    what = "move the layer" + (f" and the {len(built_on)} layer(s) built on it "
                               f"({', '.join(built_on[:5])}{', ...' if len(built_on) > 5 else ''})"
                               if built_on else "")
    return Finding(kind, layer_id, detail,
                   f"{what} into {quarantine.root(driver.home)} (record and data kept)",
                   lambda: quarantine_layers(driver, tree, detail))


def subtree(driver: Driver, layer_id: str) -> list[str] | None:
    """``layer_id`` and its descendants, deepest first; None when the children loop."""
    order, stack = [], [layer_id]
    while stack:
        current = stack.pop()
        if current in order:
            return None
        order.append(current)
        stack.extend(driver.layer_store.children(current))
    return list(reversed(order))


def quarantine_layers(driver: Driver, ids: list[str], reason: str) -> None:
    """Move each layer (children before parents) into the quarantine; refuse a mounted one."""
    for layer_id in ids:
        with driver._locks.hold(layer_id):
            record = driver.layer_store.get(layer_id)
            if record is None:
                continue
            busy = driver._busy(layer_id)
            if busy:
                raise LayerInUse(f"layer {layer_id} is {busy}; unmount it first")
            entry = quarantine.place(driver.home, record, reason)
            driver._quarantine_data(layer_id, entry / "data")
            driver.layer_store.remove(layer_id)
            driver.home_run.clear_abandoned(layer_id)


# -- the kernel ---------------------------------------------------------------------
def leaked_mounts(driver: Driver) -> list[Finding]:
    """Mounts under the home that no live process holds (holds.py). A mount inside a held
    mount is its holder's (a container's /proc, say); inside a leaked one it goes with it."""
    home = os.path.realpath(driver.home)
    found, tops = [], []
    for path in sorted(mount.mounts_under(home), key=len):
        if path == home or any(path.startswith(t.rstrip("/") + "/") for t in tops):
            continue
        tops.append(path)
        if driver.home_run.live_holders(path):
            continue
        found.append(Finding(LEAKED_MOUNT, path, "mounted, and no live process holds it",
                             "unmount it (lazily: a process that has it open keeps it)",
                             _unmount(driver, path)))
    return found


def _unmount(driver: Driver, path: str) -> Callable[[], None]:
    def run() -> None:
        layer_id = driver._mount_layer(path)
        if layer_id is None:
            _drop(driver, path)
            return
        with driver._locks.hold(layer_id):
            _drop(driver, path)
    return run


def _drop(driver: Driver, path: str) -> None:
    if driver.home_run.live_holders(path) or path not in mount.mounts_under(path):
        return                              # taken over, or gone, meanwhile
    mount.umount(path, mount.MNT_DETACH)


def leaked_loops(driver: Driver) -> list[Finding]:
    """Loop devices backed by a file under the home that nothing uses: no holder in
    sysfs (a device-mapper table, say) and not mounted."""
    home = os.path.realpath(driver.home).rstrip("/") + "/"
    table = mount.mountinfo()
    mounted = {m.source for m in table} | {m.major_minor for m in table}
    found = []
    for entry in sorted(glob.glob("/sys/block/loop*/loop/backing_file")):
        name = entry.split("/")[3]
        device = f"/dev/{name}"
        backing = (loop.backing_file(device) or "").removesuffix(" (deleted)")
        if not backing.startswith(home):
            continue
        if os.listdir(f"/sys/block/{name}/holders") or device in mounted or \
                _majmin(name) in mounted:
            continue
        found.append(Finding(LEAKED_LOOP, device, f"attached to {backing}; nothing uses it",
                             "detach it", lambda d=device: loop.detach(d)))
    return found


def _majmin(name: str) -> str:
    try:
        with open(f"/sys/block/{name}/dev") as f:
            return f.read().strip()
    except FileNotFoundError:
        return ""

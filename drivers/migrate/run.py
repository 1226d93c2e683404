"""Copying every layer of one driver into another, resumably (see __init__.py)."""
from __future__ import annotations

import io
import pathlib
import time
from typing import Any, BinaryIO

from graphdrivers import faults
from graphdrivers.capabilities import DiffFromChanges
from graphdrivers.driver import Driver
from graphdrivers.errors import DriverError
from graphdrivers.migrate.plan import DONE, REDO, LayerPlan, MigrationPlan, make_plan
from graphdrivers.migrate.record import ProgressRecord
from graphdrivers.migrate.verify import verify_layer

POINTS = faults.register("migrate", "migrate.copy.after_create", "migrate.copy.after_apply",
                         "migrate.copy.after_verify", "migrate.remove_source.after_first")


LOCK = "_migrate"      # not a layer id: no layer's lock is this one


class Observer:
    """What a migration reports as it goes (the CLI draws it); every method optional."""

    def started(self, plan: MigrationPlan) -> None: ...

    def layer_started(self, index: int, layer: LayerPlan) -> None: ...

    def copied(self, count: int) -> None: ...

    def layer_finished(self, index: int, layer: LayerPlan) -> None: ...


class _Counted(io.RawIOBase):
    """A read-only stream that tells the observer how many bytes went through."""

    def __init__(self, source: BinaryIO, observer: Observer):
        self._source, self._observer = source, observer

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        data = self._source.read(len(buffer))
        buffer[:len(data)] = data
        self._observer.copied(len(data))
        return len(data)

    def read(self, size: int = -1) -> bytes:
        data = self._source.read(size)
        self._observer.copied(len(data))
        return data


def check_pair(source: Driver, target: Driver | None, target_driver: str,
               target_home: pathlib.Path) -> None:
    if source.name == target_driver and pathlib.Path(source.home) == target_home:
        raise DriverError(f"source and target are both {source.name} in {source.home}; "
                          "give another --to driver or another --target-home")


def plan(source: Driver, target: Driver | None, target_driver: str,
         target_home: pathlib.Path, *, keep_options: bool = True) -> MigrationPlan:
    """What ``migrate`` would do (``--dry-run``); target None: its home does not exist."""
    check_pair(source, target, target_driver, target_home)
    record = ProgressRecord.open(target_home, source.name, str(source.home))
    done = [d for d in record.done if target is not None and target.exists(d)]
    return make_plan(source, target, target_driver, target_home, done, record.current,
                     keep_options=keep_options)


def migrate(source: Driver, target: Driver, *, remove_source: bool = False,
            keep_options: bool = True, observer: Observer | None = None) -> dict[str, Any]:
    """Copy every layer of ``source`` into ``target``, parents first, each verified;
    resume a migration a kill interrupted; return a summary. A second migration into
    the same target waits for the first (a flock in the target's run directory, gone
    with its process), then finds its layers done."""
    with target.home_run.locked(LOCK):
        return _migrate(source, target, remove_source, keep_options, observer or Observer())


def _migrate(source: Driver, target: Driver, remove_source: bool, keep_options: bool,
             observer: Observer) -> dict[str, Any]:
    home = pathlib.Path(target.home)
    started = time.monotonic()
    the_plan = plan(source, target, target.name, home, keep_options=keep_options)
    the_plan.check()
    record = ProgressRecord.open(home, source.name, str(source.home))
    record.done = [d for d in record.done if target.exists(d)]
    observer.started(the_plan)
    copied = redone = applied = 0
    for index, layer in enumerate(the_plan.layers):
        if layer.state == DONE:
            continue
        observer.layer_started(index, layer)
        if layer.state == REDO:
            target.remove(layer.id)      # the half layer of the interrupted run
            redone += 1
        record.start(layer.id)
        applied += copy_layer(source, target, layer, observer)
        record.finish(layer.id)
        copied += 1
        observer.layer_finished(index, layer)
    removed = _remove_source(source, the_plan, record) if remove_source else 0
    return {"source": {"driver": source.name, "home": str(source.home)},
            "target": {"driver": target.name, "home": str(target.home)},
            "layers": len(the_plan.layers), "copied": copied, "redone": redone,
            "already_done": len(the_plan.layers) - copied, "bytes": applied,
            "verified": len(the_plan.layers), "source_removed": removed,
            "seconds": round(time.monotonic() - started, 3)}


def copy_layer(source: Driver, target: Driver, layer: LayerPlan, observer: Observer) -> int:
    """Create the layer in the target, apply the source's diff, verify; bytes applied."""
    target.create(layer.id, layer.parent, rw=layer.rw, storage_opt=layer.options or None)
    faults.point("migrate.copy.after_create")
    if isinstance(source, DiffFromChanges) and layer.parent is not None and layer.changes:
        stream = source.diff_from_changes(layer.id, layer.changes)   # no second comparison
    else:
        stream = source.diff(layer.id)
    try:
        count = target.apply_diff(layer.id, layer.parent, _Counted(stream, observer))
    finally:
        stream.close()
    faults.point("migrate.copy.after_apply")
    verify_layer(source, target, layer.id, layer.changes)
    faults.point("migrate.copy.after_verify")
    return count


def _remove_source(source: Driver, the_plan: MigrationPlan, record: ProgressRecord) -> int:
    """Remove the source's layers, children first: only after every layer is verified."""
    finished = set(record.done)
    if any(layer.id not in finished for layer in the_plan.layers):
        raise DriverError("not every layer is copied and verified; the source was kept")
    removed = 0
    for layer in reversed(the_plan.layers):
        if source.exists(layer.id):
            source.remove(layer.id)
            removed += 1
            if removed == 1:
                faults.point("migrate.remove_source.after_first")
    record.source_removed = True
    record.save()
    return removed

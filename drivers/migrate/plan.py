"""What a migration will do: the source's layers parents first, each with its options,
its bytes and whether the target already has it, and the checks made before any copy."""
from __future__ import annotations

import os
import pathlib
from dataclasses import dataclass, field, fields
from typing import Any

from graphdrivers.changes import changes_size
from graphdrivers.driver import Change, Driver
from graphdrivers.errors import DriverError, InvalidOption, LayerExists
from graphdrivers.options import format_size

COPY, DONE, REDO = "copy", "done", "redo"   # redo: a half layer a kill left, removed first
# change lists kept from the plan for the verification (saves a naive driver one tree
# comparison per layer); past this many entries in all, they are listed again instead
KEEP_CHANGES = 1_000_000


@dataclass(frozen=True)
class LayerPlan:
    id: str
    parent: str | None
    rw: bool
    options: dict[str, str]
    bytes: int                  # Docker's diff size of the layer over its parent
    state: str                  # COPY, DONE or REDO
    changes: list[Change] | None = field(default=None, compare=False, repr=False)

    def to_json(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "changes"}


@dataclass
class MigrationPlan:
    source_driver: str
    source_home: str
    target_driver: str
    target_home: str
    layers: list[LayerPlan]
    space_available: int | None
    conflicts: list[str] = field(default_factory=list)      # ids the target has already
    option_errors: list[str] = field(default_factory=list)  # per-layer options it refuses

    @property
    def to_copy(self) -> list[LayerPlan]:
        return [layer for layer in self.layers if layer.state != DONE]

    @property
    def bytes_to_copy(self) -> int:
        return sum(layer.bytes for layer in self.to_copy)

    @property
    def room(self) -> bool | None:
        """Whether the target has room for the bytes to copy (None: cannot tell)."""
        return None if self.space_available is None else self.space_available >= self.bytes_to_copy

    def check(self) -> None:
        """Refuse, before anything is copied, what the migration cannot do."""
        if self.conflicts:
            ids = ", ".join(self.conflicts[:5]) + (", ..." if len(self.conflicts) > 5 else "")
            raise LayerExists(
                f"the {self.target_driver} target in {self.target_home} already has "
                f"{len(self.conflicts)} layer(s) with the ids of source layers ({ids}), not "
                "made by this migration; nothing was copied. Remove them from the target, "
                "or migrate into another --target-home")
        if self.option_errors:
            raise InvalidOption(
                f"the {self.target_driver} target refuses per-layer options of the source: "
                + "; ".join(self.option_errors[:3]) + ". Nothing was copied; configure the "
                "target to take them, or pass --drop-layer-options")
        if self.room is False:
            raise DriverError(
                f"the {self.target_driver} target has {format_size(self.space_available or 0)} "
                f"free, less than the {format_size(self.bytes_to_copy)} to copy; nothing was "
                "copied. Make room or choose another --target-home")

    def to_json(self) -> dict[str, Any]:
        return {"source": {"driver": self.source_driver, "home": self.source_home},
                "target": {"driver": self.target_driver, "home": self.target_home},
                "layers": [layer.to_json() for layer in self.layers],
                "layers_to_copy": len(self.to_copy), "bytes_to_copy": self.bytes_to_copy,
                "space_available": self.space_available, "room": self.room,
                "conflicts": self.conflicts, "option_errors": self.option_errors}


def parents_first(source: Driver) -> list[tuple[str, str | None, bool]]:
    """(id, parent, rw) of every source layer, each after its parent, siblings by id."""
    infos = {info["id"]: info for info in source.infos()}
    children: dict[str | None, list[str]] = {}
    for layer_id, info in infos.items():
        children.setdefault(info["parent"], []).append(layer_id)
    order: list[tuple[str, str | None, bool]] = []
    pending = sorted(children.get(None, []), reverse=True)
    while pending:
        layer_id = pending.pop()
        order.append((layer_id, infos[layer_id]["parent"], bool(infos[layer_id]["rw"])))
        pending.extend(sorted(children.get(layer_id, []), reverse=True))
    return order


def make_plan(source: Driver, target: Driver | None, target_driver: str,
              target_home: pathlib.Path, done: list[str], current: str | None, *,
              keep_options: bool = True) -> MigrationPlan:
    """The plan against ``target`` (None: its home does not exist yet, so it has no
    layers; then options are checked only when it is made)."""
    finished = set(done)
    layers, conflicts, option_errors = [], [], []
    kept = 0
    for layer_id, parent, rw in parents_first(source):
        options = source.layer_options(layer_id) if keep_options else {}
        state = COPY
        if target is not None and target.exists(layer_id):
            state = DONE if layer_id in finished else REDO if layer_id == current else COPY
            if state == COPY:
                conflicts.append(layer_id)
        if target is not None and state != DONE and options:
            try:
                target.check_layer_options(options, rw)
            except InvalidOption as exc:
                option_errors.append(f"layer {layer_id} {_opts(options)}: {exc}")
        changes, size = _changes_and_size(source, layer_id) if state != DONE else (None, 0)
        if changes is not None:
            kept += len(changes)
        layers.append(LayerPlan(layer_id, parent, rw, options, size, state,
                                changes if kept <= KEEP_CHANGES else None))
    space = target.space_available() if target is not None else _free(target_home)
    return MigrationPlan(source.name, str(source.home), target_driver, str(target_home),
                         layers, space, conflicts, option_errors)


def _changes_and_size(source: Driver, layer_id: str) -> tuple[list[Change], int]:
    """The layer's changes and Docker's diff size from them (what ``diff_size`` counts),
    from one listing of the changes."""
    changes = source.changes(layer_id)
    root = source.mount(layer_id)
    try:
        return changes, changes_size(root, changes)
    finally:
        source.unmount(layer_id)


def _opts(options: dict[str, str]) -> str:
    return " ".join(f"{k}={v}" for k, v in sorted(options.items()))


def _free(path: pathlib.Path) -> int | None:
    """Free bytes of the filesystem that will hold ``path`` (its nearest existing folder)."""
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        st = os.statvfs(path)
    except OSError:
        return None
    return st.f_bavail * st.f_frsize

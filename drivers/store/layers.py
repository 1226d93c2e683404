"""The layer store: every layer's record, for every driver, shared by every process on a home.

One file per driver home, ``<home>/_layers.json`` (JSON lines; the ``_`` keeps it apart
from layer ids, which start with a letter or digit: overlay2 keeps its layers beside it):

    {"v": 1}                                                   header
    {"add": "<id>", "parent": "<id>"|null, "rw": bool, "x": {...}}  a layer (x: backend fields)
    {"del": "<id>"}                                            that layer was removed

It is a log, as a database's journal (journal.py keeps the file): a change is one line
appended and fdatasync'ed, so a create or remove costs one flush for its record (a
whole-file rewrite would cost two); compacted by an atomic rewrite; a torn last line is
ignored. Across processes: a writer holds flock(``<home>/_layers.lock``) only around
read-modify-write of the records; the long part of an operation runs under the per-id
locks (locks.py), outside it. Readers take no lock: one stat per operation tells whether
another process changed the file. The parent and children index is in memory.

The crash rule, the same for every backend: create = the backend makes the data, then
the record is committed; remove = the record goes first, then the data. After a crash
the only leftovers are data without a record, which the driver deletes when it loads
(``orphans``). A home written before this store existed has no log: the first load
builds it from the backend's own records (``import_records``).
"""
from __future__ import annotations

import os
import pathlib
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping

from graphdrivers.errors import LayerExists, LayerInUse, LayerNotFound
from graphdrivers.store.atomicfile import read_json
from graphdrivers.store.journal import JournalState

LOG = "_layers.json"
LOCK = "_layers.lock"


@dataclass(frozen=True)
class LayerRecord:
    id: str
    parent: str | None = None
    rw: bool = False
    fields: Mapping[str, Any] = field(default_factory=dict)   # a backend's own small dict

    def line(self) -> dict:
        line: dict[str, Any] = {"add": self.id, "parent": self.parent, "rw": self.rw}
        if self.fields:
            line["x"] = dict(self.fields)
        return line


def legacy_record(home: pathlib.Path, layer_id: str, fields: Mapping[str, Any] | None = None) -> LayerRecord:
    """A layer's record as homes kept it before this store: ``meta/<id>.json``, if any."""
    try:
        meta = read_json(home / "meta" / f"{layer_id}.json")
    except (FileNotFoundError, ValueError):
        meta = {}
    return LayerRecord(layer_id, meta.get("parent"), bool(meta.get("rw")), fields or {})


def _children_text(children: list[str]) -> str:
    return ", ".join(children[:5]) + (", ..." if len(children) > 5 else "")


class LayerStore(JournalState):
    """The records of one driver home (see the module docstring)."""

    WHAT = "layer records"

    def __init__(self, home: str | os.PathLike,
                 import_records: Callable[[], Iterable[LayerRecord]] = tuple):
        self._records: dict[str, LayerRecord] = {}
        self._children: dict[str, set[str]] = {}
        # a new home, or one from before the store: the backend's own records
        super().__init__(home, LOG, LOCK,
                         lambda: _import_lines(import_records()))

    # -- reading ------------------------------------------------------------
    def get(self, layer_id: str) -> LayerRecord | None:
        with self._mutex:           # _current() inlined: every operation looks once
            self._refresh()
            return self._records.get(layer_id)

    def require(self, layer_id: str, what: str = "layer") -> LayerRecord:
        record = self.get(layer_id)
        if record is None:
            raise LayerNotFound(f"{what} {layer_id} does not exist in {self.home}")
        return record

    def exists(self, layer_id: str) -> bool:
        return self.get(layer_id) is not None

    def ids(self) -> list[str]:
        with self._current():
            return sorted(self._records)

    def records(self) -> list[LayerRecord]:
        with self._current():
            return [self._records[i] for i in sorted(self._records)]

    def records_parents_first(self) -> list[LayerRecord]:
        """Every record, each after its parent."""
        with self._current():
            ordered: list[LayerRecord] = []
            stack = sorted((r for r in self._records.values() if r.parent is None),
                           key=lambda r: r.id, reverse=True)
            while stack:
                record = stack.pop()
                ordered.append(record)
                stack.extend(self._records[c] for c in sorted(self._children.get(record.id, ()),
                                                               reverse=True))
            reached = {r.id for r in ordered}       # a chain whose base is missing comes last
            return ordered + [self._records[i] for i in sorted(self._records.keys() - reached)]

    def children(self, layer_id: str) -> list[str]:
        with self._current():
            return sorted(self._children.get(layer_id, ()))

    def lineage(self, layer_id: str) -> list[LayerRecord]:
        """The layer's record, its parent's, and so on up to its base layer (one look)."""
        with self._current():
            chain = []
            record = self._records.get(layer_id)
            while record is not None:
                chain.append(record)
                record = self._records.get(record.parent) if record.parent else None
            return chain

    def orphans(self, present: Iterable[str]) -> list[str]:
        """Which of ``present`` (ids the backend has data for) have no record."""
        with self._current():
            return sorted(set(present) - self._records.keys())

    # -- changing -------------------------------------------------------------
    def add(self, record: LayerRecord) -> None:
        """Commit a new layer's record (its data is made and flushed already)."""
        with self._locked():
            self._refresh()
            if record.id in self._records:
                raise LayerExists(f"layer {record.id} already exists")
            if record.parent is not None and record.parent not in self._records:
                raise LayerNotFound(f"parent layer {record.parent} of {record.id} does not exist")
            self._commit([record.line()], undo=[{"del": record.id}])

    def update(self, layer_id: str, **fields: Any) -> LayerRecord:
        """Set backend fields of an existing layer (a value None drops the field)."""
        with self._locked():
            self._refresh()
            old = self._records.get(layer_id)
            if old is None:
                raise LayerNotFound(f"layer {layer_id} does not exist in {self.home}")
            merged = {k: v for k, v in {**old.fields, **fields}.items() if v is not None}
            new = LayerRecord(old.id, old.parent, old.rw, merged)
            self._commit([new.line()], undo=[old.line()])
            return new

    def check_removable(self, layer_id: str) -> None:
        """LayerInUse naming the children, if the layer has any (the rule for every driver:
        a child's diff and mounts need its parent)."""
        children = self.children(layer_id)
        if children:
            raise LayerInUse(f"layer {layer_id} has child layers ({_children_text(children)});"
                             " remove them first")

    def remove(self, layer_id: str) -> LayerRecord:
        """Drop a layer's record, before its data goes; refused while it has children."""
        with self._locked():
            self._refresh()
            record = self._records.get(layer_id)
            if record is None:
                raise LayerNotFound(f"layer {layer_id} does not exist in {self.home}")
            self.check_removable(layer_id)
            self._commit([{"del": layer_id}], undo=[record.line()])
            return record

    # -- the lines (journal.py) -------------------------------------------------
    def _clear(self) -> None:
        self._records.clear()
        self._children.clear()

    def _apply(self, line: dict) -> None:
        if "add" in line:
            record = LayerRecord(line["add"], line.get("parent"), bool(line.get("rw")),
                                 line.get("x") or {})
            self._unlink(record.id)
            self._records[record.id] = record
            if record.parent is not None:
                self._children.setdefault(record.parent, set()).add(record.id)
        elif "del" in line:
            self._unlink(line["del"])
            self._records.pop(line["del"], None)

    def _unlink(self, layer_id: str) -> None:
        old = self._records.get(layer_id)
        if old is not None and old.parent is not None:
            self._children.get(old.parent, set()).discard(layer_id)

    def _state_lines(self) -> list[dict]:
        return [self._records[i].line() for i in sorted(self._records)]

    def _count(self) -> int:
        return len(self._records)


def _import_lines(records: Iterable[LayerRecord]) -> list[dict]:
    by_id = {r.id: r for r in records}
    return [by_id[i].line() for i in sorted(by_id)]

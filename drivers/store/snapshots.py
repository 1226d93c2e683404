"""containerd's snapshot records, kept beside the layer records in a driver's home.

containerd names snapshots with arbitrary strings (``<namespace>/<n>/<key>``); each maps
to one layer of the driver, whose ids are restricted. ``<home>/_snapshots.json`` is a log
of the same kind as the layer store's (journal.py: one fdatasync'ed line per change,
shared by every process on the home, flock around read-modify-write):

    {"put": "<key>", "kind": "active"|"view"|"committed", "parent": "<key>"|null,
     "labels": {...}, "created": <ns>, "updated": <ns>, "layer": "<layer id>"}
    {"put": "<name>", ..., "from": "<key>"}     a commit: <key> becomes <name>, one line
    {"del": "<key>"}

A commit is one line, so a crash leaves the active snapshot or the committed one, never
both or neither. Crash order, as for layers: a new snapshot's layer is made first, then
its line is written; a remove writes its line first, then the layer goes. So the only
leftovers are snapshot layers without a record, which the snapshotter removes at start.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from typing import Mapping

from graphdrivers.errors import LayerExists, LayerInUse, LayerNotFound, WrongState
from graphdrivers.store.journal import JournalState

LOG = "_snapshots.json"
LOCK = "_snapshots.lock"
KINDS = ("view", "active", "committed")


class SnapshotNotFound(LayerNotFound):
    """No snapshot has this key (or name)."""


class SnapshotExists(LayerExists):
    """The key (or name) is taken."""


class SnapshotHasChildren(LayerInUse):
    """Snapshots are based on this one."""


@dataclass(frozen=True)
class Snapshot:
    key: str
    kind: str
    layer: str
    parent: str | None = None
    labels: Mapping[str, str] = field(default_factory=dict)
    created: int = 0            # ns since the epoch
    updated: int = 0

    def line(self) -> dict:
        return {"put": self.key, "kind": self.kind, "layer": self.layer, "parent": self.parent,
                "labels": dict(self.labels), "created": self.created, "updated": self.updated}


def _of(line: dict) -> Snapshot:
    if line["kind"] not in KINDS:
        raise ValueError(f"unknown snapshot kind {line['kind']!r}")
    return Snapshot(line["put"], line["kind"], line["layer"], line.get("parent"),
                    dict(line.get("labels") or {}), int(line["created"]), int(line["updated"]))


def _short(key: str) -> str:
    return key if len(key) <= 200 else key[:200] + "..."


class SnapshotStore(JournalState):
    WHAT = "snapshot records"

    def __init__(self, home: str | os.PathLike):
        self._snaps: dict[str, Snapshot] = {}
        self._children: dict[str, set[str]] = {}
        super().__init__(home, LOG, LOCK)

    # -- reading ------------------------------------------------------------
    def get(self, key: str) -> Snapshot | None:
        with self._current():
            return self._snaps.get(key)

    def require(self, key: str) -> Snapshot:
        with self._current():
            return self._require(key)

    def all(self) -> list[Snapshot]:
        with self._current():
            return [self._snaps[k] for k in sorted(self._snaps)]

    def children(self, key: str) -> list[str]:
        with self._current():
            return sorted(self._children.get(key, ()))

    def layers(self) -> set[str]:
        with self._current():
            return {s.layer for s in self._snaps.values()}

    # -- changing -------------------------------------------------------------
    def add(self, snap: Snapshot) -> None:
        """Record a new snapshot (its layer exists already)."""
        with self._locked():
            self._refresh()
            self._check_free(snap.key)
            if snap.parent is not None:
                self._require_committed(snap.parent)
            self._commit([snap.line()], undo=[{"del": snap.key}])

    def commit(self, key: str, name: str, labels: Mapping[str, str], now: int) -> Snapshot:
        """The active snapshot ``key`` becomes the committed ``name`` (same layer)."""
        with self._locked():
            self._refresh()
            old = self._require(key, "active snapshot")
            if old.kind != "active":
                raise WrongState(f"snapshot {_short(key)!r} is a {old.kind} snapshot; only an "
                                 "active one (made by Prepare) can be committed")
            self._check_free(name)
            new = Snapshot(name, "committed", old.layer, old.parent, dict(labels), now, now)
            self._commit([{**new.line(), "from": key}], undo=[{"del": name}, old.line()])
            return new

    def update_labels(self, key: str, labels: Mapping[str, str], now: int) -> Snapshot:
        with self._locked():
            self._refresh()
            old = self._require(key)
            new = replace(old, labels=dict(labels), updated=now)
            self._commit([new.line()], undo=[old.line()])
            return new

    def remove(self, key: str) -> Snapshot:
        """Drop a snapshot's record (before its layer goes); refused while it has children."""
        with self._locked():
            self._refresh()
            snap = self._require(key)
            children = sorted(self._children.get(key, ()))
            if children:
                names = ", ".join(map(repr, map(_short, children[:3])))
                more = f" and {len(children) - 3} more" if len(children) > 3 else ""
                raise SnapshotHasChildren(f"snapshot {_short(key)!r} has {len(children)} "
                                          f"child snapshot(s) ({names}{more}); remove them first")
            self._commit([{"del": key}], undo=[snap.line()])
            return snap

    def _check_free(self, key: str) -> None:
        if key in self._snaps:
            raise SnapshotExists(f"snapshot {_short(key)!r} already exists "
                                 f"({self._snaps[key].kind})")

    def _require(self, key: str, what: str = "snapshot") -> Snapshot:
        snap = self._snaps.get(key)
        if snap is None:
            raise SnapshotNotFound(f"{what} {_short(key)!r} does not exist")
        return snap

    def _require_committed(self, key: str) -> None:
        parent = self._require(key, "parent snapshot")
        if parent.kind != "committed":
            raise WrongState(f"parent {_short(key)!r} is a {parent.kind} snapshot; a parent "
                             "must be committed first")

    # -- the lines (journal.py) -------------------------------------------------
    def _clear(self) -> None:
        self._snaps.clear()
        self._children.clear()

    def _apply(self, line: dict) -> None:
        if "put" in line:
            snap = _of(line)
            if line.get("from") is not None:
                self._drop(line["from"])
            self._drop(snap.key)
            self._snaps[snap.key] = snap
            if snap.parent is not None:
                self._children.setdefault(snap.parent, set()).add(snap.key)
        elif "del" in line:
            self._drop(line["del"])
        else:
            raise ValueError("a line without put or del")

    def _drop(self, key: str) -> None:
        old = self._snaps.pop(key, None)
        if old is not None and old.parent is not None:
            self._children.get(old.parent, set()).discard(key)

    def _state_lines(self) -> list[dict]:
        return [self._snaps[k].line() for k in sorted(self._snaps)]

    def _count(self) -> int:
        return len(self._snaps)

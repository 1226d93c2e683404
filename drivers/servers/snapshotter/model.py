"""containerd's snapshot model on a graph driver: keys, kinds, commit by rename.

Every snapshot is one layer of the driver (ids ``snap-<hex>``; containerd's keys are
kept in the snapshot records, store/snapshots.py): Prepare makes a read-write layer
on the parent's layer, View a read-only one, Commit renames the record without
touching the data. What containerd mounts comes from the driver's LayerMounts
capability; what a driver holds for those mounts (devicemapper's own mount of the
device) is released when the snapshot is committed or its layer goes (``_release``).

Concurrency: one short model lock covers the checks and the set of keys in flight; the
slow part (making or deleting a layer) runs outside it, so Prepares of different keys
proceed in parallel. A key in flight is taken, and a parent with a Prepare in flight
counts as having a child. Crashes: see store/snapshots.py; ``recover`` removes the
snapshot layers a killed process left without a record (at start, under the home's
snapshotter lock, so no other snapshotter is making one).
"""
from __future__ import annotations

import contextlib
import logging
import secrets
import threading
import time
from typing import Iterator, Mapping

from graphdrivers import faults
from graphdrivers.capabilities import LayerMounts, MountSpec, Usage
from graphdrivers.driver import Driver
from graphdrivers.errors import InvalidRequest, LayerInUse, LayerNotFound, NotSupported, WrongState
from graphdrivers.store.snapshots import (Snapshot, SnapshotExists, SnapshotHasChildren,
                                          SnapshotStore)

log = logging.getLogger("graphdrivers.servers.snapshotter")

LAYER_PREFIX = "snap-"
MAX_KEY = 4096
POINTS = faults.register(
    "snapshotter",
    "snapshotter.prepare.after_layer",
    "snapshotter.prepare.after_record",
    "snapshotter.commit.before_record",
    "snapshotter.commit.after_record",
    "snapshotter.remove.after_record")


def now_ns() -> int:
    return time.time_ns()


def check_key(key: str, what: str = "key") -> str:
    if not isinstance(key, str) or not key:
        raise InvalidRequest(f"the snapshot {what} is empty; every call names a snapshot")
    if len(key.encode()) > MAX_KEY or "\0" in key:
        raise InvalidRequest(f"the snapshot {what} is longer than {MAX_KEY} bytes or holds NUL")
    return key


def check_labels(labels: Mapping[str, str]) -> dict[str, str]:
    for k, v in labels.items():
        if not k:
            raise InvalidRequest("a label with an empty name")
        if len(k.encode()) + len(v.encode()) > 4096:
            raise InvalidRequest(f"label {k[:60]!r}: key and value exceed 4096 bytes")
    return dict(labels)


class Snapshotter:
    def __init__(self, driver: Driver):
        if not isinstance(driver, LayerMounts):
            raise NotSupported(f"the {driver.name} driver cannot describe its mounts for a "
                               "caller (it lacks the LayerMounts capability), so containerd "
                               "cannot use it")
        self.driver = driver
        self.store = SnapshotStore(driver.home)
        self._lock = threading.Lock()
        self._inflight: dict[str, str | None] = {}     # key -> parent, being made or removed

    # -- the guard ------------------------------------------------------------
    @contextlib.contextmanager
    def _claim(self, key: str, parent: str | None = None) -> Iterator[None]:
        with self._lock:
            if key in self._inflight:
                raise SnapshotExists(f"snapshot {key!r} is being created or removed by "
                                     "another call right now")
            self._inflight[key] = parent
        try:
            yield
        finally:
            with self._lock:
                self._inflight.pop(key, None)

    def _busy_parent(self, key: str) -> bool:
        with self._lock:
            return key in self._inflight.values()

    # -- creating --------------------------------------------------------------
    def create(self, kind: str, key: str, parent: str, labels: Mapping[str, str]) -> list[MountSpec]:
        check_key(key)
        labels = check_labels(labels)
        parent_key = parent or None
        with self._claim(key, parent_key):
            if self.store.get(key) is not None:
                raise SnapshotExists(f"snapshot {key!r} already exists")
            base = None
            if parent_key is not None:
                base = self.store.require(parent_key)
                if base.kind != "committed":
                    raise WrongState(f"parent {parent_key!r} is a {base.kind} snapshot; commit "
                                     "it before basing snapshots on it")
            layer = LAYER_PREFIX + secrets.token_hex(12)
            self.driver.create(layer, base.layer if base else None, rw=(kind == "active"))
            try:
                faults.point("snapshotter.prepare.after_layer")
                mounts = self.driver.layer_mounts(layer, readonly=(kind == "view"))
                stamp = now_ns()
                self.store.add(Snapshot(key, kind, layer, parent_key, labels, stamp, stamp))
            except BaseException:
                if self.store.get(key) is None or self.store.get(key).layer != layer:
                    self._release(layer)
                    with contextlib.suppress(Exception):
                        self.driver.remove(layer)
                raise
            faults.point("snapshotter.prepare.after_record")
            return mounts

    def commit(self, name: str, key: str, labels: Mapping[str, str]) -> Snapshot:
        check_key(name, "name")
        check_key(key)
        labels = check_labels(labels)
        with self._claim(name):
            faults.point("snapshotter.commit.before_record")
            snap = self.store.commit(key, name, labels, now_ns())
            faults.point("snapshotter.commit.after_record")
            self._release(snap.layer)     # committed: nothing mounts it any more
            return snap

    # -- removing --------------------------------------------------------------
    def remove(self, key: str) -> None:
        check_key(key)
        with self._claim(key):
            if self._busy_parent(key):
                raise SnapshotHasChildren(f"snapshot {key!r} has a child being prepared now; "
                                          "remove it after that")
            snap = self.store.remove(key)
            faults.point("snapshotter.remove.after_record")
            self._remove_layer(snap.layer)

    def _release(self, layer: str) -> None:
        """Let the driver drop what it holds for containerd's mounts of ``layer``; a
        failure is logged (the layer's remove then says what still holds it)."""
        try:
            self.driver.release_layer_mounts(layer)
        except Exception as exc:  # noqa: BLE001
            log.warning("releasing the mounts of snapshot layer %s: %s", layer, exc)

    def _remove_layer(self, layer: str) -> None:
        self._release(layer)
        try:
            self.driver.remove(layer)
        except LayerNotFound:
            pass
        except Exception as exc:     # the record is gone: Cleanup or the next start retries
            log.warning("snapshot layer %s stays until the next cleanup: %s", layer, exc)

    def cleanup(self) -> int:
        """Remove snapshot layers that no record names (a crash's, or a failed remove's);
        children before parents. Returns how many went."""
        removed = 0
        while True:
            with self._lock:
                busy = set(self._inflight)
            owned = self.store.layers()
            doomed = [layer for layer in self.driver.layers()
                      if layer.startswith(LAYER_PREFIX) and layer not in owned]
            progress = False
            for layer in doomed:
                if busy:        # a Prepare in flight has a layer without a record yet
                    return removed
                self._release(layer)
                try:
                    self.driver.remove(layer)
                except LayerInUse:
                    continue     # its children first
                except LayerNotFound:
                    pass
                removed += 1
                progress = True
            if not progress:
                return removed

    # -- reading ------------------------------------------------------------------
    def mounts(self, key: str) -> list[MountSpec]:
        snap = self.store.require(check_key(key))
        if snap.kind == "committed":
            raise WrongState(f"snapshot {key!r} is committed; mount it through a View or "
                             "a Prepare on it")
        return self.driver.layer_mounts(snap.layer, readonly=(snap.kind == "view"))

    def stat(self, key: str) -> Snapshot:
        return self.store.require(check_key(key))

    def update(self, key: str, labels: Mapping[str, str], paths: list[str]) -> Snapshot:
        snap = self.store.require(check_key(key))
        new = dict(snap.labels)
        if not paths:
            new = dict(labels)
        for path in paths:
            if path == "labels":
                new = dict(labels)
            elif path.startswith("labels."):
                label = path[len("labels."):]
                if label in labels:
                    new[label] = labels[label]
                else:
                    new.pop(label, None)
            else:
                raise InvalidRequest(f"cannot update field {path!r}: only labels and "
                                     "labels.<key> can change")
        return self.store.update_labels(key, check_labels(new), now_ns())

    def list(self) -> list[Snapshot]:
        return self.store.all()

    def usage(self, key: str) -> Usage:
        snap = self.store.require(check_key(key))
        return self.driver.layer_usage(snap.layer)

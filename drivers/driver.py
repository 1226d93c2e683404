"""The interface every storage driver implements (Docker's graphdriver.Driver), as a template.

The public methods do the bookkeeping once, for every backend: they validate ids,
take the per-id locks (shared by the processes on a home), consult the layer store
(store/layers.py: exists, parent, children, LayerExists/LayerNotFound/LayerInUse),
and turn an OSError into a DriverError (NoSpace for ENOSPC/EDQUOT) in one place.
A backend implements the storage itself in small protected hooks:

    _create_options(storage_opt, rw)           parse per-layer options (no state yet)
    _create_data(record, parent, options)      make the layer's data; return backend fields
    _data_present(record) / _rebuild_data(record, parent)   after a power cut (below)
    _busy(id) / _prepare_remove(id)            refuse or get ready before the record goes
    _remove_data(id)                           delete the data (also a crash's orphans)
    _mount_data(record, label) / _unmount_data(id, record)
    _metadata(record), _data_ids(), _import_records()
    _layer_options(record)                     the per-layer options it was made with (migrate)
    _diff/_changes/_diff_size/_apply_diff      (NaiveDiff provides them)

Durability: a create or remove flushes once, the layer store's line. The data of a
create is not flushed before its record: a power cut can keep the record and lose the
data (never the other way round, which would be an orphan). The first load after a boot,
or after the home's filesystem was mounted again, looks at every record and rebuilds
the data of a layer that lost it as its create made it (an empty layer, or a snapshot
of its parent); within one boot the page cache keeps everything a killed process wrote,
so later loads skip that look.

Order of locks: the id lock of a layer, then the store's home lock (held only inside
one store call). A create locks its own id (a backend may then take the parent's, never
the other way round): a parent removed meanwhile makes the record's commit fail (the
store checks the parent under its lock), and the new data goes.
"""
from __future__ import annotations

import abc
import contextlib
import enum
import functools
import logging
import os
import pathlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, BinaryIO, Iterable, Iterator, Mapping

from graphdrivers import faults
from graphdrivers.errors import LayerExists, LayerInUse, LayerNotFound, from_os_error
from graphdrivers.kernel.mount import mount_id
from graphdrivers.layerid import check_id, is_valid_id
from graphdrivers.options import Option
from graphdrivers.store.holds import HomeRun
from graphdrivers.store.layers import LayerRecord, LayerStore
from graphdrivers.store.locks import IdLocks

if TYPE_CHECKING:
    from graphdrivers.check.findings import Finding

log = logging.getLogger("graphdrivers.driver")


class ChangeKind(enum.IntEnum):
    MODIFY = 0
    ADD = 1
    DELETE = 2


@dataclass(frozen=True)
class Change:
    path: str            # absolute inside the layer: "/etc/hosts"
    kind: ChangeKind

    def __str__(self) -> str:
        return f"{'CAD'[self.kind]} {self.path}"


@contextlib.contextmanager
def os_errors(doing: str) -> Iterator[None]:
    """Raise what from_os_error makes of an OSError inside the block."""
    try:
        yield
    except OSError as exc:
        raise from_os_error(exc, doing) from exc


class Driver(abc.ABC):
    """A storage driver rooted at ``home`` (``<load home>/<name>``).

    Subclasses set ``name`` and ``OPTIONS`` (the driver-wide options they
    accept, with Docker's prefixed spelling), raise NotSupported from
    ``__init__`` (or ``probe``) when they cannot run on this machine, and call
    ``_open_store()`` at the end of ``__init__``.
    """

    name: str = ""
    OPTIONS: Mapping[str, Option] = {}
    layer_store: LayerStore

    def __init__(self, home: str | os.PathLike, options: Mapping[str, str] | None = None):
        self.home = pathlib.Path(home)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.name and cls.create is Driver.create:   # the template's crash points
            faults.register(cls.name, f"{cls.name}.create.after_data",
                            f"{cls.name}.remove.after_record")

    @functools.cached_property
    def home_run(self) -> HomeRun:
        """The home's run directory: mount holds and id locks shared by its processes."""
        return HomeRun(self.home)

    @functools.cached_property
    def _locks(self) -> IdLocks:
        return IdLocks(self.home_run)

    def release(self) -> None:
        """Let go of this instance without unmounting anything, as if its process ended:
        another instance or process adopts its mounts (a server handing over to the next).
        Do not use the instance afterwards."""
        self.home_run.release_all()

    @classmethod
    def probe(cls, home: pathlib.Path) -> None:
        """Raise NotSupported if this driver cannot work for ``home``; cheap, no state."""

    # -- the store ----------------------------------------------------------
    def _open_store(self) -> None:
        """Open the layer store (built from the backend's old records on a home from
        before it) and delete what a crash left: layer data without a record."""
        # what this load's recovery did, for `graphdrivers check` to report
        self.load_recovery: dict[str, list[str]] = {"removed": [], "rebuilt": []}
        with os_errors(f"open the layer records in {self.home}"):
            self.layer_store = LayerStore(self.home, self._import_records)
            for orphan in self.layer_store.orphans(self._data_ids()):
                with self._locks.hold(orphan):      # a live process may be creating it
                    if not self.layer_store.exists(orphan):
                        self._remove_data(orphan)
                        self.load_recovery["removed"].append(orphan)
            self.home_run.remembered(f"rebuilt-{mount_id(self.home)}", self._rebuild_lost)

    def _rebuild_lost(self) -> dict[str, list[str]]:
        """Rebuild the data of recorded layers that a power cut lost (see the module
        docstring), parents before children."""
        rebuilt = []
        for record in self.layer_store.records_parents_first():
            if self._data_present(record):
                continue
            with self._locks.hold(record.id):
                current = self.layer_store.get(record.id)
                if current is None or self._data_present(current):
                    continue
                parent = self.layer_store.get(current.parent) if current.parent else None
                self._rebuild_data(current, parent)
                rebuilt.append(current.id)
                self.load_recovery["rebuilt"].append(current.id)
        if rebuilt:
            log.warning("%s: rebuilt %d layer(s) whose data a power cut lost (their records "
                        "were on disk; the data is as their create made it): %s", self.home,
                        len(rebuilt), ", ".join(rebuilt[:20]))
        return {"rebuilt": rebuilt}

    def _record(self, id: str, what: str = "layer") -> LayerRecord:
        return self.layer_store.require(id, what)

    # -- layers -------------------------------------------------------------
    def create(self, id: str, parent: str | None = None, *, rw: bool = False,
               mount_label: str = "", storage_opt: Mapping[str, str] | None = None) -> None:
        check_id(id)
        if parent is not None:
            check_id(parent, "parent layer id")
        options = self._create_options(storage_opt, rw)
        with self._locks.hold(id):
            if self.layer_store.exists(id):
                raise LayerExists(f"layer {id} already exists")
            base = self._record(parent, "parent layer") if parent is not None else None
            record = LayerRecord(id, parent, bool(rw))
            try:
                with os_errors(f"create layer {id}"):
                    fields = self._create_data(record, base, options, mount_label)
                    faults.point(f"{self.name}.create.after_data")
                    self.layer_store.add(LayerRecord(id, parent, bool(rw), fields or {}))
            except BaseException:
                if not self.layer_store.exists(id):      # never another's committed layer
                    with contextlib.suppress(OSError):   # else the next load deletes it
                        self._remove_data(id)
                if parent is not None and not self.layer_store.exists(parent):
                    raise LayerNotFound(f"parent layer {parent} of {id} was removed "
                                        "while the layer was made") from None
                raise

    def remove(self, id: str) -> None:
        check_id(id)
        with self._locks.hold(id):
            self._record(id)
            busy = self._busy(id)
            if busy:
                raise LayerInUse(f"layer {id} is {busy}; unmount it before removing it")
            self.layer_store.check_removable(id)
            with os_errors(f"remove layer {id}"):
                self._prepare_remove(id)        # may still refuse: the layer stays whole
                self.layer_store.remove(id)           # the record first: from here on it is gone
                faults.point(f"{self.name}.remove.after_record")
                self._remove_data(id)
            self.home_run.clear_abandoned(id)
            self.home_run.forget_lock(id)

    def mount(self, id: str, mount_label: str = "") -> pathlib.Path:
        check_id(id)
        with self._locks.hold(id):
            record = self._record(id)
            with os_errors(f"mount layer {id}"):
                return self._mount_data(record, mount_label)

    def unmount(self, id: str) -> None:
        check_id(id)
        with self._locks.hold(id):
            record = self.layer_store.get(id)
            with os_errors(f"unmount layer {id}"):
                self._unmount_data(id, record)

    def exists(self, id: str) -> bool:
        return is_valid_id(id) and self.layer_store.exists(id)

    def layers(self) -> list[str]:
        """Ids of every layer this driver holds (for `layer ls`)."""
        return self.layer_store.ids()

    def parent(self, id: str) -> str | None:
        """The parent a layer was created on, or None for a base layer."""
        return self._record(check_id(id)).parent

    def info(self, id: str) -> dict[str, Any]:
        """The layer as `layer ls` shows it: id, parent, whether it was created
        read-write, and who holds it mounted (in words, None when nobody: this process
        and the other live processes on the home, by pid)."""
        record = self._record(check_id(id))
        # no id lock: a listing is a snapshot, and a lock per layer would make `layer ls`
        # of a big home create a lock file for every layer
        return {"id": id, "parent": record.parent, "rw": record.rw, "mounted_by": self._busy(id)}

    def infos(self) -> list[dict[str, Any]]:
        """``info`` of every layer, sorted by id, from one look at the holds."""
        with self.home_run.one_look():
            return [self.info(layer_id) for layer_id in self.layers()]

    def layer_options(self, id: str) -> dict[str, str]:
        """The per-layer storage options that make a layer like this one again (a size
        limit given at its create, in this driver's spelling); {} when it took none.
        ``graphdrivers migrate`` passes them to the target driver's create."""
        return self._layer_options(self._record(check_id(id)))

    def check_layer_options(self, storage_opt: Mapping[str, str] | None, rw: bool) -> None:
        """Raise InvalidOption when ``create`` would refuse these per-layer options."""
        self._create_options(storage_opt, rw)

    def space_available(self) -> int | None:
        """Bytes new layer data can still take (None: unknown); the home's filesystem,
        unless the backend stores layers elsewhere (a thin pool)."""
        with os_errors(f"measure the free space of {self.home}"):
            st = os.statvfs(self.home)
        return st.f_bavail * st.f_frsize

    def metadata(self, id: str) -> dict[str, str]:
        record = self._record(check_id(id))
        with os_errors(f"read the metadata of layer {id}"):
            return self._metadata(record)

    @abc.abstractmethod
    def status(self) -> list[tuple[str, str]]: ...

    def status_notes(self) -> dict[str, str]:
        """Status rows whose meaning differs from Docker's, with what they mean here
        (``graphdrivers status`` prints them under the rows). None by default."""
        return {}

    @abc.abstractmethod
    def cleanup(self) -> None:
        """Release every mount this instance holds; a backend's cleanup ends with this
        one, which closes the lock files kept open between operations (an instance
        loaded and cleaned up again and again would otherwise keep a file per layer)."""
        self.home_run.close_idle_locks()

    # -- diffs ----------------------------------------------------------
    def _diff_args(self, id: str, parent: str | None) -> tuple[LayerRecord, str | None]:
        """Both ids checked and existing; the parent to compare with (the layer's own if None)."""
        check_id(id)
        if parent is not None:
            check_id(parent, "parent layer id")
        record = self._record(id)
        if parent is not None:
            self._record(parent, "parent layer")
        return record, record.parent if parent is None else parent

    def diff(self, id: str, parent: str | None = None) -> BinaryIO:
        record, base = self._diff_args(id, parent)
        with os_errors(f"diff layer {id}"):
            return self._diff(record, base)

    def changes(self, id: str, parent: str | None = None) -> list[Change]:
        record, base = self._diff_args(id, parent)
        with os_errors(f"list the changes of layer {id}"):
            return self._changes(record, base)

    def apply_diff(self, id: str, parent: str | None, diff: BinaryIO) -> int:
        record, base = self._diff_args(id, parent)
        with os_errors(f"apply a diff to layer {id}"), self.home_run.in_flight(id):
            return self._apply_diff(record, base, diff)   # a kill inside: `check` finds it

    def diff_size(self, id: str, parent: str | None = None) -> int:
        record, base = self._diff_args(id, parent)
        with os_errors(f"measure the diff of layer {id}"):
            return self._diff_size(record, base)

    # -- hooks a backend implements -------------------------------------
    def _create_options(self, storage_opt: Mapping[str, str] | None, rw: bool) -> Any:
        """Parse and check per-layer options before anything is made (InvalidOption)."""
        return None

    def _create_data(self, record: LayerRecord, parent: LayerRecord | None, options: Any,
                     mount_label: str) -> Mapping[str, Any] | None:
        """Make the layer's data, complete; return backend fields for its record, enough to
        rebuild it. No flush as a rule (the record's is the only one: data lost to a power
        cut is rebuilt at the next load), but data that a cut could leave partial and a
        load could not tell from complete (vfs's copy of the parent) is flushed here. On
        an exception the template calls _remove_data."""
        raise NotImplementedError

    def _data_present(self, record: LayerRecord) -> bool:
        """Whether a recorded layer still has its data (asked after a boot; cheap: a stat)."""
        return True

    def _rebuild_data(self, record: LayerRecord, parent: LayerRecord | None) -> None:
        """Make the data of a recorded layer again, as its create did, from its record."""
        raise NotImplementedError

    def _busy(self, id: str) -> str | None:
        """Who holds the layer mounted, in words for LayerInUse; None when nobody."""
        return None

    def _prepare_remove(self, id: str) -> None:
        """What may fail before the record goes (a stale mount to drop, say)."""

    def _remove_data(self, id: str) -> None:
        """Delete the layer's data, whatever state a crash left it in; no error if none."""
        raise NotImplementedError

    def _mount_data(self, record: LayerRecord, mount_label: str) -> pathlib.Path:
        raise NotImplementedError

    def _unmount_data(self, id: str, record: LayerRecord | None) -> None:
        """Drop one reference (record None: the layer is gone, only counts are left)."""
        raise NotImplementedError

    def _metadata(self, record: LayerRecord) -> dict[str, str]:
        return {}

    def _layer_options(self, record: LayerRecord) -> dict[str, str]:
        """The per-layer options ``create`` took for this layer (see layer_options)."""
        return {}

    def _data_ids(self) -> Iterable[str]:
        """Ids the backend has data for, by its own naming scheme (for crash recovery)."""
        return ()

    def _import_records(self) -> Iterable[LayerRecord]:
        """Records of a home written before the layer store (its first load)."""
        return ()

    # -- `graphdrivers check` (drivers/check/) ------------------------------
    def check_findings(self) -> list[Finding]:
        """The backend's own inspections (its naming scheme's leftovers, kernel objects:
        subvolumes, qgroups, links, thin devices), each Finding carrying its repair.
        The framework already compares records with ``_data_present``/``_data_ids``,
        looks for broken parents, abandoned applies, leaked mounts and loop devices."""
        return []

    def _quarantine_data(self, id: str, dest: pathlib.Path) -> None:
        """Move whatever data layer ``id`` has into ``dest`` (a new path in the home's
        quarantine directory, on the home's filesystem), so that no layer name points
        at it any more; nothing is deleted. No error when the layer has no data."""
        raise NotImplementedError(f"{self.name} cannot quarantine a layer's data")

    def _mount_layer(self, mountpoint: str) -> str | None:
        """The layer whose mount ``mountpoint`` is, by the backend's layout (None: not a
        layer's): `check` takes that id's lock before it drops a leaked mount."""
        return None

    def _diff(self, record: LayerRecord, parent: str | None) -> BinaryIO:
        raise NotImplementedError

    def _changes(self, record: LayerRecord, parent: str | None) -> list[Change]:
        raise NotImplementedError

    def _apply_diff(self, record: LayerRecord, parent: str | None, diff: BinaryIO) -> int:
        raise NotImplementedError

    def _diff_size(self, record: LayerRecord, parent: str | None) -> int:
        raise NotImplementedError

    # -- context manager ------------------------------------------------
    def __enter__(self) -> "Driver":
        return self

    def __exit__(self, *exc: object) -> None:
        self.cleanup()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} at {self.home}>"

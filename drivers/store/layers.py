"""The layer store: every layer's record, for every driver, shared by every process on a home.

One file per driver home, ``<home>/_layers.json`` (JSON lines; the ``_`` keeps it apart
from layer ids, which start with a letter or digit: overlay2 keeps its layers beside it):

    {"v": 1}                                                   header
    {"add": "<id>", "parent": "<id>"|null, "rw": bool, "x": {...}}  a layer (x: backend fields)
    {"del": "<id>"}                                            that layer was removed

It is a log, as a database's journal: a change is one line appended and fdatasync'ed, so
a create or remove costs one flush for its record (a whole-file rewrite would cost two).
When the log holds many more lines than layers, the next change rewrites it whole instead
(write-temp, fsync, rename, fsync dir). A crash inside an append leaves a torn last line:
readers ignore it, the next writer cuts it off. Space for appends is reserved ahead
(fallocate), so a remove still gets its record written on a full disk.

Across processes: a writer holds flock(``<home>/_layers.lock``) only around
read-modify-write of the records; the long part of an operation runs under the per-id
locks (locks.py), outside it. Readers take no lock: one stat per operation tells whether
another process changed the file (inode, mtime, size); then they read what was appended,
or the whole file when it was replaced. The parent and children index is in memory.

The crash rule, the same for every backend: create = the backend makes the data, then
the record is committed; remove = the record goes first, then the data. After a crash
the only leftovers are data without a record, which the driver deletes when it loads
(``orphans``). A home written before this store existed has no log: the first load
builds it from the backend's own records (``import_records``).
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import pathlib
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Mapping

from graphdrivers.errors import DriverError, LayerExists, LayerInUse, LayerNotFound
from graphdrivers.kernel.fallocate import reserve
from graphdrivers.store.atomicfile import read_json, remove_stale_temps, write_atomic

LOG = "_layers.json"
LOCK = "_layers.lock"
_VERSION = 1
_SLACK = 64 << 10          # bytes reserved past the end for appends
_COMPACT_MIN = 256         # never rewrite a log shorter than this many lines


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


class LayerStore:
    """The records of one driver home (see the module docstring)."""

    def __init__(self, home: str | os.PathLike,
                 import_records: Callable[[], Iterable[LayerRecord]] = tuple):
        self.home = os.fspath(home)
        self._log = os.path.join(self.home, LOG)
        self._lockfile = os.path.join(self.home, LOCK)
        self._mutex = threading.RLock()       # flock does not exclude threads of one process
        self._records: dict[str, LayerRecord] = {}
        self._children: dict[str, set[str]] = {}
        self._seen: tuple[int, int] | None = None   # (inode, bytes parsed)
        self._lines = 0
        with self._locked():
            # nobody writes while we hold the flock: a temp file now is a dead writer's
            remove_stale_temps(self.home, prefix=f".{LOG}.tmp-")
            if not os.path.exists(self._log):       # a new home, or one from before the store
                self._rewrite({r.id: r for r in import_records()})
            self._refresh()

    # -- reading ------------------------------------------------------------
    def get(self, layer_id: str) -> LayerRecord | None:
        with self._mutex:
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
        with self._mutex:
            self._refresh()
            return sorted(self._records)

    def records(self) -> list[LayerRecord]:
        with self._mutex:
            self._refresh()
            return [self._records[i] for i in sorted(self._records)]

    def children(self, layer_id: str) -> list[str]:
        with self._mutex:
            self._refresh()
            return sorted(self._children.get(layer_id, ()))

    def lineage(self, layer_id: str) -> list[LayerRecord]:
        """The layer's record, its parent's, and so on up to its base layer (one look)."""
        with self._mutex:
            self._refresh()
            chain = []
            record = self._records.get(layer_id)
            while record is not None:
                chain.append(record)
                record = self._records.get(record.parent) if record.parent else None
            return chain

    def orphans(self, present: Iterable[str]) -> list[str]:
        """Which of ``present`` (ids the backend has data for) have no record."""
        with self._mutex:
            self._refresh()
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
            self._commit([record.line()])

    def update(self, layer_id: str, **fields: Any) -> LayerRecord:
        """Set backend fields of an existing layer (a value None drops the field)."""
        with self._locked():
            self._refresh()
            old = self._records.get(layer_id)
            if old is None:
                raise LayerNotFound(f"layer {layer_id} does not exist in {self.home}")
            merged = {k: v for k, v in {**old.fields, **fields}.items() if v is not None}
            new = LayerRecord(old.id, old.parent, old.rw, merged)
            self._commit([new.line()])
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
            self._commit([{"del": layer_id}])
            return record

    # -- the file ---------------------------------------------------------------
    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """This process's mutex, then the home's flock (opened per use: a forked child
        must not share the lock with its parent)."""
        with self._mutex:
            fd = os.open(self._lockfile, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                yield
            finally:
                os.close(fd)

    def _refresh(self) -> None:
        """Catch up with the file, if anyone changed it since we last looked (one stat)."""
        try:
            st = os.stat(self._log)
        except FileNotFoundError:
            if self._seen is not None:      # nobody deletes it; a restored backup may
                self._reset()
            return
        if self._seen is not None and self._seen[0] == st.st_ino:
            if st.st_size == self._seen[1]:
                return
            if st.st_size > self._seen[1]:
                self._read(st.st_ino, self._seen[1])
                return
        self._reset()
        self._read(st.st_ino, 0)

    def _reset(self) -> None:
        self._records.clear()
        self._children.clear()
        self._seen = None
        self._lines = 0

    def _read(self, inode: int, offset: int) -> None:
        with open(self._log, "rb") as f:
            if os.fstat(f.fileno()).st_ino != inode:    # replaced between stat and open
                self._reset()
                inode, offset = os.fstat(f.fileno()).st_ino, 0
            f.seek(offset)
            data = f.read()
        end = data.rfind(b"\n") + 1        # a torn last line is not a record (yet)
        for number, raw in enumerate(data[:end].splitlines(), 1):
            if raw.strip():
                try:
                    self._apply(json.loads(raw))
                except (ValueError, KeyError, TypeError, AttributeError) as exc:
                    raise DriverError(
                        f"the layer records {self._log} are damaged after byte {offset} "
                        f"(line {number} of the unread part: {exc}); restore the file from a "
                        "backup or remove the home") from None
        self._seen = (inode, offset + end)

    def _apply(self, line: dict) -> None:
        self._lines += 1
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

    def _commit(self, lines: list[dict]) -> None:
        """Write ``lines`` (under the flock, after _refresh): appended, or a fresh file."""
        if self._lines >= _COMPACT_MIN and self._lines > 2 * len(self._records):
            for line in lines:
                self._apply(line)
            try:
                self._rewrite(dict(self._records))
            except BaseException:
                self._reset()           # the next look rereads what the disk has
                raise
            return
        data = b"".join(json.dumps(line, sort_keys=True).encode() + b"\n" for line in lines)
        fd = os.open(self._log, os.O_WRONLY | os.O_CLOEXEC)
        try:
            st = os.fstat(fd)
            end = self._seen[1] if self._seen else st.st_size
            if st.st_size != end:           # a writer died inside its append
                os.ftruncate(fd, end)
            view = memoryview(data)
            offset = end
            while view:
                n = os.pwrite(fd, view, offset)
                view, offset = view[n:], offset + n
            os.fdatasync(fd)
            if st.st_blocks * 512 < offset + _SLACK // 4:
                reserve(fd, offset + _SLACK)
        except BaseException:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, end)       # leave no half line of ours behind
            raise
        finally:
            os.close(fd)
        for line in lines:
            self._apply(line)
        self._seen = (st.st_ino, offset)

    def _rewrite(self, records: dict[str, LayerRecord]) -> None:
        lines = [{"v": _VERSION}] + [records[i].line() for i in sorted(records)]
        data = b"".join(json.dumps(line, sort_keys=True).encode() + b"\n" for line in lines)
        write_atomic(self._log, data, mode=0o600, reserve=len(data) + _SLACK)
        self._reset()
        self._read(os.stat(self._log).st_ino, 0)

"""The vfs driver: a layer is a plain directory, a child starts as a full copy.

State under ``home`` (``<load home>/vfs``):

    _layers.json     every layer's record (the layer store, store/layers.py)
    dir/<id>/        the layer's root (0755, 0:0)
    tmp/             layers being created or removed; anything here after a
                     crash is garbage and is deleted by the next load()

A layer is made in ``tmp/``, renamed into ``dir/`` when complete, and then
recorded; it leaves by dropping the record, then a rename into ``tmp/``. So a
process killed at any point leaves a whole layer or data without a record,
which the next load deletes. (A kill inside apply_diff leaves a half-applied
layer, which can be removed and created again, as in Docker.) Homes from
before the store kept ``meta/<id>.json`` ({"parent": ..., "rw": ...}); the
first load moves those into the store.
"""
from __future__ import annotations

import contextlib
import os
import pathlib
import shutil
import uuid
from typing import Any, Iterable, Mapping

from graphdrivers import faults
from graphdrivers.kernel import mount as mnt
from graphdrivers.kernel.statfs import fs_name
from graphdrivers.kernel import sync
from graphdrivers.vfs.copy import copy_tree
from graphdrivers.check.findings import DATA_WITHOUT_LAYER, Finding
from graphdrivers.capabilities import DiffFromChanges, LayerMounts, MountSpec, Usage
from graphdrivers.driver import Driver, os_errors
from graphdrivers.errors import InvalidOption
from graphdrivers.layerid import check_id, is_valid_id
from graphdrivers.naivediff import NaiveDiff
from graphdrivers.options import Option, format_size, parse_options, parse_size
from graphdrivers.store.layers import LayerRecord, legacy_record
from graphdrivers.store.refcount import RefCounter
from graphdrivers.usage import tree_usage
from graphdrivers.vfs.quota import quota_control


faults.register(
    "vfs",
    "vfs.create.after_mkdir",
    "vfs.create.after_copy",
    "vfs.create.after_rename",
    "vfs.remove.after_rename")

class VfsDriver(NaiveDiff, DiffFromChanges, LayerMounts, Driver):
    name = "vfs"
    # Docker's vfs takes ``size`` driver-wide too: the default quota of read-write layers
    OPTIONS: Mapping[str, Option] = {
        "size": Option(parse_size, 0, "default quota of read-write layers (needs project quotas)")}
    LAYER_OPTIONS: Mapping[str, Option] = {
        "size": Option(parse_size, 0, "quota of a read-write layer (needs project quotas)")}

    def __init__(self, home: str | os.PathLike, options: Mapping[str, str] | None = None):
        super().__init__(home, options)
        self._default_size = parse_options(options, self.OPTIONS, what="vfs driver option")["size"]
        self._dir = self.home / "dir"
        self._dir_s = str(self._dir)
        self._tmp = self.home / "tmp"
        for path in (self._dir, self._tmp):
            path.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._refs = RefCounter(lambda _path: False, self.home_run)   # never a real mount
        self._quota = None
        self._quota_reason = ""
        if self._default_size:      # refused at load, as overlay2.size is, not at the first create
            self._quota, self._quota_reason = quota_control(self._dir)
            if self._quota is None:
                raise InvalidOption(f"vfs driver option size={options.get('size')}: "
                                    f"{self._quota_reason}")
        self._recover()
        self._open_store()
        shutil.rmtree(self.home / "meta", ignore_errors=True)   # old records, in the store now

    def _recover(self) -> None:
        """Delete what a crashed create/remove left in tmp/ (only dead processes' work)."""
        for entry in os.scandir(self._tmp):
            pid = entry.name.rsplit(".", 2)[-2] if entry.name.count(".") >= 2 else ""
            if pid.isdigit() and _alive(int(pid)) and int(pid) != os.getpid():
                continue
            _rmtree(entry.path)

    def _import_records(self) -> Iterable[LayerRecord]:
        for layer_id in self._data_ids():
            yield legacy_record(self.home, layer_id)

    def _data_ids(self) -> list[str]:
        # directories only: a file with a layer's name is no layer's data (check reports it)
        return [e.name for e in os.scandir(self._dir)
                if is_valid_id(e.name) and e.is_dir(follow_symlinks=False)]

    # -- paths ---------------------------------------------------------------
    def _layer(self, id: str) -> pathlib.Path:
        return self._dir / id

    def _staging(self, id: str, what: str) -> pathlib.Path:
        return self._tmp / f"{id}-{what}-{uuid.uuid4().hex[:8]}.{os.getpid()}.tmp"

    # -- hooks of the Driver template ------------------------------------------
    def _create_options(self, storage_opt: Mapping[str, str] | None, rw: bool) -> int:
        if not storage_opt:
            return self._default_size if rw else 0
        if not rw:
            raise InvalidOption("--storage-opt is not supported for vfs on read-only layers; "
                                "only read-write (container) layers take a size")
        opts = parse_options(storage_opt, self.LAYER_OPTIONS, what="vfs layer storage option")
        size = opts["size"]
        if size:
            if self._quota is None and not self._quota_reason:
                self._quota, self._quota_reason = quota_control(self._dir)
            if self._quota is None:
                raise InvalidOption(f"storage option size={storage_opt.get('size')}: "
                                    f"{self._quota_reason}")
        return size

    def _create_data(self, record: LayerRecord, parent: LayerRecord | None, size: int,
                     mount_label: str) -> dict[str, int]:
        stage = self._staging(record.id, "new")
        try:
            os.mkdir(stage, 0o755)
            faults.point("vfs.create.after_mkdir")
            os.chmod(stage, 0o755)
            if os.geteuid() == 0:
                os.chown(stage, 0, 0)
            if size:
                self._quota.set_quota(stage, size)      # type: ignore[union-attr]
            if parent is not None:
                copy_tree(self._layer(parent.id), stage)
                # the copy on disk before the record: a power cut after the create
                # returned could otherwise leave the record with a tree of empty files
                # (found by the power-cut replay), which no later load can tell from a
                # complete one; an empty layer needs no flush (a lost one is rebuilt)
                _flush_filesystem(stage)
            faults.point("vfs.create.after_copy")
            os.rename(stage, self._layer(record.id))
        except BaseException:
            _rmtree(stage)
            raise
        faults.point("vfs.create.after_rename")
        return {"size": size} if size else {}

    def _data_present(self, record: LayerRecord) -> bool:
        return os.path.isdir(f"{self._dir_s}/{record.id}")

    def _rebuild_data(self, record: LayerRecord, parent: LayerRecord | None) -> None:
        size = record.fields.get("size", 0)
        if size and self._quota is None:
            self._quota, self._quota_reason = quota_control(self._dir)
        self._create_data(record, parent, size if self._quota else 0, "")

    def _busy(self, id: str) -> str | None:
        return self._refs.in_use(str(self._layer(id)))

    def _remove_data(self, id: str) -> None:
        path = self._layer(id)
        if not os.path.lexists(path):
            return
        mnt.unmount_all_under(path)     # never let rmtree walk into someone's mount
        doomed = self._staging(id, "removed")
        os.rename(path, doomed)
        faults.point("vfs.remove.after_rename")
        _rmtree(doomed)

    def _mount_data(self, record: LayerRecord, mount_label: str) -> pathlib.Path:
        path = f"{self._dir_s}/{record.id}"     # strings: pathlib costs more than a mount here
        self._refs.increment(path)
        return pathlib.Path(path)

    def _unmount_data(self, id: str, record: LayerRecord | None) -> None:
        path = f"{self._dir_s}/{id}"
        if self._refs.count(path):
            self._refs.decrement(path)

    def _layer_options(self, record: LayerRecord) -> dict[str, str]:
        size = record.fields.get("size")
        return {"size": str(size)} if size else {}

    def _metadata(self, record: LayerRecord) -> dict[str, Any]:
        return {"Dir": str(self._layer(record.id))}

    # -- `graphdrivers check` (drivers/check/) ------------------------------------
    def check_findings(self) -> list[Finding]:
        """Entries in dir/ that no layer name can take (a file, a bad name): nothing of
        the layer store points at them, and load leaves them alone."""
        found = []
        for entry in os.scandir(self._dir):
            if is_valid_id(entry.name) and entry.is_dir(follow_symlinks=False):
                continue
            found.append(Finding(DATA_WITHOUT_LAYER, entry.path,
                                 "an entry in dir/ that is not a layer (no valid layer id, "
                                 "or not a directory)", "delete it",
                                 lambda path=entry.path: _remove_entry(path)))
        return found

    def _quarantine_data(self, id: str, dest: pathlib.Path) -> None:
        path = self._layer(id)
        if os.path.lexists(path):
            mnt.unmount_all_under(path)
            os.rename(path, dest)

    # -- LayerMounts (capabilities.py) -------------------------------------------
    def layer_mounts(self, id: str, *, readonly: bool) -> list[MountSpec]:
        self._record(check_id(id))
        return [MountSpec("bind", str(self._layer(id)), ("ro" if readonly else "rw", "rbind"))]

    def layer_usage(self, id: str) -> Usage:
        """A vfs child is a full copy: all of it is the layer's own space."""
        self._record(check_id(id))
        with os_errors(f"measure layer {id}"):
            return tree_usage(self._layer(id))

    # -- the rest of the interface ----------------------------------------------
    def status(self) -> list[tuple[str, str]]:
        rows = [("Backing Filesystem", fs_name(self.home))]
        if self._default_size:
            rows.append(("Default Layer Size", format_size(self._default_size)))
        return rows + [("Layers", str(len(self.layers())))]

    def cleanup(self) -> None:
        for path in self._refs.paths():
            self._refs.forget(path)
        if self._quota is not None:
            self._quota.close()
            self._quota = None
        super().cleanup()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_entry(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        mnt.unmount_all_under(path)
        _rmtree(path)
    else:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


def _rmtree(path: str | os.PathLike) -> None:
    try:
        shutil.rmtree(path)
    except FileNotFoundError:
        pass


def _flush_filesystem(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        sync.syncfs(fd)
    finally:
        os.close(fd)

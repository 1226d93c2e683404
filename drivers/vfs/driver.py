"""The vfs driver: a layer is a plain directory, a child starts as a full copy.

State under ``home`` (``<load home>/vfs``):

    dir/<id>/        the layer's root (0755, 0:0)
    meta/<id>.json   {"parent": ..., "rw": ...}, written atomically
    tmp/             layers being created or removed; anything here after a
                     crash is garbage and is deleted by the next load()

A layer appears in ``dir/`` only by a rename of a finished copy, and leaves
it by a rename into ``tmp/``, so a process killed at any point leaves either
a whole layer or nothing. (A kill inside apply_diff leaves a half-applied
layer, which can be removed and created again, as in Docker.)
"""
from __future__ import annotations

import errno
import os
import pathlib
import shutil
import uuid
from typing import Mapping

from graphdrivers import faults
from graphdrivers.kernel import mount as mnt
from graphdrivers.kernel.statfs import fs_name
from graphdrivers.vfs.copy import copy_tree
from graphdrivers.store.atomicfile import fsync_dir, read_json, remove_stale_temps, write_json
from graphdrivers.driver import Driver
from graphdrivers.errors import DriverError, InvalidOption, LayerExists, LayerInUse, LayerNotFound, NoSpace
from graphdrivers.layerid import check_id, is_valid_id
from graphdrivers.store.locks import IdLocks
from graphdrivers.naivediff import NaiveDiff
from graphdrivers.options import Option, parse_options, parse_size
from graphdrivers.store.refcount import RefCounter
from graphdrivers.vfs.quota import quota_control


faults.register(
    "vfs",
    "vfs.create.after_mkdir",
    "vfs.create.after_copy",
    "vfs.create.after_meta",
    "vfs.create.after_rename",
    "vfs.remove.after_rename",
    "vfs.remove.after_meta")

class VfsDriver(NaiveDiff, Driver):
    name = "vfs"
    OPTIONS: Mapping[str, Option] = {}
    LAYER_OPTIONS: Mapping[str, Option] = {
        "size": Option(parse_size, 0, "quota of a read-write layer (needs project quotas)")}

    def __init__(self, home: str | os.PathLike, options: Mapping[str, str] | None = None):
        super().__init__(home, options)
        parse_options(options, self.OPTIONS, what="vfs driver option")
        self._dir = self.home / "dir"
        self._meta = self.home / "meta"
        self._tmp = self.home / "tmp"
        for path in (self._dir, self._meta, self._tmp):
            path.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._refs = RefCounter(lambda _path: False, self.home_run)   # never a real mount
        self._locks = IdLocks(self.home_run)
        self._quota = None
        self._quota_reason = ""
        self._recover()

    def _recover(self) -> None:
        """Delete what a crashed create/remove left in tmp/ (only dead processes' work)."""
        remove_stale_temps(self._meta)
        for entry in os.scandir(self._tmp):
            pid = entry.name.rsplit(".", 2)[-2] if entry.name.count(".") >= 2 else ""
            if pid.isdigit() and _alive(int(pid)) and int(pid) != os.getpid():
                continue
            _rmtree(entry.path)

    # -- paths and metadata -------------------------------------------------
    def _layer(self, id: str) -> pathlib.Path:
        return self._dir / id

    def _staging(self, id: str, what: str) -> pathlib.Path:
        return self._tmp / f"{id}-{what}-{uuid.uuid4().hex[:8]}.{os.getpid()}.tmp"

    def _require(self, id: str) -> pathlib.Path:
        check_id(id)
        path = self._layer(id)
        if not path.is_dir():
            raise LayerNotFound(f"layer {id} does not exist in {self.home}")
        return path

    # -- Driver interface ----------------------------------------------------
    def exists(self, id: str) -> bool:
        return is_valid_id(id) and self._layer(id).is_dir()

    def layers(self) -> list[str]:
        return sorted(e.name for e in os.scandir(self._dir) if is_valid_id(e.name) and e.is_dir())

    def parent(self, id: str) -> str | None:
        self._require(id)
        try:
            return read_json(self._meta / f"{id}.json").get("parent")
        except FileNotFoundError:
            return None

    def _children(self, id: str) -> list[str]:
        found = []
        for entry in os.scandir(self._meta):
            name = entry.name
            if not name.endswith(".json") or name.startswith("."):
                continue
            try:
                if read_json(entry.path).get("parent") == id and self.exists(name[:-5]):
                    found.append(name[:-5])
            except (OSError, ValueError):
                continue
        return sorted(found)

    def _layer_options(self, storage_opt: Mapping[str, str] | None, rw: bool) -> int:
        if not storage_opt:
            return 0
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

    def create(self, id: str, parent: str | None = None, *, rw: bool = False,
               mount_label: str = "", storage_opt: Mapping[str, str] | None = None) -> None:
        check_id(id)
        if parent is not None:
            check_id(parent, "parent layer id")
        size = self._layer_options(storage_opt, rw)
        with self._locks.hold(id):
            if self._layer(id).exists():
                raise LayerExists(f"layer {id} already exists")
            if parent is not None and not self.exists(parent):
                raise LayerNotFound(f"parent layer {parent} of {id} does not exist")
            stage = self._staging(id, "new")
            try:
                os.mkdir(stage, 0o755)
                faults.point("vfs.create.after_mkdir")
                os.chmod(stage, 0o755)
                if os.geteuid() == 0:
                    os.chown(stage, 0, 0)
                if size:
                    self._quota.set_quota(stage, size)      # type: ignore[union-attr]
                if parent is not None:
                    copy_tree(self._layer(parent), stage)
                faults.point("vfs.create.after_copy")
                write_json(self._meta / f"{id}.json", {"parent": parent, "rw": rw})
                faults.point("vfs.create.after_meta")
                os.rename(stage, self._layer(id))
                faults.point("vfs.create.after_rename")
                fsync_dir(self._dir)
            except BaseException as exc:
                _rmtree(stage)
                if isinstance(exc, OSError):
                    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                        raise NoSpace(f"no space to create layer {id}: {exc}") from None
                    raise DriverError(f"cannot create layer {id}: {exc}") from exc
                raise

    def remove(self, id: str) -> None:
        with self._locks.hold(check_id(id)):
            path = self._require(id)
            busy = self._refs.in_use(str(path))
            if busy:
                raise LayerInUse(f"layer {id} is {busy}; unmount it first")
            children = self._children(id)
            if children:
                # a child is a full copy, but its diff and changes compare with this layer
                raise LayerInUse(f"layer {id} has child layers ({', '.join(children[:5])}"
                                 f"{', ...' if len(children) > 5 else ''}); remove them first")
            mnt.unmount_all_under(path)     # never let rmtree walk into someone's mount
            doomed = self._staging(id, "removed")
            os.rename(path, doomed)
            faults.point("vfs.remove.after_rename")
            fsync_dir(self._dir)
            try:
                os.unlink(self._meta / f"{id}.json")
            except FileNotFoundError:
                pass
            faults.point("vfs.remove.after_meta")
            _rmtree(doomed)
            self.home_run.forget_lock(id)

    def mount(self, id: str, mount_label: str = "") -> pathlib.Path:
        with self._locks.hold(check_id(id)):
            path = self._require(id)
            self._refs.increment(str(path))
            return path

    def unmount(self, id: str) -> None:
        with self._locks.hold(check_id(id)):
            path = str(self._layer(id))
            if self._refs.count(path):
                self._refs.decrement(path)

    def status(self) -> list[tuple[str, str]]:
        return [("Backing Filesystem", fs_name(self.home)),
                ("Layers", str(len(self.layers())))]

    def metadata(self, id: str) -> dict[str, str]:
        return {"Dir": str(self._require(id))}

    def cleanup(self) -> None:
        for path in self._refs.paths():
            self._refs.forget(path)
        if self._quota is not None:
            self._quota.close()
            self._quota = None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _rmtree(path: str | os.PathLike) -> None:
    try:
        shutil.rmtree(path)
    except FileNotFoundError:
        pass

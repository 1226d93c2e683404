"""The btrfs driver: one subvolume per layer, a child is a writable snapshot of its parent.

Layout under ``home`` (= ``<load home>/btrfs``), as Docker's:
    subvolumes/<id>   the layer (a subvolume or snapshot)
    quotas/<id>       the layer's size limit in bytes (decimal), when it has one
    meta/<id>.json    {"parent": ..., "rw": ...} (written before the subvolume exists)

Subvolume operations are ioctls (libbtrfsutil or fcntl, see subvol.py), never a
``btrfs`` process. ``changes``/``diff``/``diff_size`` against the layer's own
parent use btrfs generation numbers to visit only what changed (changes.py);
anything else, or ``btrfs.native_diff=false``, takes the naive tree walk.
"""
from __future__ import annotations

import contextlib
import errno
import os
import pathlib
import threading
from typing import BinaryIO, Iterator, Mapping

from graphdrivers import faults
from graphdrivers.kernel import statfs as fsinfo
from graphdrivers.archive import export_changes
from graphdrivers.store.atomicfile import read_json, remove_stale_temps, write_atomic, write_json
from graphdrivers.changes import changes_size
from graphdrivers.driver import Change, Driver
from graphdrivers.errors import (DriverError, InvalidOption, LayerExists, LayerInUse,
                                 LayerNotFound, NoSpace, NotSupported)
from graphdrivers.layerid import check_id, is_valid_id
from graphdrivers.store.locks import IdLocks
from graphdrivers.naivediff import NaiveDiff
from graphdrivers.options import Option, format_size, parse_bool, parse_options, parse_size
from graphdrivers.store.refcount import RefCounter

from . import quota, subvol

faults.register(
    "btrfs",
    "btrfs.create.after_meta",
    "btrfs.create.after_subvolume",
    "btrfs.remove.after_quota_file",
    "btrfs.remove.after_delete")

LAYER_OPTIONS = {"size": Option(parse_size, None, "maximum referenced bytes (btrfs qgroup limit)")}


class BtrfsDriver(NaiveDiff, Driver):
    name = "btrfs"
    OPTIONS = {
        "btrfs.min_space": Option(parse_size, None,
                                  "smallest allowed per-layer size; setting it turns quotas on"),
        "btrfs.native_diff": Option(parse_bool, True,
                                    "find changes from btrfs generation numbers (false: walk both trees)"),
    }

    def __init__(self, home: str | os.PathLike, options: Mapping[str, str] | None = None):
        super().__init__(home, options)
        self.probe(self.home)
        opts = parse_options(options, self.OPTIONS)
        self.min_space: int | None = opts["btrfs.min_space"]
        self.native_diff: bool = opts["btrfs.native_diff"]
        if self.min_space is not None and self.min_space <= 0:
            raise InvalidOption("btrfs.min_space must be a positive size, e.g. 1G")
        self.home.mkdir(mode=0o710, parents=True, exist_ok=True)
        if self.min_space is not None:   # before any state exists: a refusal leaves nothing
            self._enable_quotas()
        for sub in ("subvolumes", "quotas", "meta"):
            (self.home / sub).mkdir(mode=0o700, exist_ok=True)
        remove_stale_temps(self.home / "meta")
        remove_stale_temps(self.home / "quotas")
        self._drop_orphan_records()
        self._lock = threading.Lock()
        self._destroy_stale_qgroups()
        self._locks = IdLocks(self.home_run)
        # a layer "mount" is a path, never a mount
        self._refs = RefCounter(lambda _path: False, self.home_run)

    # -- probing ---------------------------------------------------------
    @classmethod
    def probe(cls, home: pathlib.Path) -> None:
        if fsinfo.fs_magic(home) != fsinfo.BTRFS_MAGIC:
            path = fsinfo.existing_ancestor(home)
            raise NotSupported(f"btrfs needs its home on a btrfs filesystem; {path} is on "
                               f"{fsinfo.fs_name(path)}")

    # -- paths and records ----------------------------------------------
    def _dir(self, layer_id: str) -> pathlib.Path:
        return self.home / "subvolumes" / layer_id

    def _meta(self, layer_id: str) -> pathlib.Path:
        return self.home / "meta" / f"{layer_id}.json"

    def _quota_file(self, layer_id: str) -> pathlib.Path:
        return self.home / "quotas" / layer_id

    def _drop_orphan_records(self) -> None:
        """A crash between writing a record and making the subvolume leaves a record alone."""
        for entry in os.scandir(self.home / "meta"):
            layer_id = entry.name[:-5]
            if entry.name.endswith(".json") and not subvol.is_subvolume(self._dir(layer_id)):
                os.unlink(entry.path)
        for entry in os.scandir(self.home / "quotas"):
            if not entry.name.startswith(".") and not subvol.is_subvolume(self._dir(entry.name)):
                os.unlink(entry.path)

    def _require(self, layer_id: str) -> pathlib.Path:
        check_id(layer_id)
        path = self._dir(layer_id)
        if not subvol.is_subvolume(path):
            raise LayerNotFound(f"layer {layer_id!r} does not exist in {self.home}")
        return path

    def _enable_quotas(self) -> None:
        try:
            quota.enable(self.home)
        except OSError as exc:
            raise DriverError(f"cannot enable btrfs quotas on {self.home}: {exc.strerror}; "
                              "quotas need root (CAP_SYS_ADMIN)") from None

    # -- layers ----------------------------------------------------------
    def create(self, id: str, parent: str | None = None, *, rw: bool = False,
               mount_label: str = "", storage_opt: Mapping[str, str] | None = None) -> None:
        check_id(id)
        if parent is not None:
            check_id(parent, "parent layer id")
        size = self._parse_size(storage_opt)
        with self._locks.hold(id):
            path = self._dir(id)
            if subvol.is_subvolume(path) or path.exists():
                raise LayerExists(f"layer {id!r} already exists")
            source = None
            if parent is not None:
                source = self._require(parent)
            try:
                try:
                    write_json(self._meta(id), {"parent": parent, "rw": bool(rw)})
                    faults.point("btrfs.create.after_meta")
                    if source is None:
                        subvol.create(path)
                    else:
                        subvol.snapshot(source, path)
                except OSError as exc:
                    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                        raise NoSpace(f"no space to create layer {id!r}: {exc.strerror}") from None
                    raise DriverError(f"cannot create btrfs layer {id!r}: {exc}") from None
                faults.point("btrfs.create.after_subvolume")
                if source is None:
                    os.chmod(path, 0o755)
                if size is not None:
                    self._set_quota(id, path, size)
            except BaseException:
                self._undo_create(id, path)
                raise

    def _parse_size(self, storage_opt: Mapping[str, str] | None) -> int | None:
        size = parse_options(storage_opt, LAYER_OPTIONS, what="btrfs layer option")["size"]
        if size is None:
            return None
        if size <= 0:
            raise InvalidOption("btrfs layer option size must be a positive size, e.g. 10G")
        if self.min_space is not None and size < self.min_space:
            raise InvalidOption(f"storage size {format_size(size)} cannot be less than "
                                f"btrfs.min_space {format_size(self.min_space)}")
        return size

    def _set_quota(self, layer_id: str, path: pathlib.Path, size: int) -> None:
        self._enable_quotas()
        try:
            quota.set_limit(path, size)
        except OSError as exc:
            raise DriverError(f"cannot set the btrfs qgroup limit of {layer_id!r}: {exc}") from None
        write_atomic(self._quota_file(layer_id), str(size).encode())

    def _undo_create(self, layer_id: str, path: pathlib.Path) -> None:
        try:
            if subvol.is_subvolume(path):
                subvol.delete(path)
        finally:
            for record in (self._meta(layer_id), self._quota_file(layer_id)):
                try:
                    record.unlink()
                except FileNotFoundError:
                    pass

    def remove(self, id: str) -> None:
        with self._locks.hold(check_id(id)):
            path = self._require(id)
            busy = self._refs.in_use(str(path))
            if busy:
                raise LayerInUse(f"layer {id!r} is {busy}; unmount it before removing it")
            try:
                self._quota_file(id).unlink()
            except FileNotFoundError:
                pass
            faults.point("btrfs.remove.after_quota_file")
            quotas_on = quota.enabled(self.home)
            try:
                deleted = subvol.delete_recursive(path)
            except OSError as exc:
                raise DriverError(f"cannot delete the btrfs subvolume of {id!r}: {exc}") from None
            if quotas_on:
                self._destroy_stale_qgroups(deleted)
            faults.point("btrfs.remove.after_delete")
            try:
                self._meta(id).unlink()
            except FileNotFoundError:
                pass
            self._refs.forget(str(path))
            self.home_run.forget_lock(id)

    def _stale_file(self) -> pathlib.Path:
        return self.home / "quotas" / ".stale-qgroups.json"

    def _destroy_stale_qgroups(self, deleted: list[int] = ()) -> None:
        """Destroy the qgroups of deleted subvolumes, remembering those the kernel
        still keeps (some kernels refuse until the cleaner has dropped the
        subvolume) to retry at the next remove, cleanup or load. Leaked qgroups
        pile up otherwise (moby#29325)."""
        with self._lock:
            stale_file = self._stale_file()
            try:
                stale = set(read_json(stale_file))
            except (FileNotFoundError, ValueError):
                stale = set()
            before = set(stale)
            stale.update(deleted)
            for sid in sorted(stale):
                try:
                    if quota.destroy(self.home, sid):
                        stale.discard(sid)
                except OSError:
                    pass        # keep it for the next try
            if stale != before:
                if stale:
                    write_json(stale_file, sorted(stale))
                else:
                    stale_file.unlink(missing_ok=True)

    def mount(self, id: str, mount_label: str = "") -> pathlib.Path:
        with self._locks.hold(check_id(id)):
            path = self._require(id)
            self._refs.increment(str(path))
            limit = self._quota_file(id)
            if limit.exists():   # Docker re-applies the limit on every Get
                try:
                    size = int(limit.read_bytes())
                    if self.min_space is None or size >= self.min_space:
                        quota.set_limit(path, size)
                except (OSError, ValueError):
                    pass
            return path

    def unmount(self, id: str) -> None:
        with self._locks.hold(check_id(id)):
            self._refs.decrement(str(self._dir(id)))

    def exists(self, id: str) -> bool:
        return is_valid_id(id) and subvol.is_subvolume(self._dir(id))

    def layers(self) -> list[str]:
        return sorted(e.name for e in os.scandir(self.home / "subvolumes")
                      if is_valid_id(e.name) and subvol.is_subvolume(e.path))

    def parent(self, id: str) -> str | None:
        self._require(id)
        try:
            return read_json(self._meta(id)).get("parent")
        except FileNotFoundError:
            return None

    def status(self) -> list[tuple[str, str]]:
        from importlib.metadata import PackageNotFoundError, version
        try:
            build = version("graphdrivers")
        except PackageNotFoundError:
            build = "unknown"
        quotas_on = quota.enabled(self.home)
        return [
            ("Build Version", f"graphdrivers {build}"),
            ("Library Version", subvol.backend()),
            ("Backing Filesystem", "btrfs"),
            ("Quotas", "enabled" if quotas_on else "disabled"),
            ("Min Space", format_size(self.min_space) if self.min_space else "none"),
            ("Diff", "native (btrfs generations)" if self.native_diff else "naive (tree walk)"),
        ]

    def metadata(self, id: str) -> dict[str, str]:
        path = self._require(id)
        meta = {"Path": str(path), "SubvolumeId": str(subvol.subvolume_id(path))}
        limit = self._quota_file(id)
        if limit.exists():
            meta["Size"] = limit.read_text().strip()
        return meta

    def cleanup(self) -> None:
        # Nothing is mounted (a layer is a subvolume path); forget the counts.
        # Quotas stay as they are: they are a filesystem-wide setting.
        for path in self._refs.paths():
            self._refs.forget(path)
        if self._stale_file().exists():
            self._destroy_stale_qgroups()

    # -- diffs -----------------------------------------------------------
    # NaiveDiff walks both trees. For a layer against the subvolume it was
    # snapshotted from, btrfs can say what changed (changes.py); the tar is
    # then built from that list exactly as the naive path builds it.

    def _native(self, id: str, parent: str) -> list[Change] | None:
        if not self.native_diff:
            return None
        from . import changes as native
        try:
            return native.changes(self._dir(id), self._dir(parent))
        except OSError:   # e.g. an old kernel without GET_SUBVOL_INFO: walk instead
            return None

    def changes(self, id: str, parent: str | None = None) -> list[Change]:
        base = self._diff_args(id, parent)[1]
        if base is not None:
            with self._mounted(id), self._mounted(base):
                found = self._native(id, base)
            if found is not None:
                return found
        return super().changes(id, parent)

    def diff_size(self, id: str, parent: str | None = None) -> int:
        base = self._diff_args(id, parent)[1]
        if base is not None:
            with self._mounted(id) as root, self._mounted(base):
                found = self._native(id, base)
                if found is not None:
                    return changes_size(root, found)
        return super().diff_size(id, parent)

    def diff(self, id: str, parent: str | None = None) -> BinaryIO:
        base = self._diff_args(id, parent)[1]
        if base is not None and self.native_diff:
            root = self.mount(id)
            released = False

            def release() -> None:
                nonlocal released
                if not released:
                    released = True
                    self.unmount(id)
            try:
                with self._mounted(base):
                    found = self._native(id, base)
                if found is not None:
                    return export_changes(root, found, on_close=release)
            except BaseException:
                release()
                raise
            release()
        return super().diff(id, parent)

    @contextlib.contextmanager
    def _mounted(self, id: str) -> Iterator[pathlib.Path]:
        root = self.mount(id)
        try:
            yield root
        finally:
            self.unmount(id)

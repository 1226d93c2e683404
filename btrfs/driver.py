"""The btrfs driver: one subvolume per layer, a child is a writable snapshot of its parent.

Layout under ``home`` (= ``<load home>/btrfs``), as Docker's:
    _layers.json      every layer's record (the layer store, store/layers.py); a
                      layer's size limit is its backend field "size"
    subvolumes/<id>   the layer (a subvolume or snapshot)
    quotas/<id>       the size limit in bytes (decimal), Docker's file; written
                      for operators, not flushed: the record is what counts

The subvolume is made, then recorded; a remove drops the record, then deletes the
subvolume: after a crash, a subvolume without a record is deleted at load. Homes
from before the store kept ``meta/<id>.json`` ({"parent": ..., "rw": ...}); the
first load moves those and the quota files' sizes into the store.

Subvolume operations are ioctls (libbtrfsutil or fcntl, see subvol.py), never a
``btrfs`` process. ``changes``/``diff``/``diff_size`` against the layer's own
parent use btrfs generation numbers to visit only what changed (changes.py);
anything else, or ``btrfs.native_diff=false``, takes the naive tree walk.
"""
from __future__ import annotations

import contextlib
import os
import pathlib
import shutil
import threading
from typing import TYPE_CHECKING, BinaryIO, Iterable, Iterator, Mapping

from graphdrivers import faults
from graphdrivers.kernel import statfs as fsinfo
from graphdrivers.archive import export_changes
from graphdrivers.store.atomicfile import read_json, remove_stale_temps, write_json
from graphdrivers.changes import changes_size
from graphdrivers.capabilities import LayerMounts, MountSpec, Usage
from graphdrivers.driver import Change, ChangeKind, Driver, os_errors
from graphdrivers.errors import DriverError, InvalidOption, NotSupported
from graphdrivers.layerid import check_id, is_valid_id
from graphdrivers.naivediff import NaiveDiff
from graphdrivers.options import Option, format_size, parse_bool, parse_options, parse_size
from graphdrivers.store.layers import LayerRecord, legacy_record
from graphdrivers.store.refcount import RefCounter
from graphdrivers.usage import paths_usage, tree_usage

from . import quota, subvol

if TYPE_CHECKING:
    from graphdrivers.check.findings import Finding

faults.register(
    "btrfs",
    "btrfs.create.after_subvolume",
    "btrfs.remove.after_delete")

LAYER_OPTIONS = {"size": Option(parse_size, None, "maximum referenced bytes (btrfs qgroup limit)")}


class BtrfsDriver(NaiveDiff, LayerMounts, Driver):
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
        for sub in ("subvolumes", "quotas"):
            (self.home / sub).mkdir(mode=0o700, exist_ok=True)
        remove_stale_temps(self.home / "quotas")
        self._lock = threading.Lock()
        self._destroy_stale_qgroups()
        # a layer "mount" is a path, never a mount
        self._refs = RefCounter(lambda _path: False, self.home_run)
        self._open_store()
        shutil.rmtree(self.home / "meta", ignore_errors=True)   # old records, in the store now
        self._drop_orphan_quota_files()

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

    def _quota_file(self, layer_id: str) -> pathlib.Path:
        return self.home / "quotas" / layer_id

    def _import_records(self) -> Iterable[LayerRecord]:
        for layer_id in self._data_ids():
            try:
                fields = {"size": int(self._quota_file(layer_id).read_bytes())}
            except (FileNotFoundError, ValueError):
                fields = {}
            yield legacy_record(self.home, layer_id, fields)

    def _data_ids(self) -> list[str]:
        return [e.name for e in os.scandir(self.home / "subvolumes")
                if is_valid_id(e.name) and subvol.is_subvolume(e.path)]

    def _drop_orphan_quota_files(self) -> None:
        for entry in os.scandir(self.home / "quotas"):
            if is_valid_id(entry.name) and not self.layer_store.exists(entry.name):
                os.unlink(entry.path)

    def _enable_quotas(self) -> None:
        try:
            quota.enable(self.home)
        except OSError as exc:
            raise DriverError(f"cannot enable btrfs quotas on {self.home}: {exc.strerror}; "
                              "quotas need root (CAP_SYS_ADMIN)") from None

    # -- hooks of the Driver template ------------------------------------
    def _create_options(self, storage_opt: Mapping[str, str] | None, rw: bool) -> int | None:
        return self._parse_size(storage_opt)

    def _create_data(self, record: LayerRecord, parent: LayerRecord | None, size: int | None,
                     mount_label: str) -> dict[str, int]:
        path = self._dir(record.id)
        if parent is None:
            subvol.create(path)
        else:
            subvol.snapshot(self._dir(parent.id), path)
        faults.point("btrfs.create.after_subvolume")
        if parent is None:
            os.chmod(path, 0o755)
        if size is not None:
            self._set_quota(record.id, path, size)
        return {"size": size} if size is not None else {}

    def _data_present(self, record: LayerRecord) -> bool:
        return subvol.is_subvolume(self._dir(record.id))

    def _rebuild_data(self, record: LayerRecord, parent: LayerRecord | None) -> None:
        self._remove_data(record.id)                # what the power cut left of it
        self._create_data(record, parent, record.fields.get("size"), "")

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
        self._quota_file(layer_id).write_text(str(size))

    def _busy(self, id: str) -> str | None:
        return self._refs.in_use(str(self._dir(id)))

    def _remove_data(self, id: str) -> None:
        self._quota_file(id).unlink(missing_ok=True)
        path = self._dir(id)
        if subvol.is_subvolume(path):
            quotas_on = quota.enabled(self.home)
            deleted = subvol.delete_recursive(path)
            if quotas_on:
                self._destroy_stale_qgroups(deleted)
            faults.point("btrfs.remove.after_delete")
        self._refs.forget(str(path))

    def _stale_file(self) -> pathlib.Path:
        return self.home / "quotas" / ".stale-qgroups.json"

    def _destroy_stale_qgroups(self, deleted: list[int] = ()) -> None:
        """Destroy the qgroups of deleted subvolumes, remembering those that must
        wait (until the cleaner's drop of the subvolume is committed: quota.destroy)
        to retry at the next remove, cleanup or load. Leaked qgroups pile up
        otherwise (moby#29325)."""
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

    def _mount_data(self, record: LayerRecord, mount_label: str) -> pathlib.Path:
        path = self._dir(record.id)
        self._refs.increment(str(path))
        size = record.fields.get("size")
        if size is not None and (self.min_space is None or size >= self.min_space):
            with contextlib.suppress(OSError):
                quota.set_limit(path, size)     # Docker re-applies the limit on every Get
        return path

    def _unmount_data(self, id: str, record: LayerRecord | None) -> None:
        self._refs.decrement(str(self._dir(id)))

    # -- `graphdrivers check` (drivers/check/, check.py) ------------------------
    def check_findings(self) -> list[Finding]:
        from . import check
        return check.findings(self)

    def _quarantine_data(self, id: str, dest: pathlib.Path) -> None:
        """A subvolume moves by rename like a directory (same filesystem); its qgroup
        and limit go with it."""
        path = self._dir(id)
        if os.path.lexists(path):
            os.rename(path, dest)
        self._quota_file(id).unlink(missing_ok=True)
        self._refs.forget(str(path))

    # -- LayerMounts (capabilities.py) -------------------------------------------
    def layer_mounts(self, id: str, *, readonly: bool) -> list[MountSpec]:
        self._record(check_id(id))
        return [MountSpec("bind", str(self._dir(id)), ("ro" if readonly else "rw", "rbind"))]

    def layer_usage(self, id: str) -> Usage:
        """A snapshot shares its parent's extents: its own data is what changed since
        (the generation search of changes.py finds it without a full walk)."""
        record = self._record(check_id(id))
        with os_errors(f"measure layer {id}"):
            if record.parent is None:
                return tree_usage(self._dir(id))
            changed = [c.path for c in self.changes(id) if c.kind != ChangeKind.DELETE]
            return paths_usage(self._dir(id), changed)

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

    def _layer_options(self, record: LayerRecord) -> dict[str, str]:
        size = record.fields.get("size")
        return {"size": str(size)} if size else {}

    def _metadata(self, record: LayerRecord) -> dict[str, str]:
        path = self._dir(record.id)
        meta = {"Path": str(path), "SubvolumeId": str(subvol.subvolume_id(path))}
        if "size" in record.fields:
            meta["Size"] = str(record.fields["size"])
        return meta

    def cleanup(self) -> None:
        # Nothing is mounted (a layer is a subvolume path); forget the counts.
        # Quotas stay as they are: they are a filesystem-wide setting.
        for path in self._refs.paths():
            self._refs.forget(path)
        if self._stale_file().exists():
            self._destroy_stale_qgroups()
        super().cleanup()

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

    def _changes(self, record: LayerRecord, base: str | None) -> list[Change]:
        if base is not None:
            with self._mounted(record.id), self._mounted(base):
                found = self._native(record.id, base)
            if found is not None:
                return found
        return super()._changes(record, base)

    def _diff_size(self, record: LayerRecord, base: str | None) -> int:
        if base is not None:
            with self._mounted(record.id) as root, self._mounted(base):
                found = self._native(record.id, base)
                if found is not None:
                    return changes_size(root, found)
        return super()._diff_size(record, base)

    def _diff(self, record: LayerRecord, base: str | None) -> BinaryIO:
        id = record.id
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
        return super()._diff(record, base)

    @contextlib.contextmanager
    def _mounted(self, id: str) -> Iterator[pathlib.Path]:
        root = self.mount(id)
        try:
            yield root
        finally:
            self.unmount(id)

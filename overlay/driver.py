"""The overlay2 driver: each layer is an overlayfs upper dir, a child mounts its parents as lowers.

Docker's layout (see layout.py), with what Docker left open:
- chains up to the kernel's 500 lowers through the new mount API (``lowerdir+``),
  mount(2) with relative ``l/<short>`` lowers in one page on older kernels;
- mounts with redirect_dir=off and metacopy=off where the kernel has them, so
  the upper dir stays a complete record and the native diff stays correct;
- native ``changes`` from the upper dir, opaque directories included;
- whiteouts applied only where overlayfs hides them, an opaque layer root as
  the whiteouts it means (overlayfs ignores one on the upper root; apply.py);
- create and remove are atomic (build in a temp dir and rename; rename into
  the trash first), so a crash never leaves a half layer behind;
- the layer store (``_layers.json``, store/layers.py) is the record of every layer:
  its parent, and its short link name as a backend field. The ``lower`` and
  ``link`` files are still written (Docker's layout, for operators and tools), but
  mounts and diffs take the chain from the store, so they need no flush of their
  own; a missing ``l/`` link is made again at load. A home from before the store
  is imported from those files on its first load.

Test switches (used by tests/overlay/ and the benchmarks):
- ``GRAPHDRIVERS_OVERLAY2_MOUNT=legacy`` or ``Overlay2Driver(..., mount_method="legacy")``
  forces mount(2) even where the new mount API works;
- ``GRAPHDRIVERS_OVERLAY2_NAIVE_DIFF=1`` or ``naive_diff=True`` forces the naive diff.
"""
from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Mapping

from graphdrivers import faults
from graphdrivers.kernel import statfs as fsinfo
from graphdrivers.kernel import mount as _mount
from graphdrivers.archive import apply_tar, export_tree
from graphdrivers.capabilities import LayerMounts, MountSpec, Usage
from graphdrivers.driver import Change, Driver, os_errors
from graphdrivers.errors import DriverError, InvalidOption, LayerNotFound, NotSupported
from graphdrivers.layerid import check_id, is_valid_id
from graphdrivers.naivediff import NaiveDiff
from graphdrivers.options import Option, format_size, parse_bool, parse_options, parse_size
from graphdrivers.store.layers import LOG as LAYER_LOG, LayerRecord
from graphdrivers.store.refcount import RefCounter
from graphdrivers.usage import tree_usage

from . import diff as _diff
from graphdrivers.kernel import projquota as quota

from . import external, mountapi, probe
from .apply import MERGED, UpperDir
from .layout import (LINK_DIR, dir_name, id_of_link, layer_id_of, new_short_name, read_lowers,
                     read_text)
from .whiteout import OVERLAY

if TYPE_CHECKING:
    from graphdrivers.check.findings import Finding

log = logging.getLogger(__name__)

faults.register(
    "overlay2",
    "overlay2.create.after_mkdir",
    "overlay2.create.after_link",
    "overlay2.create.after_rename",
    "overlay2.remove.after_rename",
    "overlay2.remove.after_link",
    "overlay2.mount.after_mkdir",
    "overlay2.mount.after_mount",
    "overlay2.unmount.after_umount")

KERNEL_MAX_LOWERS = 500     # OVL_MAX_STACK in fs/overlayfs
LEGACY_MAX_LOWERS = 128     # what fits one page with 26-character short names (Docker's limit)

NEW_API = "new mount API (fsopen/fsconfig lowerdir+)"
LEGACY = "mount(2) with relative lower paths"


class DepthExceeded(DriverError):
    """The parent chain is deeper than the overlay mount can stack."""


def _write(path: str, text: str) -> None:
    """A file of Docker's layout; not flushed: the store holds what mounting needs."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


# Scratch dirs in the home are named <prefix>...-<pid>-<random>: a new load removes only
# those whose process is gone, never the in-progress work of a live process.
_SCRATCH = (".tmp-", ".trash-", ".probe-", ".lowerdir-probe-")


def _owner_alive(name: str) -> bool:
    parts = name.rsplit("-", 2)
    if len(parts) != 3 or not parts[1].isdigit():
        return False
    try:
        os.kill(int(parts[1]), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


class Overlay2Driver(NaiveDiff, LayerMounts, Driver):
    name = "overlay2"
    whiteout_format = MERGED        # the naive diff's apply, through the mount
    OPTIONS = {
        "overlay2.size": Option(parse_size, 0, "default size limit of read-write layers "
                                               "(needs XFS with pquota)"),
        # dockerd before 24.0 took it to skip the kernel-version check; there is no such
        # check here (a test mount decides), so an old daemon.json keeps working unchanged
        "overlay2.override_kernel_check": Option(parse_bool, False,
                                                 "accepted for compatibility; changes nothing "
                                                 "(a test mount, not the kernel version, "
                                                 "decides)"),
    }
    LAYER_OPTIONS = {
        "size": Option(parse_size, None, "size limit of this read-write layer (XFS pquota)"),
    }

    def __init__(self, home: str | os.PathLike, options: Mapping[str, str] | None = None, *,
                 mount_method: str | None = None, naive_diff: bool | None = None):
        super().__init__(home, options)
        values = parse_options(options, self.OPTIONS)
        self._override_kernel_check = values["overlay2.override_kernel_check"]
        if self._override_kernel_check:
            log.info("overlay2.override_kernel_check is accepted and changes nothing: "
                     "overlay support is decided by a test mount")
        self._setup(values, mount_method, naive_diff)

    @classmethod
    def probe(cls, home: Path) -> None:
        probe.check_home(home)

    def _setup(self, values: dict, mount_method: str | None, naive_diff: bool | None) -> None:
        self.home.mkdir(mode=0o710, parents=True, exist_ok=True)
        self._features = probe.Features(backing_fs=probe.check_backing(self.home),
                                        options=probe.default_mount_options())
        forced = mount_method or os.environ.get("GRAPHDRIVERS_OVERLAY2_MOUNT") or None
        if forced not in (None, "legacy", "new"):
            raise InvalidOption(f"overlay2 mount method must be 'legacy' or 'new', not {forced!r} "
                                "(GRAPHDRIVERS_OVERLAY2_MOUNT)")
        method = "legacy" if forced == "legacy" else "auto"
        found = self.home_run.remembered(f"overlay2-{method}", lambda: self._probe(method),
                                         again=not (self.home / LAYER_LOG).exists())
        self._new_api, self._api_reason = found["new_api"], found["api_reason"]
        if forced == "new" and not self._new_api:
            raise NotSupported(f"the new mount API cannot be used: {self._api_reason}")
        self.max_depth = KERNEL_MAX_LOWERS if self._new_api else LEGACY_MAX_LOWERS
        self._features.native_diff = found["native_diff"]
        self._features.naive_reason = found["naive_reason"]
        self._features.metacopy = found["metacopy"]
        if naive_diff is None:
            naive_diff = _env_flag("GRAPHDRIVERS_OVERLAY2_NAIVE_DIFF")
        if naive_diff:
            self._features.native_diff = False
            self._features.naive_reason = "forced by the test switch"

        self._quota: quota.QuotaControl | None = None
        self._quota_reason = ""
        self._default_size = values["overlay2.size"] or 0
        if self._features.backing_fs == "xfs":
            self._quota, self._quota_reason = quota.open_control(self.home)
        else:
            self._quota_reason = (f"the size option needs the home on XFS mounted with pquota; "
                                  f"{self.home} is on {self._features.backing_fs}")
        if self._default_size and self._quota is None:
            raise InvalidOption(f"overlay2.size: {self._quota_reason}")

        (self.home / LINK_DIR).mkdir(mode=0o700, exist_ok=True)
        self._refs = RefCounter(self._is_mounted, self.home_run)
        self._recover()
        self._open_store()
        self._restore_links()

    # -- start-up ---------------------------------------------------------
    def _probe(self, method: str) -> dict:
        """What this kernel's overlayfs does on this home (run once per boot: HomeRun)."""
        if not probe.supports_dtype(self.home):
            raise NotSupported(probe.dtype_message(self._features.backing_fs, self.home))
        if method == "legacy":
            self._new_api, self._api_reason = False, "forced by the test switch"
        else:
            self._new_api, self._api_reason = mountapi.supports_lowerdir_plus(self.home)
        scratch = self.home / f".probe-{os.getpid()}-{uuid.uuid4().hex[:12]}"
        scratch.mkdir()
        try:
            def mount_fn(target, lowers, upper, work, readonly):
                mountapi.in_directory(scratch, lambda: self._mount_call(
                    target, lowers, upper, work, readonly))
            probe.test_mount(scratch, mount_fn, self._features)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        f = self._features
        return {"new_api": self._new_api, "api_reason": self._api_reason,
                "native_diff": f.native_diff, "naive_reason": f.naive_reason,
                "metacopy": f.metacopy}

    def _recover(self) -> None:
        """Finish what a crashed process left: temp and trash dirs, dangling links, empty merged."""
        for entry in os.scandir(self.home):
            if entry.name.startswith(_SCRATCH) and entry.is_dir() and \
                    not _owner_alive(entry.name):
                _mount.unmount_all_under(entry.path)
                shutil.rmtree(entry.path, ignore_errors=True)
        for entry in os.scandir(self.home / LINK_DIR):
            if entry.is_symlink() and not os.path.exists(entry.path):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.path)
        for name in self._layer_dirs():
            # an empty merged/ left by a process that died after its unmount; rmdir alone
            # decides (a mount point is EBUSY, a missing one ENOENT): one call per layer
            with contextlib.suppress(OSError):
                os.rmdir(f"{self.home}/{name}/merged")
            if self._quota is not None:
                self._quota.note_existing(self.home / name)

    def _import_records(self) -> list[LayerRecord]:
        """A home from before the store: parents from the ``lower`` files (Docker's
        layout; it kept no read-write flag, so every imported layer reads as read-only)."""
        records = []
        for name in self._layer_dirs():
            layer = self.home / name
            lowers = read_lowers(layer)
            parent = id_of_link(self.home, lowers[0]) if lowers else None
            records.append(LayerRecord(layer_id_of(layer.name), parent, False,
                                       {"link": read_text(layer / "link")}))
        return records

    def _data_ids(self) -> list[str]:
        return [layer_id_of(name) for name in self._layer_dirs()]

    def _restore_links(self) -> None:
        """Every recorded layer's ``l/`` link exists (a power cut may have lost one)."""
        present = {entry.name for entry in os.scandir(self.home / LINK_DIR)}
        for record in self.layer_store.records():
            short = record.fields.get("link")
            if short and short not in present:
                os.symlink(f"../{dir_name(record.id)}/diff", self.home / LINK_DIR / short)

    def _layer_dirs(self) -> list[str]:
        """Names of the layer directories in the home (strings: 1,000 Paths cost ms)."""
        return [e.name for e in os.scandir(self.home)
                if e.name != LINK_DIR and is_valid_id(layer_id_of(e.name))
                and e.is_dir(follow_symlinks=False)]

    # -- helpers ------------------------------------------------------------
    @staticmethod
    def _is_mounted(path: str) -> bool:
        try:
            return fsinfo.fs_magic(path) == fsinfo.OVERLAY_MAGIC
        except OSError:
            return False

    def _path(self, layer_id: str) -> Path:
        return self.home / dir_name(layer_id)

    def _lowers(self, record: LayerRecord) -> list[str]:
        """``l/<short>`` of every parent, nearest first (what the ``lower`` file says)."""
        return [f"{LINK_DIR}/{r.fields.get('link', '')}"
                for r in self.layer_store.lineage(record.id)[1:]]

    def _mount_call(self, target: str, lowers: list[str], upper: str | None, work: str | None,
                    readonly: bool, options: list[tuple[str, str | None]] | None = None) -> None:
        fn = mountapi.mount_new_api if self._new_api else mountapi.mount_legacy
        fn(target, lowers, upper, work, self._features.options if options is None else options,
           readonly=readonly)

    # -- hooks of the Driver template ----------------------------------------
    def _create_options(self, storage_opt: Mapping[str, str] | None, rw: bool) -> int | None:
        size = parse_options(storage_opt, self.LAYER_OPTIONS, what="layer storage option")["size"]
        if size is not None and not rw:
            raise InvalidOption("the size option is only supported for read-write layers")
        if rw and size is None and self._default_size:
            size = self._default_size
        if size and self._quota is None:
            raise InvalidOption(f"size: {self._quota_reason}")
        return size

    def _create_data(self, record: LayerRecord, parent: LayerRecord | None, size: int | None,
                     mount_label: str) -> dict[str, str]:
        lowers: list[str] = []
        if parent is not None:
            lowers = [f"{LINK_DIR}/{parent.fields.get('link', '')}"] + self._lowers(parent)
            if len(lowers) > self.max_depth:
                raise DepthExceeded(
                    f"cannot create {record.id!r} on {parent.id!r}: it would stack {len(lowers)} "
                    f"lower layers, more than the limit of {self.max_depth} "
                    f"({NEW_API if self._new_api else LEGACY}); squash the image or "
                    "start a new chain")
        if os.path.lexists(self._path(record.id)):
            self._remove_data(record.id)        # a failed remove's data, without a record
        fields = {"link": self._build(record.id, parent, lowers, size, new_short_name())}
        return {**fields, "size": size} if size else fields

    def _data_present(self, record: LayerRecord) -> bool:
        return os.path.isdir(f"{self.home}/{dir_name(record.id)}/diff")

    def _rebuild_data(self, record: LayerRecord, parent: LayerRecord | None) -> None:
        lowers = [f"{LINK_DIR}/{parent.fields.get('link', '')}"] + self._lowers(parent) \
            if parent is not None else []
        with contextlib.suppress(FileNotFoundError):     # the l/ link of the lost data
            os.unlink(f"{self.home}/{LINK_DIR}/{record.fields['link']}")
        self._remove_data(record.id)                     # what the power cut left of it
        size = record.fields.get("size") if self._quota is not None else None
        self._build(record.id, parent, lowers, size, record.fields["link"])

    def _build(self, layer_id: str, parent: LayerRecord | None, lowers: list[str],
               size: int | None, short: str) -> str:
        """Make the layer in a temp dir and rename it into place: all or nothing (not
        flushed: the Driver template's durability rule). Returns its short link name."""
        home = str(self.home)
        tmp = f"{home}/.tmp-{layer_id}-{os.getpid()}-{os.urandom(4).hex()}"
        link = f"{home}/{LINK_DIR}/{short}"
        try:
            os.mkdir(tmp, 0o710)
            faults.point("overlay2.create.after_mkdir")
            if size:
                try:
                    self._quota.set_quota(Path(tmp), size)
                except OSError as exc:
                    raise DriverError(f"cannot set the size limit of {layer_id!r}: "
                                      f"{exc.strerror}") from None
            os.mkdir(f"{tmp}/diff")
            os.chmod(f"{tmp}/diff", 0o755)          # the layer root is 0755 whatever the umask
            _write(f"{tmp}/link", short)
            if parent is not None:
                os.mkdir(f"{tmp}/work", 0o700)
                _write(f"{tmp}/lower", ":".join(lowers))
                _write(f"{self._path(parent.id)}/committed", "")
            os.symlink(f"../{dir_name(layer_id)}/diff", link)
            faults.point("overlay2.create.after_link")
            os.rename(tmp, self._path(layer_id))
            faults.point("overlay2.create.after_rename")
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            try:
                os.unlink(link)
            except FileNotFoundError:
                pass
            raise
        return short

    def _busy(self, id: str) -> str | None:
        layer = self._path(id)
        return self._refs.in_use(str(layer / "merged"), str(layer / "diff"))

    def _prepare_remove(self, id: str) -> None:
        merged = self._path(id) / "merged"
        if merged.exists():
            self._drop_mount(str(merged))          # a stale mount left by a crashed process

    def _remove_data(self, id: str) -> None:
        layer = self._path(id)
        if not os.path.lexists(layer):
            return
        trash = self.home / f".trash-{id}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        os.rename(layer, trash)                 # from here on the layer is gone
        faults.point("overlay2.remove.after_rename")
        short = read_text(trash / "link")
        if short:
            try:
                os.unlink(self.home / LINK_DIR / short)
            except FileNotFoundError:
                pass
        faults.point("overlay2.remove.after_link")
        try:
            shutil.rmtree(trash)
        except OSError:
            _mount.unmount_all_under(trash)
            shutil.rmtree(trash, ignore_errors=True)

    def _drop_mount(self, merged: str) -> None:
        try:
            _mount.umount(merged, _mount.MNT_DETACH)
        except OSError as exc:
            if exc.errno not in (errno.EINVAL, errno.ENOENT):
                raise
        faults.point("overlay2.unmount.after_umount")
        # the rmdir detaches the copies of this mount in other mount namespaces (Linux
        # 3.18+), which would keep the upper dir in use and fail its next mount (Docker's
        # Put does the same); it costs 30-80 us on ext4
        try:
            os.rmdir(merged)
        except FileNotFoundError:
            pass

    def _mount_data(self, record: LayerRecord, mount_label: str) -> Path:
        id = record.id
        layer = f"{self.home}/{dir_name(id)}"      # strings: pathlib costs more than a syscall
        if record.parent is None:              # a base layer needs no overlay, only a count
            self._refs.increment(f"{layer}/diff")
            return Path(layer, "diff")
        merged = f"{layer}/merged"
        refs = self._refs
        fresh = False
        if not refs.count(merged):
            try:
                os.mkdir(merged, 0o700)
                fresh = True                   # nothing can be mounted on a new directory
            except FileExistsError:
                pass
        # a mount we did not make (another process, or a crashed one): count it, never
        # unmount it from cleanup()
        if refs.increment(merged, fresh=fresh) > 1 or refs.found(merged):
            return Path(merged)
        try:
            faults.point("overlay2.mount.after_mkdir")
            lowers = self._lowers(record)
            # a layer with children is mounted read-only (Docker's committed mark)
            readonly = os.path.exists(f"{layer}/committed") or bool(self.layer_store.children(id))
            options_extra = [("context", mount_label)] if mount_label else []
            if readonly:
                args = ([f"{LINK_DIR}/{record.fields.get('link', '')}"] + lowers, None, None)
            else:
                name = dir_name(id)
                args = (lowers, f"{name}/diff", f"{name}/work")
            if len(args[0]) > self.max_depth:
                raise DepthExceeded(f"layer {id!r} stacks {len(args[0])} lower layers; "
                                    f"this mount method takes at most {self.max_depth}")
            options = self._features.options + options_extra
            if self._new_api:
                # fsconfig takes one path per call, so absolute paths fit at any depth and
                # the mount needs no thread with its own cwd (a third of its time here)
                home = self.home
                lowers, upper, work = (
                    [f"{home}/{p}" for p in args[0]],
                    *(f"{home}/{p}" if p else None for p in args[1:]))
                self._mount_call(merged, lowers, upper, work, readonly, options)
            else:
                mountapi.in_directory(self.home, lambda: self._mount_call(
                    f"{dir_name(id)}/merged", args[0], args[1], args[2], readonly, options))
            faults.point("overlay2.mount.after_mount")
        except BaseException:
            refs.decrement(merged)
            try:
                os.rmdir(merged)
            except OSError:
                pass
            raise
        return Path(merged)

    def _unmount_data(self, id: str, record: LayerRecord | None) -> None:
        if record is None:
            raise LayerNotFound(f"layer {id!r} does not exist in {self.home}")
        layer = f"{self.home}/{dir_name(id)}"
        if record.parent is None:
            self._refs.decrement(f"{layer}/diff")
            return
        merged = f"{layer}/merged"
        if self._refs.decrement(merged) > 0:
            return
        if not self._refs.others(merged):   # another live process still uses it
            self._drop_mount(merged)

    # -- `graphdrivers check` (drivers/check/, check.py) ------------------------
    def check_findings(self) -> list[Finding]:
        from . import check
        return check.findings(self)

    def _quarantine_data(self, id: str, dest: Path) -> None:
        layer = self._path(id)
        if not os.path.lexists(layer):
            return
        if (layer / "merged").exists():
            self._drop_mount(layer / "merged")     # a stale mount: nobody holds it (_busy)
        short = read_text(layer / "link")
        os.rename(layer, dest)
        if short:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.home / LINK_DIR / short)

    def _mount_layer(self, mountpoint: str) -> str | None:
        parent, name = os.path.split(mountpoint)
        if name == "merged" and os.path.dirname(parent) == str(self.home):
            return layer_id_of(os.path.basename(parent))
        return None

    # -- LayerMounts (capabilities.py) -------------------------------------------
    def layer_mounts(self, id: str, *, readonly: bool) -> list[MountSpec]:
        """Writable: an overlay of the parents under the layer's own upper dir (a bind of
        it for a base layer). Read-only: the layer and its parents, without an upper
        dir (a bind of one directory when that is all there is). See external.py for
        the depth limit of a caller's mount(2)."""
        record = self._record(check_id(id))
        home = str(self.home)
        upper = f"{home}/{dir_name(id)}/diff"
        lowers = [f"{home}/{lower}" for lower in self._lowers(record)]
        if readonly:
            lowers.insert(0, f"{home}/{LINK_DIR}/{record.fields.get('link', '')}")
            if len(lowers) == 1:
                return [MountSpec("bind", upper, ("ro", "rbind"))]
            return [external.overlay_mount(lowers, None, None, self._features.options,
                                           readonly=True)]
        if not lowers:
            return [MountSpec("bind", upper, ("rw", "rbind"))]
        work = f"{home}/{dir_name(id)}/work"
        if not os.path.isdir(work):
            raise DriverError(f"layer {id} was created read-only (it has no overlay work "
                              "dir); it can only be mounted read-only")
        return [external.overlay_mount(lowers, upper, work, self._features.options,
                                       readonly=False)]

    def layer_usage(self, id: str) -> Usage:
        self._record(check_id(id))
        with os_errors(f"measure layer {id}"):
            return tree_usage(self._path(id) / "diff")

    def status(self) -> list[tuple[str, str]]:
        f = self._features
        rows = [
            ("Backing Filesystem", f.backing_fs),
            ("Supports d_type", str(f.d_type).lower()),
            ("Native Overlay Diff", str(f.native_diff).lower()),
        ]
        if not f.native_diff:
            rows.append(("Native Overlay Diff Disabled Because", f.naive_reason))
        rows += [
            ("Using metacopy", str(f.metacopy).lower()),
            ("Mount Method", NEW_API if self._new_api else
             f"{LEGACY} ({self._api_reason})"),
            ("Max Depth", str(self.max_depth)),
            ("Mount Options", ",".join(k if v is None else f"{k}={v}" for k, v in f.options)),
            ("Quota", f"XFS project quota (default size {format_size(self._default_size)})"
             if self._quota and self._default_size else
             "XFS project quota" if self._quota else f"unavailable: {self._quota_reason}"),
            ("Layers", str(len(self.layers()))),
        ]
        if self._override_kernel_check:
            rows.append(("Override Kernel Check", "accepted, changes nothing (overlay support "
                                                  "is decided by a test mount)"))
        return rows

    def _layer_options(self, record: LayerRecord) -> dict[str, str]:
        size = record.fields.get("size")
        return {"size": str(size)} if size else {}

    def _metadata(self, record: LayerRecord) -> dict[str, str]:
        layer = self._path(record.id)
        meta = {"WorkDir": str(layer / "work"), "MergedDir": str(layer / "merged"),
                "UpperDir": str(layer / "diff")}
        lowers = self._lowers(record)
        if lowers:
            meta["LowerDir"] = ":".join(os.path.realpath(self.home / lower) for lower in lowers)
        return meta

    def cleanup(self) -> None:
        """Unmount every layer this driver mounted (or adopted by mounting it again).

        Mounts held by another live process on the same home are left alone;
        stale ones from a crash are unmounted by ``remove`` or adopted by ``mount``.
        """
        for path in self._refs.paths():
            found = self._refs.found(path)
            self._refs.forget(path)
            if not found and path.endswith("/merged") and not self._refs.others(path):
                self._drop_mount(path)
        super().cleanup()

    # -- diffs (the template checked both ids and resolved the parent) ----------
    def _native(self, record: LayerRecord, parent: str | None) -> bool:
        """Whether the upper dir alone answers for the layer against ``parent``."""
        return self._features.native_diff and parent == record.parent

    def _lower_roots(self, record: LayerRecord) -> list[str]:
        return [str(self.home / lower) for lower in self._lowers(record)]

    def _diff(self, record: LayerRecord, parent: str | None) -> BinaryIO:
        if not self._native(record, parent):
            return super()._diff(record, parent)
        return export_tree(self._path(record.id) / "diff", fmt=OVERLAY)

    def _changes(self, record: LayerRecord, parent: str | None) -> list[Change]:
        if not self._native(record, parent):
            return super()._changes(record, parent)
        return _diff.native_changes(str(self._path(record.id) / "diff"),
                                    self._lower_roots(record))

    def _apply_diff(self, record: LayerRecord, parent: str | None, diff: BinaryIO) -> int:
        if not self._native(record, parent):
            return super()._apply_diff(record, parent, diff)
        upper = self._path(record.id) / "diff"
        return apply_tar(upper, diff, fmt=UpperDir(upper, self._lower_roots(record)))

    def _diff_size(self, record: LayerRecord, parent: str | None) -> int:
        if not self._native(record, parent):
            return super()._diff_size(record, parent)
        return _diff.upper_size(str(self._path(record.id) / "diff"))

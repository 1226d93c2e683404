"""The thin pool: where it lives (loop files, block devices, an existing pool, LVM),
bringing it up, the thin-device messages, status and online growth.

All kernel work goes through graphdrivers.devmapper.dm (raw ioctls); the only
subprocesses are the LVM tools (direct-lvm setup and `pool resize --extend`).
"""
from __future__ import annotations

import errno
import logging
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from graphdrivers.kernel import loop as loopback
from graphdrivers.store.atomicfile import fsync_dir
from graphdrivers.errors import DriverError, InvalidOption, NoSpace, NotSupported

from . import blockdev, dm, faults
from .config import Config
from .poolstatus import (SECTOR, PoolStatus, ThinStatus, check_device_id, parse_pool_status,
                         parse_thin_status, thin_pool_table, thin_table)

log = logging.getLogger(__name__)

# error_if_no_space: a full pool fails writes at once (ENOSPC) instead of queueing
# them for 60 s; skip_block_zeroing: the filesystem never reads what it did not write.
FEATURES = ("skip_block_zeroing", "error_if_no_space")
LOOPBACK_WARNING = ("Usage of loopback devices is strongly discouraged for production use. "
                    "Use `--storage-opt dm.thinpooldev` to specify a custom block storage device.")


def device_prefix(home: Path) -> str:
    """Names of our dm devices: unique per home (its device and inode), as Docker does."""
    st = os.stat(home)
    return f"graphdrivers-{os.major(st.st_dev)}:{os.minor(st.st_dev)}-{st.st_ino}"


def ensure_image(path: Path, size: int) -> bool:
    """Make ``path`` a sparse file of at least ``size`` bytes; True if it was created.

    A file's size is the pool's record of how big it was made or grown: it is
    flushed before the pool uses the new room, so a power cut cannot leave a
    pool table longer than its file (the kernel would refuse to load it).
    """
    created = not path.exists()
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        if os.fstat(fd).st_size < size:
            os.ftruncate(fd, size)
            os.fsync(fd)
    finally:
        os.close(fd)
    if created:
        fsync_dir(path.parent)
    return created


class Pool:
    """A thin pool in use by the driver. ``owned``: we built it and tear it down at cleanup."""

    def __init__(self, name: str, kind: str, owned: bool, *, data_file: Path | None = None,
                 metadata_file: Path | None = None, data_device: str = "", metadata_device: str = ""):
        self.name = name
        self.kind = kind              # "loop", "block", "external", "lvm"
        self.owned = owned
        self.data_file = data_file
        self.metadata_file = metadata_file
        self.data_device = data_device
        self.metadata_device = metadata_device

    # -- setup ------------------------------------------------------------
    @classmethod
    def setup(cls, home: Path, prefix: str, cfg: Config, *, fresh: bool) -> "Pool":
        """Bring the pool up (or adopt a running one). ``fresh``: no layer state exists yet."""
        if cfg.thinpooldev:
            return cls._external(cfg.thinpooldev, "external", fresh)
        if cfg.directlvm_device:
            from . import lvm
            name = lvm.setup(home, cfg)
            return cls._external(name, "lvm", fresh)
        name = f"{prefix}-pool"
        if cfg.datadev:
            return cls._block(name, cfg, fresh)
        return cls._loop(home, name, cfg)

    @classmethod
    def _external(cls, name: str, kind: str, fresh: bool) -> "Pool":
        info = _adopt(name)
        if info is None:
            raise InvalidOption(f"thin pool /dev/mapper/{name} does not exist; create it first "
                                "or drop dm.thinpooldev")
        table = dm.table(name)
        if not table or table[0][2] != "thin-pool":
            raise InvalidOption(f"/dev/mapper/{name} is not a thin pool (target {table[0][2] if table else 'none'})")
        meta, data = table[0][3].split()[:2]
        pool = cls(name, kind, owned=False, data_device=data, metadata_device=meta)
        if fresh:
            st = pool.status()
            if st.used_data_blocks or st.transaction_id:
                raise InvalidOption(
                    f"unable to take ownership of thin pool {name}: it already holds data "
                    f"({st.used_data_blocks} used data blocks, transaction id {st.transaction_id}); "
                    "give an empty pool")
        return pool

    @classmethod
    def _block(cls, name: str, cfg: Config, fresh: bool) -> "Pool":
        data, meta = cfg.datadev, cfg.metadatadev
        pool = cls(name, "block", owned=True, data_device=data, metadata_device=meta)
        if _adopt(name) is not None:
            return pool
        for path, what in ((data, "dm.datadev"), (meta, "dm.metadatadev")):
            blockdev.device_numbers(path)
            # on a restart the data device holds the base filesystem's superblock: only a
            # fresh pool must start from a clean device
            blockdev.check_unused(path, what, allow_signature=not fresh)
        if data == meta or blockdev.device_numbers(data) == blockdev.device_numbers(meta):
            raise InvalidOption("dm.datadev and dm.metadatadev must be different devices")
        if fresh:
            _zero_header(meta)   # the kernel formats metadata that starts with zeros
        pool._create_table(cfg, meta, data, blockdev.size_bytes(data))
        return pool

    @classmethod
    def _loop(cls, home: Path, name: str, cfg: Config) -> "Pool":
        loopdir = home / "devicemapper"
        loopdir.mkdir(mode=0o700, exist_ok=True)
        data_file, meta_file = loopdir / "data", loopdir / "metadata"
        pool = cls(name, "loop", owned=True, data_file=data_file, metadata_file=meta_file)
        # the files' sizes are what the pool was made or resized to: a load without
        # dm.loop* keeps them; a larger value grows the pool as `pool resize` does
        grow_data = _asked_growth(data_file, cfg.loopdatasize, cfg.loopdatasize_given, "data")
        grow_meta = _asked_growth(meta_file, cfg.loopmetadatasize, cfg.loopmetadatasize_given,
                                  "metadata")
        # refuse before bringing anything up: a refused load changes nothing
        pool._check_growth(data_file, grow_data, "data", force=False)
        pool._check_growth(meta_file, grow_meta, "metadata", force=False)
        if _adopt(name) is not None:   # left running by a process that ended
            pool._find_loop_devices()
        else:
            log.warning("devicemapper: %s", LOOPBACK_WARNING)
            pool._attach_files(cfg)
        if grow_data or grow_meta or pool._behind():
            pool.resize(data_size=grow_data, metadata_size=grow_meta)
        return pool

    def _attach_files(self, cfg: Config) -> None:
        """Loop devices on the files (made at the configured sizes if missing), then the table."""
        data_file, meta_file = self.data_file, self.metadata_file
        assert data_file and meta_file
        if not data_file.exists():
            ensure_image(data_file, cfg.loopdatasize)
        if not meta_file.exists():
            ensure_image(meta_file, cfg.loopmetadatasize)
        data_loop = loopback.attach(data_file, direct_io=cfg.loop_direct_io)
        try:
            meta_loop = loopback.attach(meta_file, direct_io=cfg.loop_direct_io)
            try:
                self.data_device, self.metadata_device = data_loop.path, meta_loop.path
                # the pool's table holds the loops now; autoclear frees them with the pool
                self._create_table(cfg, meta_loop.path, data_loop.path, data_file.stat().st_size)
            finally:
                meta_loop.close()
        finally:
            data_loop.close()

    def _behind(self) -> bool:
        """A file grown by a resize that ended before the pool took the room (a crash)."""
        return any(blockdev.size_bytes(device) < path.stat().st_size
                   for path, device in ((self.data_file, self.data_device),
                                        (self.metadata_file, self.metadata_device)))

    def _refresh_devices(self) -> None:
        meta, data = dm.table(self.name)[0][3].split()[:2]
        self.metadata_device, self.data_device = meta, data

    def _find_loop_devices(self) -> None:
        meta, data = dm.table(self.name)[0][3].split()[:2]
        self.metadata_device, self.data_device = _node_for(meta), _node_for(data)

    def _create_table(self, cfg: Config, meta: str, data: str, data_bytes: int) -> None:
        block_sectors = cfg.blocksize // SECTOR
        if data_bytes // SECTOR // block_sectors < 16:
            raise InvalidOption(f"the pool's data device {data} is too small ({data_bytes} bytes)")
        dm.create(self.name, thin_pool_table(meta, data, data_bytes // SECTOR, block_sectors,
                                             features=FEATURES))

    # -- messages ---------------------------------------------------------
    def status(self, *, noflush: bool = False) -> PoolStatus:
        """The pool's status (by default the pool commits its metadata first)."""
        rows = dm.status(self.name, noflush=noflush)
        if len(rows) != 1 or rows[0][2] != "thin-pool":
            raise DriverError(f"{self.name} is not a thin pool (its table: "
                              f"{', '.join(r[2] for r in rows) or 'none'})")
        return parse_pool_status(rows[0][1], rows[0][3])

    def transaction_id(self) -> int:
        return self.status().transaction_id

    def set_transaction_id(self, old: int, new: int) -> None:
        dm.message(self.name, f"set_transaction_id {old} {new}")

    def create_thin(self, device_id: int) -> None:
        """New empty thin device ``device_id`` (EEXIST if the id is taken)."""
        check_device_id(device_id)
        dm.message(self.name, f"create_thin {device_id}")

    def create_snap(self, device_id: int, origin_id: int) -> None:
        """Snapshot ``origin_id`` as ``device_id``; an active origin must be suspended."""
        check_device_id(device_id)
        check_device_id(origin_id)
        dm.message(self.name, f"create_snap {device_id} {origin_id}")

    def delete_thin(self, device_id: int) -> None:
        """Delete thin device ``device_id`` (it must not be active; ENODATA if unknown)."""
        check_device_id(device_id)
        dm.message(self.name, f"delete {device_id}")

    # -- thin devices -----------------------------------------------------
    def majmin(self) -> str:
        info = dm.info(self.name)
        if info is None:
            raise DriverError(f"thin pool {self.name} is gone; was it removed by hand?")
        return f"{info.major}:{info.minor}"

    def activate(self, name: str, device_id: int, size: int) -> str:
        """Make /dev/mapper/<name> for thin ``device_id`` (cancelling a pending deferred remove)."""
        info = dm.info(name)
        table = thin_table(self.majmin(), device_id, size // SECTOR)
        if info is not None and info.deferred_remove:
            try:
                dm.message(name, "@cancel_deferred_remove")
            except OSError as exc:
                if exc.errno != errno.ENXIO:
                    raise
            info = dm.info(name)
        if info is None:
            dm.create(name, table)
        elif dm.table(name)[0][1] != size // SECTOR:   # the record grew (dm.basesize / size)
            dm.load_table(name, table)
            dm.suspend(name)
            dm.resume(name)
        return block_path(name)

    def deactivate(self, name: str, *, deferred: bool = False) -> None:
        if dm.info(name) is None:
            return
        try:
            dm.remove(name, deferred=deferred)
        except OSError as exc:
            if exc.errno != errno.ENXIO:   # went away meanwhile
                raise

    def teardown(self) -> None:
        if self.owned and dm.info(self.name) is not None:
            dm.remove(self.name)

    # -- growth -----------------------------------------------------------
    def resize(self, data_size: int | None = None, metadata_size: int | None = None,
               *, force: bool = False, extend: str | None = None,
               extend_metadata: str | None = None) -> None:
        """Grow the pool online: grow the files (loop pools), refresh the loops, reload the table.

        ``extend`` / ``extend_metadata`` (direct-lvm pools only): lvextend the thin pool LV
        by that much first (``SIZE``, ``+SIZE`` or, for data, ``N%FREE``).
        """
        if (extend or extend_metadata) and self.kind != "lvm":
            raise InvalidOption(f"--extend runs lvextend and works on direct-lvm pools only; this "
                                f"pool is on {self.kind} devices: grow them yourself, then resize "
                                "without sizes")
        if self.kind == "lvm" and (data_size or metadata_size):
            raise InvalidOption("a direct-lvm pool grows with extend (lvextend), not with "
                                "dm.loopdatasize / dm.loopmetadatasize; nothing was changed")
        if self.kind == "lvm":
            from . import lvm
            # validate both amounts before running anything: a refusal touches nothing
            data = lvm.parse_extend(extend, "data", allow_free=True)
            meta = lvm.parse_extend(extend_metadata, "metadata", allow_free=False)
            if data or meta:
                lvm.extend(data, meta)
                # LVM reloaded the pool (suspend, load, resume); it may have stacked a -tpool layer
                self.name = lvm.pool_name()
                self._refresh_devices()
                return
        if self.kind == "loop":
            assert self.data_file and self.metadata_file
            self._check_growth(self.data_file, data_size, "data", force)
            self._check_growth(self.metadata_file, metadata_size, "metadata", force)
            self._find_loop_devices()
            for path, size, device in ((self.data_file, data_size, self.data_device),
                                       (self.metadata_file, metadata_size, self.metadata_device)):
                if size and size > path.stat().st_size:
                    ensure_image(path, size)
                # also catches up after a crash between growing the file and this step
                if blockdev.size_bytes(device) < path.stat().st_size:
                    loopback.refresh_capacity(device)
            faults.point("devmapper.resize.after_grow_files")
        elif data_size or metadata_size:
            raise InvalidOption(f"a pool on {self.kind} devices is grown by growing its devices "
                                "(lvextend, a bigger disk) and then resizing without sizes; "
                                "nothing was changed")
        self.reload()

    def _check_growth(self, path: Path, size: int | None, what: str, force: bool) -> None:
        if not size:
            return
        _refuse_shrink(path, size, what)
        current = path.stat().st_size
        free = _host_free(path)
        if not force and size - current > free:
            raise NoSpace(
                f"growing the {what} file by {size - current} bytes (to {size}) "
                f"but the filesystem under {path} has only {free} free; free space there or "
                "(pool resize only) pass --force to grow the sparse file anyway")

    def reload(self) -> None:
        """Reload the pool's table with the data device's current length (suspend, load, resume)."""
        row = dm.table(self.name)[0]
        params = row[3].split()
        block_sectors = int(params[2])
        data_dev = _node_for(params[1])
        sectors = blockdev.size_bytes(data_dev) // SECTOR // block_sectors * block_sectors
        if sectors < row[1]:
            raise InvalidOption(f"the data device {data_dev} is smaller than the pool "
                                f"({sectors} < {row[1]} sectors); refusing to shrink")
        dm.load_table(self.name, [(0, sectors, "thin-pool", row[3])])
        dm.suspend(self.name)
        faults.point("devmapper.resize.after_suspend")   # a restart resumes it (adopt)
        dm.resume(self.name)   # the thin-pool also picks up a grown metadata device here
        faults.point("devmapper.resize.after_reload")

    def host_free(self) -> int | None:
        return _host_free(self.data_file) if self.data_file else None


def _refuse_shrink(path: Path, size: int, what: str) -> None:
    current = path.stat().st_size
    if size < current:
        raise InvalidOption(f"cannot shrink the pool's {what} file from {current} to {size} "
                            "bytes: shrinking a thin pool destroys data; nothing was changed")


def _asked_growth(path: Path, size: int, given: bool, what: str) -> int | None:
    """The new size of an existing loop file when an explicit option asks for more."""
    if not given or not path.exists():
        return None
    _refuse_shrink(path, size, what)
    return size if size > path.stat().st_size else None


def block_path(name: str) -> str:
    """The kernel's own node /dev/dm-<minor> (devtmpfs makes it synchronously; the
    /dev/mapper/<name> link is udev's and may be replaced under us), else /dev/mapper."""
    info = dm.info(name)
    if info is None:
        raise DriverError(f"device-mapper device {name} does not exist")
    path = f"/dev/dm-{info.minor}"
    try:
        if os.stat(path).st_rdev == os.makedev(info.major, info.minor):
            return path
    except FileNotFoundError:
        pass
    return dm.device_path(name)


def thin_status(name: str) -> ThinStatus:
    """The status of the active thin device ``name`` (how much of it is mapped)."""
    rows = dm.status(name)
    if len(rows) != 1 or rows[0][2] != "thin":
        raise DriverError(f"{name} is not a thin device")
    return parse_thin_status(rows[0][3])


def _adopt(name: str):
    """Info of a running pool, resumed if a process died with it suspended (mid-resize)."""
    info = dm.info(name)
    if info is not None and info.suspended:
        log.warning("devicemapper: pool %s was left suspended; resuming it", name)
        dm.resume(name)
        info = dm.info(name)
    return info


def _zero_header(path: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.pwrite(fd, bytes(4096), 0)
        os.fsync(fd)
    finally:
        os.close(fd)


def _node_for(majmin: str) -> str:
    """/dev path of a device named as major:minor in a table (or already a path)."""
    if ":" not in majmin:
        return majmin
    name = os.path.basename(os.path.realpath(f"/sys/dev/block/{majmin}"))
    path = f"/dev/{name}"
    if not os.path.exists(path):
        major, minor = (int(x) for x in majmin.split(":"))
        os.mknod(path, 0o600 | 0o060000, os.makedev(major, minor))
    return path


def _host_free(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def check_available() -> None:
    reason = dm.available()
    if reason:
        raise NotSupported(f"devicemapper: {reason}")


class PoolLock:
    """Serialises pool changes across threads and processes (a running plugin and the CLI).

    flock on ``<home>/pool.lock``; re-entrant inside one process.
    """

    def __init__(self, path: Path):
        import threading
        self._path = path
        self._rlock = threading.RLock()
        self._depth = 0
        self._fd = -1

    def __enter__(self) -> "PoolLock":
        import fcntl
        self._rlock.acquire()
        if self._depth == 0:
            fd = os.open(self._path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            fcntl.flock(fd, fcntl.LOCK_EX)
            self._fd = fd
        self._depth += 1
        return self

    def __exit__(self, *exc: object) -> None:
        self._depth -= 1
        if self._depth == 0:
            os.close(self._fd)
            self._fd = -1
        self._rlock.release()


@contextmanager
def try_flock(path: Path) -> Iterator[bool]:
    """A non-blocking exclusive flock on ``path`` while inside: yields whether it was had
    (work that one process at a time does, and that another holder is doing already)."""
    import fcntl
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)

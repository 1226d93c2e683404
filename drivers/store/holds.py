"""Who holds what, across every process that uses one home: mount holds and id locks.

Mount counts live in each process's memory (refcount.py); this module makes
them visible to the other processes on the same home, so that none of them
removes or unmounts a layer that a live process still has mounted, and it
serialises the operations on one layer id across processes.

Layout, under a run directory that only lives as long as this boot:

    /run/graphdrivers/<boot id>/<home dev>-<home inode>/
        holds/<mount key>@<pid>-<start time>-<n>   driver instance n holds that mount
        locks/<layer id>                        flock(2) target of that id
        inflight/<layer id>                     an apply_diff in progress (holds its owner)
        probe-<name>.json                       what a start-up check found this boot

A hold whose process is gone (or whose pid was reused: the start time differs)
is stale and removed by whoever finds it, so a crashed process never pins a
layer. Nothing here is flushed: the files describe running processes, which a
power cut ends too. ``GRAPHDRIVERS_RUN_DIR`` moves the root (default
``/run/graphdrivers``).
"""
from __future__ import annotations

import contextlib
import fcntl
import itertools
import json
import os
import stat
import threading
from pathlib import Path
from typing import Any, Callable, Iterator, Tuple

_SEP = "@"
_IDLE_LOCKS = 64
LockHandle = Tuple[int, int]        # (fd, inode) of a lock file
_instances = itertools.count(1)


def _run_root() -> Path:
    return Path(os.environ.get("GRAPHDRIVERS_RUN_DIR") or "/run/graphdrivers")


def _boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return "boot"


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (None: no such process)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    return stat[stat.rindex(b")") + 2:].split()[19].decode()   # field 22 of proc(5)


def _alive(owner: str) -> bool:
    pid, started, _ = (owner.split("-") + ["", ""])[:3]
    return pid.isdigit() and _start_time(int(pid)) == started


class HomeRun:
    """The run directory of one driver home."""

    def __init__(self, home: str | os.PathLike):
        self.home = os.path.abspath(home)
        st = os.stat(self.home)
        self.dir = _run_root() / _boot_id() / f"{st.st_dev}-{st.st_ino}"
        # plain strings on the hot paths: pathlib costs more than the syscalls here
        self._holds = str(self.dir / "holds")
        self._locks = str(self.dir / "locks")
        self._inflight = str(self.dir / "inflight")
        self._prefix = self.home.rstrip("/") + "/"
        self._owner: tuple[int, str] | None = None
        self._idle: dict[str, LockHandle] = {}      # unlocked lock files kept open, oldest first
        self._idle_guard = threading.Lock()
        self._idle_pid = os.getpid()
        self._forgotten: set[str] = set()
        self._snapshot = threading.local()          # one_look()'s listing

    # -- identity ------------------------------------------------------------
    def owner(self) -> str:
        """``<pid>-<start time>-<instance>``: this driver instance (two instances in one
        process hold separately, as two processes do); recomputed after a fork."""
        pid = os.getpid()
        if self._owner is None or self._owner[0] != pid:
            self._owner = (pid, f"{pid}-{_start_time(pid)}-{next(_instances)}")
        return self._owner[1]

    # -- probes ------------------------------------------------------------------
    def remembered(self, name: str, probe: Callable[[], dict[str, Any]], *,
                   again: bool = False) -> dict[str, Any]:
        """``probe()``'s result, run once per boot and home: kernel features and the home's
        filesystem do not change under a running system, and probes that mount cost more
        than the rest of a driver's start-up (containers/storage keeps its overlay feature
        checks in its run root for the same reason). A probe that raises is not kept.
        ``again``: run it anyway (a new home: its directory may have the inode of a home
        removed earlier in this boot, whose run directory this is)."""
        path = f"{self.dir}/probe-{name}.json"
        try:
            if not again:
                with open(path) as f:
                    return json.load(f)
        except (FileNotFoundError, ValueError):
            pass
        found = probe()
        os.makedirs(self.dir, mode=0o700, exist_ok=True)
        temp = f"{path}.{os.getpid()}-{threading.get_ident()}"
        with open(temp, "w") as f:
            json.dump(found, f)
        os.replace(temp, path)      # no flush: the run directory ends with the boot
        return found

    # -- mount holds -----------------------------------------------------------
    def _key(self, path: str) -> str:
        relative = path[len(self._prefix):] if path.startswith(self._prefix) else path
        return relative.replace("%", "%25").replace("/", "%2F")

    def set_hold(self, path: str, count: int) -> None:
        """Publish whether this instance holds the mount at ``path`` (count 0 withdraws it).

        Only the 0 <-> 1 transitions touch the disk: the file's existence is the hold,
        the count itself stays in the instance's memory."""
        name = f"{self._holds}/{self._key(path)}{_SEP}{self.owner()}"
        if count <= 0:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(name)
        elif count == 1:
            try:
                _touch(name)
            except FileNotFoundError:   # the first hold on this home (or the dir was cleared)
                os.makedirs(self._holds, mode=0o700, exist_ok=True)
                _touch(name)

    @contextlib.contextmanager
    def one_look(self) -> Iterator[None]:
        """Inside, ``other_holders`` of this thread answers from one listing of the holds
        (a report on every layer), not one per call (what a remove must have)."""
        self._snapshot.names = self._hold_names()
        try:
            yield
        finally:
            self._snapshot.names = None

    def _hold_names(self) -> list[str]:
        try:
            return os.listdir(self._holds)
        except FileNotFoundError:
            return []

    def other_holders(self, path: str) -> list[int]:
        """Pids of the other live processes that hold the mount at ``path``."""
        prefix = f"{self._key(path)}{_SEP}"
        me = self.owner()
        names = getattr(self._snapshot, "names", None)
        if names is None:
            names = self._hold_names()
        holders = []
        for name in names:
            if not name.startswith(prefix):
                continue
            owner = name[len(prefix):]
            if owner == me:
                continue
            if _alive(owner):
                holders.append(int(owner.partition("-")[0]))
            else:   # its process ended without releasing it: reclaim
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(f"{self._holds}/{name}")
        return sorted(holders)

    def release_all(self) -> None:
        """Withdraw every hold of this instance, as the end of its process would."""
        with self._idle_guard:
            self._drop_idle()
        suffix = f"{_SEP}{self.owner()}"
        try:
            names = os.listdir(self._holds)
        except FileNotFoundError:
            return
        for name in names:
            if name.endswith(suffix):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(f"{self._holds}/{name}")

    # -- work in flight --------------------------------------------------------
    @contextlib.contextmanager
    def in_flight(self, layer_id: str) -> Iterator[None]:
        """Mark ``layer_id`` as being changed in place by this instance (an apply_diff)
        for the length of the block. A process killed inside leaves the mark behind, and
        ``abandoned()`` names the layer: its content is half made, which no load can tell
        from the data alone. Not flushed: a power cut ends the boot, and with it this
        directory (what an apply wrote is then as durable as the kernel made it)."""
        path = f"{self._inflight}/{layer_id}"
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        except FileNotFoundError:
            os.makedirs(self._inflight, mode=0o700, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, self.owner().encode())
        finally:
            os.close(fd)
        try:
            yield
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)

    def abandoned(self) -> list[str]:
        """Ids whose in-place change was left unfinished by a process that ended."""
        try:
            names = os.listdir(self._inflight)
        except FileNotFoundError:
            return []
        found = []
        for name in names:
            try:
                with open(f"{self._inflight}/{name}") as f:
                    owner = f.read()
            except FileNotFoundError:
                continue
            if owner != self.owner() and not _alive(owner):
                found.append(name)
        return sorted(found)

    def clear_abandoned(self, layer_id: str) -> None:
        """Drop the mark ``in_flight`` left for ``layer_id`` (the layer was dealt with)."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(f"{self._inflight}/{layer_id}")

    def live_holders(self, path: str) -> list[int]:
        """Pids of every live process holding the mount at ``path``, this one included."""
        prefix = f"{self._key(path)}{_SEP}"
        mine = any(n == prefix + self.owner() for n in self._hold_names())
        return sorted(set(self.other_holders(path)) | ({os.getpid()} if mine else set()))

    # -- id locks --------------------------------------------------------------
    def lock(self, layer_id: str) -> LockHandle:
        """Take the cross-process lock of ``layer_id`` (an exclusive flock); give the
        handle back to ``unlock``. One thread of this instance at a time per id (IdLocks
        sees to that)."""
        path = f"{self._locks}/{layer_id}"
        with self._idle_guard:
            if self._idle_pid != os.getpid():
                self._drop_idle()           # a forked child: those fds share the parent's locks
            handle = self._idle.pop(layer_id, None)
        while True:
            if handle is None:
                handle = _open_lock(path, self._locks)
            try:
                fcntl.flock(handle[0], fcntl.LOCK_EX)
                # a remover may have unlinked the file while we waited: lock the new one
                if _inode(path) == handle[1]:
                    return handle
            except BaseException:
                os.close(handle[0])
                raise
            os.close(handle[0])
            handle = None

    def unlock(self, layer_id: str, handle: LockHandle) -> None:
        """Release a lock from ``lock``. The file stays open for the next operation on the
        id (an open and a close less each time), up to _IDLE_LOCKS files."""
        if layer_id in self._forgotten:
            self._forgotten.discard(layer_id)
            os.close(handle[0])
            return
        fcntl.flock(handle[0], fcntl.LOCK_UN)
        with self._idle_guard:
            self._idle[layer_id] = handle
            if len(self._idle) > _IDLE_LOCKS:
                os.close(self._idle.pop(next(iter(self._idle)))[0])

    @contextlib.contextmanager
    def locked(self, layer_id: str) -> Iterator[None]:
        """``lock``/``unlock`` as a context manager."""
        handle = self.lock(layer_id)
        try:
            yield
        finally:
            self.unlock(layer_id, handle)

    def forget_lock(self, layer_id: str) -> None:
        """Drop the lock file of a removed layer; call it while holding that lock."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(f"{self._locks}/{layer_id}")
        self._forgotten.add(layer_id)

    def close_idle_locks(self) -> None:
        """Close the lock files kept open for the next operation (they reopen on demand)."""
        with self._idle_guard:
            self._drop_idle()

    def _drop_idle(self) -> None:
        for fd, _ in self._idle.values():
            os.close(fd)
        self._idle.clear()
        self._idle_pid = os.getpid()


def _touch(name: str) -> None:
    """Create an empty file in one syscall (mknod; open and close would be two)."""
    try:
        os.mknod(name, 0o600 | stat.S_IFREG)
    except FileExistsError:
        pass


def _open_lock(path: str, directory: str) -> LockHandle:
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except FileNotFoundError:
            os.makedirs(directory, mode=0o700, exist_ok=True)
            continue
        return fd, os.fstat(fd).st_ino


def _inode(path: str) -> int | None:
    try:
        return os.stat(path).st_ino
    except FileNotFoundError:
        return None

"""Per-layer locks: operations on one id are serialised, different ids run in parallel.

With a HomeRun, the lock also holds across processes (an flock in the home's run
directory), so a remove in one process cannot interleave with a mount of the same
layer in another. Callers that need two ids take them in sorted order, except a
create, which holds its new id and may then take its parent's (devicemapper's
snapshot suspends the parent's device): nobody holding an id waits for a child's.

A class, not a generator context manager: every driver operation takes one, and the
generator machinery cost more than the flock itself.
"""
from __future__ import annotations

import threading

from graphdrivers.store.holds import HomeRun, LockHandle


class _Entry:
    __slots__ = ("rlock", "users", "depth", "handle")

    def __init__(self) -> None:
        self.rlock = threading.RLock()
        self.users = 0                      # threads holding or waiting
        self.depth = 0                      # re-entries of the holding thread
        self.handle: LockHandle | None = None


class IdLocks:
    def __init__(self, run: HomeRun | None = None) -> None:
        self._run = run
        self._guard = threading.Lock()
        self._entries: dict[str, _Entry] = {}

    def hold(self, layer_id: str) -> "_Hold":
        """``with locks.hold(id):`` — re-entrant in one thread; the outermost hold takes
        the cross-process lock."""
        return _Hold(self, layer_id)


class _Hold:
    __slots__ = ("_locks", "_id", "_entry")

    def __init__(self, locks: IdLocks, layer_id: str) -> None:
        self._locks = locks
        self._id = layer_id

    def __enter__(self) -> None:
        locks = self._locks
        with locks._guard:
            entry = locks._entries.get(self._id)
            if entry is None:
                entry = locks._entries[self._id] = _Entry()
            entry.users += 1
        entry.rlock.acquire()
        try:
            if entry.depth == 0 and locks._run is not None:
                entry.handle = locks._run.lock(self._id)
        except BaseException:
            self._leave(entry)
            raise
        entry.depth += 1
        self._entry = entry

    def __exit__(self, *exc: object) -> None:
        entry = self._entry
        entry.depth -= 1
        try:
            if entry.depth == 0 and entry.handle is not None:
                handle, entry.handle = entry.handle, None
                self._locks._run.unlock(self._id, handle)
        finally:
            self._leave(entry)

    def _leave(self, entry: _Entry) -> None:
        entry.rlock.release()
        locks = self._locks
        with locks._guard:
            entry.users -= 1
            if entry.users == 0:
                del locks._entries[self._id]

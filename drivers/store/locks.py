"""Per-layer locks: operations on one id are serialised, different ids run in parallel.

With a HomeRun, the lock also holds across processes (an flock in the home's run
directory), so a remove in one process cannot interleave with a mount of the same
layer in another. Callers that need two ids take them in sorted order.
"""
from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Iterator

from graphdrivers.store.holds import HomeRun


class IdLocks:
    def __init__(self, run: HomeRun | None = None) -> None:
        self._run = run
        self._guard = threading.Lock()
        self._locks: dict[str, list] = {}   # id -> [RLock, users, depth, flock context]

    @contextmanager
    def hold(self, layer_id: str) -> Iterator[None]:
        with self._guard:
            entry = self._locks.setdefault(layer_id, [threading.RLock(), 0, 0, None])
            entry[1] += 1
        entry[0].acquire()
        try:
            entry[2] += 1
            if entry[2] == 1 and self._run is not None:   # the outermost hold takes the flock
                cross = self._run.locked(layer_id)
                cross.__enter__()
                entry[3] = cross
            yield
        finally:
            entry[2] -= 1
            if entry[2] == 0 and entry[3] is not None:
                cross, entry[3] = entry[3], None
                cross.__exit__(None, None, None)
            entry[0].release()
            with self._guard:
                entry[1] -= 1
                if entry[1] == 0:
                    del self._locks[layer_id]

"""Reference counting of mounts, shared by every driver (Docker's RefCounter).

Counts are kept per mount path. The first time a path is seen, an existing
mount is ``found``: one left by a dead process is adopted with a count of one, so
a restart does not leak or double-mount it; one that another live process holds
is that process's, and is not counted. A found mount is never unmounted by
this instance's cleanup (the driver asks ``found(path)``). A caller that has just
created the mountpoint says so (``fresh``): nothing can be mounted on a new
directory, and the look (a statfs and a listing of the holds) is skipped.

With a HomeRun, every count is also published for the other processes on the
home (holds.py): ``others(path)`` names the live processes that hold a mount,
so a driver neither removes nor unmounts what they still use.

``claim_adopted(path)`` hands an adopted count to a caller that knows whose it is:
a server that took over from its dead predecessor (the containerd snapshotter, whose
mounts outlive it) makes the predecessor's mount its own hold, published at once.
"""
from __future__ import annotations

import threading
from typing import Callable

from graphdrivers.store.holds import HomeRun


class RefCounter:
    def __init__(self, is_mounted: Callable[[str], bool], run: HomeRun | None = None):
        self._is_mounted = is_mounted
        self._run = run
        self._counts: dict[str, int] = {}
        self._found: set[str] = set()     # mounted before this instance first looked
        self._lock = threading.Lock()

    def _load(self, path: str, fresh: bool = False) -> int:
        if path not in self._counts:
            count = 0
            if not fresh and self._is_mounted(path):
                self._found.add(path)
                count = 0 if self.others(path) else 1     # a dead process's: adopted
            self._counts[path] = count
        return self._counts[path]

    def _publish(self, path: str, count: int) -> None:
        if self._run is not None:
            self._run.set_hold(path, count)

    def increment(self, path: str, *, fresh: bool = False) -> int:
        """One more reference; ``fresh``: the caller has just made the mountpoint."""
        with self._lock:
            count = self._load(path, fresh) + 1
            self._counts[path] = count
            self._publish(path, count)
            return count

    def decrement(self, path: str) -> int:
        with self._lock:
            count = max(self._load(path) - 1, 0)
            if count:
                self._counts[path] = count
            else:
                del self._counts[path]
                self._found.discard(path)
            self._publish(path, count)
            return count

    def found(self, path: str) -> bool:
        """Whether ``path`` was mounted by someone else before this instance counted it."""
        with self._lock:
            return path in self._found

    def count(self, path: str) -> int:
        with self._lock:
            return self._counts.get(path, 0)

    def others(self, path: str) -> list[int]:
        """Pids of the other live processes that hold ``path`` mounted."""
        return self._run.other_holders(path) if self._run is not None else []

    def in_use(self, *paths: str) -> str | None:
        """Who holds any of ``paths`` mounted, in words for LayerInUse; None when nobody."""
        mine = sum(self.count(p) for p in paths)
        others = sorted({pid for p in paths for pid in self.others(p)})
        held = ([f"mounted {mine} time(s) by this process"] if mine else []) + \
            ([f"mounted by process {', '.join(map(str, others))}"] if others else [])
        return " and ".join(held) or None

    def claim_adopted(self, path: str) -> bool:
        """Take the count adopted for ``path`` (a mount that no live process holds) as the
        caller's own reference, published as this process's hold so that no other process
        adopts or unmounts it; False when there is none (not mounted, or held by a live
        process, or claimed already)."""
        with self._lock:
            self._load(path)
            if path not in self._found or self.others(path):
                return False
            self._found.discard(path)
            self._counts[path] = max(self._counts[path], 1)   # its holder died since the look
            self._publish(path, 1)
            return True

    def forget(self, path: str) -> None:
        with self._lock:
            self._counts.pop(path, None)
            self._found.discard(path)
            self._publish(path, 0)

    def paths(self) -> list[str]:
        with self._lock:
            return [p for p, c in self._counts.items() if c > 0]

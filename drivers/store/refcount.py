"""Reference counting of mounts, shared by every driver (Docker's RefCounter).

Counts are kept per mount path. The first time a path is seen, an existing
mount (left by a previous process) is adopted with a count of one, so a
restart does not leak or double-mount it; a mount that another live process
holds is that process's, and is not adopted.

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
        self._adopted: set[str] = set()   # counts found mounted, not yet claimed
        self._lock = threading.Lock()

    def _load(self, path: str) -> int:
        if path not in self._counts:
            adopt = self._is_mounted(path) and not self.others(path)
            self._counts[path] = 1 if adopt else 0
            if adopt:
                self._adopted.add(path)
        return self._counts[path]

    def _publish(self, path: str, count: int) -> None:
        if self._run is not None:
            self._run.set_hold(path, count)

    def increment(self, path: str) -> int:
        with self._lock:
            count = self._load(path) + 1
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
                self._adopted.discard(path)
            self._publish(path, count)
            return count

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
            if path not in self._adopted:
                return False
            self._adopted.discard(path)
            self._publish(path, 1)
            return True

    def forget(self, path: str) -> None:
        with self._lock:
            self._counts.pop(path, None)
            self._adopted.discard(path)
            self._publish(path, 0)

    def paths(self) -> list[str]:
        with self._lock:
            return [p for p, c in self._counts.items() if c > 0]

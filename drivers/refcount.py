"""Reference counting of mounts, shared by every driver (Docker's RefCounter).

Counts are kept per mount path. The first time a path is seen, an existing
mount (left by a previous process) is adopted with a count of one, so a
restart does not leak or double-mount it.
"""
from __future__ import annotations

import threading
from typing import Callable


class RefCounter:
    def __init__(self, is_mounted: Callable[[str], bool]):
        self._is_mounted = is_mounted
        self._counts: dict[str, int] = {}
        self._lock = threading.Lock()

    def _load(self, path: str) -> int:
        if path not in self._counts:
            self._counts[path] = 1 if self._is_mounted(path) else 0
        return self._counts[path]

    def increment(self, path: str) -> int:
        with self._lock:
            count = self._load(path) + 1
            self._counts[path] = count
            return count

    def decrement(self, path: str) -> int:
        with self._lock:
            count = max(self._load(path) - 1, 0)
            if count:
                self._counts[path] = count
            else:
                del self._counts[path]
            return count

    def count(self, path: str) -> int:
        with self._lock:
            return self._counts.get(path, 0)

    def forget(self, path: str) -> None:
        with self._lock:
            self._counts.pop(path, None)

    def paths(self) -> list[str]:
        with self._lock:
            return [p for p, c in self._counts.items() if c > 0]

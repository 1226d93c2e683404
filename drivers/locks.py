"""Per-layer locks: operations on one id are serialised, different ids run in parallel."""
from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Iterator


class IdLocks:
    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._locks: dict[str, list] = {}   # id -> [RLock, users]

    @contextmanager
    def hold(self, layer_id: str) -> Iterator[None]:
        with self._guard:
            entry = self._locks.setdefault(layer_id, [threading.RLock(), 0])
            entry[1] += 1
        entry[0].acquire()
        try:
            yield
        finally:
            entry[0].release()
            with self._guard:
                entry[1] -= 1
                if entry[1] == 0:
                    del self._locks[layer_id]

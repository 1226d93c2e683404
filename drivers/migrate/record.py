"""The migration's progress record: ``<target driver home>/_migrate.json``.

    {"v": 1, "source": {"driver": "vfs", "home": "/var/lib/graphdrivers/vfs"},
     "done": ["<id>", ...],      layers copied and verified, in the order copied
     "current": "<id>" | null,   the layer being copied: whatever the target holds
                                 under this id is a half layer, removed and redone
     "source_removed": bool}

Written through store.atomicfile (temp, fsync, rename, fsync dir) before a layer is
created (``current``) and after it is verified (``done``), so after a SIGKILL at any
point the record names every finished layer and the one that may be half made. It lives
in the target driver's home (the ``_`` keeps it apart from layer ids), so it goes with
the target's layers if an operator deletes them.
"""
from __future__ import annotations

import pathlib
from dataclasses import dataclass, field

from graphdrivers.errors import DriverError
from graphdrivers.store.atomicfile import read_json, write_json

NAME = "_migrate.json"


@dataclass
class ProgressRecord:
    path: pathlib.Path
    source_driver: str
    source_home: str
    done: list[str] = field(default_factory=list)
    current: str | None = None
    source_removed: bool = False

    @classmethod
    def open(cls, target_home: pathlib.Path, source_driver: str,
             source_home: str) -> "ProgressRecord":
        """The record in ``target_home``, or a new one (not written until ``save``);
        DriverError when it belongs to a migration from another source."""
        path = target_home / NAME
        try:
            value = read_json(path)
        except FileNotFoundError:
            return cls(path, source_driver, source_home)
        except ValueError as exc:
            raise DriverError(f"the migration record {path} is unreadable ({exc}); remove it "
                              "and the layers it lists in the target to start over") from None
        source = value.get("source", {})
        if (source.get("driver"), source.get("home")) != (source_driver, source_home):
            raise DriverError(
                f"{target_home} holds a migration from {source.get('driver')} at "
                f"{source.get('home')}, not from {source_driver} at {source_home}; finish that "
                f"one, or remove {path} and its layers from the target")
        return cls(path, source_driver, source_home, list(value.get("done", [])),
                   value.get("current"), bool(value.get("source_removed")))

    def exists(self) -> bool:
        return self.path.exists()

    def save(self) -> None:
        write_json(self.path, {"v": 1, "source": {"driver": self.source_driver,
                                                  "home": self.source_home},
                               "done": self.done, "current": self.current,
                               "source_removed": self.source_removed})

    def start(self, layer_id: str) -> None:
        self.current = layer_id
        self.save()

    def finish(self, layer_id: str) -> None:
        if layer_id not in self.done:
            self.done.append(layer_id)
        self.current = None
        self.save()

"""The interface every storage driver implements (Docker's graphdriver.Driver)."""
from __future__ import annotations

import abc
import enum
import functools
import os
import pathlib
from dataclasses import dataclass
from typing import BinaryIO, Mapping

from graphdrivers.store.holds import HomeRun
from graphdrivers.options import Option


class ChangeKind(enum.IntEnum):
    MODIFY = 0
    ADD = 1
    DELETE = 2


@dataclass(frozen=True)
class Change:
    path: str            # absolute inside the layer: "/etc/hosts"
    kind: ChangeKind

    def __str__(self) -> str:
        return f"{'CAD'[self.kind]} {self.path}"


class Driver(abc.ABC):
    """A storage driver rooted at ``home`` (``<load home>/<name>``).

    Subclasses set ``name`` and ``OPTIONS`` (the driver-wide options they
    accept, with Docker's prefixed spelling), and raise NotSupported from
    ``__init__`` (or ``probe``) when they cannot run on this machine.
    """

    name: str = ""
    OPTIONS: Mapping[str, Option] = {}

    def __init__(self, home: str | os.PathLike, options: Mapping[str, str] | None = None):
        self.home = pathlib.Path(home)

    @functools.cached_property
    def home_run(self) -> HomeRun:
        """The home's run directory: mount holds and id locks shared by its processes."""
        return HomeRun(self.home)

    def release(self) -> None:
        """Let go of this instance without unmounting anything, as if its process ended:
        another instance or process adopts its mounts (a server handing over to the next).
        Do not use the instance afterwards."""
        self.home_run.release_all()

    @classmethod
    def probe(cls, home: pathlib.Path) -> None:
        """Raise NotSupported if this driver cannot work for ``home``; cheap, no state."""

    # -- layers ---------------------------------------------------------
    @abc.abstractmethod
    def create(self, id: str, parent: str | None = None, *, rw: bool = False,
               mount_label: str = "", storage_opt: Mapping[str, str] | None = None) -> None: ...

    @abc.abstractmethod
    def remove(self, id: str) -> None: ...

    @abc.abstractmethod
    def mount(self, id: str, mount_label: str = "") -> pathlib.Path: ...

    @abc.abstractmethod
    def unmount(self, id: str) -> None: ...

    @abc.abstractmethod
    def exists(self, id: str) -> bool: ...

    @abc.abstractmethod
    def status(self) -> list[tuple[str, str]]: ...

    @abc.abstractmethod
    def metadata(self, id: str) -> dict[str, str]: ...

    @abc.abstractmethod
    def cleanup(self) -> None: ...

    def layers(self) -> list[str]:
        """Ids of every layer this driver holds (for `layer ls`)."""
        raise NotImplementedError

    def parent(self, id: str) -> str | None:
        """The parent a layer was created on, or None for a base layer."""
        raise NotImplementedError

    # -- diffs ----------------------------------------------------------
    @abc.abstractmethod
    def diff(self, id: str, parent: str | None = None) -> BinaryIO: ...

    @abc.abstractmethod
    def changes(self, id: str, parent: str | None = None) -> list[Change]: ...

    @abc.abstractmethod
    def apply_diff(self, id: str, parent: str | None, diff: BinaryIO) -> int: ...

    @abc.abstractmethod
    def diff_size(self, id: str, parent: str | None = None) -> int: ...

    # -- context manager ------------------------------------------------
    def __enter__(self) -> "Driver":
        return self

    def __exit__(self, *exc: object) -> None:
        self.cleanup()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} at {self.home}>"

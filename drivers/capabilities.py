"""Optional capabilities a driver declares by inheriting them; callers ask by type.

The CLI's ``pool`` commands work on any driver that is a ``PoolAdmin``, and the
containerd snapshotter serves any driver that is a ``LayerMounts``, so the framework
never names the driver that has one.
"""
from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Any, BinaryIO, Callable, Mapping


class PoolAdmin(abc.ABC):
    """Layers live in one pool an operator watches and grows online."""

    # storage options a resize takes, mapped to resize_pool()'s keyword (sizes in bytes)
    RESIZE_OPTIONS: Mapping[str, str] = {}

    @abc.abstractmethod
    def pool_status(self) -> dict[str, Any]:
        """Used and total space, mode and warnings, as plain JSON-able values."""

    @abc.abstractmethod
    def resize_pool(self, *, force: bool = False, progress: Callable[[str], None] | None = None,
                    extend: str | None = None, extend_metadata: str | None = None,
                    **sizes: int | None) -> dict[str, Any]:
        """Grow the pool online (shrinking is refused); returns pool_status() after it."""


@dataclass(frozen=True)
class MountSpec:
    """One mount a caller performs itself: mount(2) of ``source`` with ``type`` on its own
    target; ``options`` in mount(8) spelling, flags ("ro", "rbind") and data alike
    (containerd's Mount message)."""
    type: str
    source: str
    options: tuple[str, ...] = ()


@dataclass(frozen=True)
class Usage:
    size: int       # bytes allocated on disk (st_blocks * 512), each inode once
    inodes: int


class LayerMounts(abc.ABC):
    """The driver can say which mounts expose a layer, for a caller that mounts them
    itself (containerd through the snapshotter). Most drivers mount nothing for it; one
    whose layer is only reachable inside a mount of its own (devicemapper) holds that
    mount from ``layer_mounts`` until ``release_layer_mounts``."""

    @abc.abstractmethod
    def layer_mounts(self, id: str, *, readonly: bool) -> list[MountSpec]:
        """Mounts that show layer ``id`` (its parents under it) at one target: writable
        into the layer itself, or read-only. LayerNotFound for a missing layer; a
        DriverError when no single mount(2) could take it (say why and the limit)."""

    @abc.abstractmethod
    def layer_usage(self, id: str) -> Usage:
        """Disk space and inodes of the layer's own data (not what it shares with its
        parents)."""

    def release_layer_mounts(self, id: str) -> None:
        """The caller no longer mounts what ``layer_mounts`` returned for ``id`` (it is
        committed, about to be removed, or was never handed out): drop what the driver
        holds for it. Idempotent; nothing to do for most drivers."""


class DiffFromChanges(abc.ABC):
    """The driver's diff is its change list exported (NaiveDiff): a caller that already
    listed a layer's changes (graphdrivers migrate, for the layer's size and its
    verification) hands them back instead of paying for a second tree comparison."""

    @abc.abstractmethod
    def diff_from_changes(self, id: str, changes: list) -> BinaryIO:
        """``diff(id)`` (against its own parent) made from ``changes``, which
        ``changes(id)`` returned for the layer as it still is."""

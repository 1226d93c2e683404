"""devicemapper layers for a caller that mounts them itself (containerd via the snapshotter).

A layer's files are not the thin device's filesystem but its ``rootfs/`` directory
(Docker's layout: ``id`` and ``lost+found`` sit beside it). containerd mounts what it is
given with one mount(2) per entry and, in 1.6, ignores ``Mount.target`` and knows no
sub-directory option, so a mount of the device itself would show that outer tree.
Instead the driver mounts the device itself, through its normal mount path (at
``mnt/<id>``), and hands out a bind mount of ``mnt/<id>/rootfs``.

That mount is held for the caller from the first ``layer_mounts`` of a layer until
``release_layer_mounts`` (the snapshotter calls it at Commit, before Remove, at Cleanup
and after a failed Prepare): one count per layer however often containerd asks, kept in
the refcounter and so published in the home's run directory as this process's hold,
where other processes see it and leave the mount alone. The mount outlives the process
(containerd's binds stand on it); the next snapshotter takes it over as its own hold
(``RefCounter.claim_adopted``) instead of mounting it a second time, or finding it
stale and unmounting it under containerd.
"""
from __future__ import annotations

import contextlib
import pathlib
from typing import Callable

from graphdrivers.capabilities import LayerMounts, MountSpec, Usage
from graphdrivers.driver import ChangeKind, os_errors
from graphdrivers.errors import LayerNotFound
from graphdrivers.layerid import check_id
from graphdrivers.store.layers import LayerRecord
from graphdrivers.store.locks import IdLocks
from graphdrivers.store.refcount import RefCounter
from graphdrivers.usage import paths_usage, tree_usage


class ExternalMounts(LayerMounts):
    """LayerMounts for the devicemapper driver (listed before Driver in its bases)."""

    # provided by the driver
    mnt: pathlib.Path
    _refs: RefCounter
    _locks: IdLocks
    _served: set[str]           # layers whose mount is held for the caller
    mount: Callable[..., pathlib.Path]
    unmount: Callable[[str], None]
    changes: Callable[..., list]
    _record: Callable[..., LayerRecord]

    def layer_mounts(self, id: str, *, readonly: bool) -> list[MountSpec]:
        """A bind of ``mnt/<id>/rootfs``, not the device: containerd 1.6 cannot mount a
        sub-directory of a filesystem (see the module docstring). Mounts the device and
        holds it for the caller (once per layer) until release_layer_mounts."""
        check_id(id)
        with self._locks.hold(id):
            self._record(id)
            if id not in self._served:
                if not self._refs.claim_adopted(str(self.mnt / id)):   # a predecessor's
                    self.mount(id)
                self._served.add(id)
        rootfs = self.mnt / id / "rootfs"
        return [MountSpec("bind", str(rootfs), ("ro" if readonly else "rw", "rbind"))]

    def release_layer_mounts(self, id: str) -> None:
        """Drop the caller's hold of the layer's mount (this process's, or one a dead
        predecessor left): unmounted and deactivated when nobody else holds it."""
        check_id(id)
        with self._locks.hold(id):
            held = id in self._served or self._refs.claim_adopted(str(self.mnt / id))
            self._served.discard(id)
            if held:
                with contextlib.suppress(LayerNotFound):
                    self.unmount(id)

    def layer_usage(self, id: str) -> Usage:
        """A thin snapshot shares its parent's blocks: the layer's own data is what its
        change list against the parent names (added or modified entries, each inode once);
        a base layer owns its whole tree."""
        record = self._record(check_id(id))
        root = self.mount(id)
        try:
            with os_errors(f"measure layer {id}"):
                if record.parent is None:
                    return tree_usage(root)
                changed = [c.path for c in self.changes(id) if c.kind != ChangeKind.DELETE]
                return paths_usage(root, changed)
        finally:
            self.unmount(id)

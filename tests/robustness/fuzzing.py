"""One fuzzing session: a driver, a canary beside its home, a parent layer that
already holds dangerous symlinks, and a check run on every generated tar.

Every tar: every inode of the canary and the parent layer is compared with the
first look (lstat: inode, mode, owner, size, links, mtime and ctime), the home's
siblings, its mounts, the layer list and the /evil paths checked, and the applied
layer mounted and listed. ``final_check`` adds the full comparisons: canary and
parent content, every file of the home, the layer records. A long campaign makes
the costly ones less often: ``full_every=N``, the full comparisons on every Nth tar
and at the end (they cost more than the rest together); ``layer_every=N``, the
mount and listing after every tar that applied but only every Nth refused one (on
a busy machine overlay2's unmount waits tens of ms for an RCU grace period, ten
times the rest of a tar). The hypothesis test makes every check on every tar."""
from __future__ import annotations

import io
import itertools
import os
import traceback
from pathlib import Path

from graphdrivers.errors import DriverError
from graphdrivers.kernel.mount import mounts_under

from graphdrivers.testing.conformance.helpers import assert_listable

from .canary import diff, inodes, make_canary, snapshot


class Session:
    def __init__(self, driver, home: str | os.PathLike, full_every: int = 1,
                 layer_every: int = 1):
        self.driver = driver
        self.full_every = full_every
        self.layer_every = layer_every
        self.home = Path(home)
        self.canary = make_canary(self.home.parent / "canary")
        self.siblings = sorted(os.listdir(self.home.parent))
        self.canary_before = snapshot(self.canary)
        self.canary_inodes = inodes(self.canary)
        self.parent = "fuzzparent"
        driver.create(self.parent)
        root = Path(driver.mount(self.parent))
        try:
            self.rel = os.path.relpath(self.canary, root)
            (root / "d").mkdir()
            (root / "d" / "f").write_bytes(b"parent file\n")
            os.link(root / "d" / "f", root / "h")
            os.symlink(str(self.canary), root / "out")           # absolute, outside
            os.symlink(self.rel, root / "rel")                   # relative, outside
            os.symlink("../" * 12 + str(self.canary).lstrip("/"), root / "esc")
            os.symlink("..", root / "up")
            os.symlink(".", root / "self")
            os.symlink("loop", root / "loop")
        finally:
            driver.unmount(self.parent)
        self.parent_root = driver.mount(self.parent)   # held for the whole session
        self.parent_before = snapshot(self.parent_root)
        self.parent_inodes = inodes(self.parent_root)
        self.mounts_before = sorted(mounts_under(self.home))
        # the host drivers return their home to the same state once a layer is removed;
        # devicemapper's metadata (transaction ids, sparse pool files) changes by design
        self.check_home = driver.name in ("vfs", "overlay2", "btrfs")
        self.home_before = _without_dir_times(snapshot(self.home)) if self.check_home else {}
        self.records_before = _records(driver)
        self.counter = itertools.count()
        self.examples = self.errors = 0

    def close(self) -> None:
        self.driver.unmount(self.parent)
        self.driver.remove(self.parent)

    def run(self, data: bytes, with_parent: bool) -> None:
        """Apply one tar to a fresh layer; fail on any escape or non-DriverError."""
        layer = f"fuzz{next(self.counter)}"
        parent = self.parent if with_parent else None
        self.driver.create(layer, parent)
        self.examples += 1
        refused = self.errors
        try:
            self.driver.apply_diff(layer, parent, io.BytesIO(data))
        except DriverError as exc:
            self.errors += 1
            assert str(exc).strip(), f"{type(exc).__name__} without a message"
        except BaseException as exc:                             # noqa: BLE001
            raise AssertionError(f"apply_diff raised {type(exc).__name__}, not a DriverError:\n"
                                 + "".join(traceback.format_exception(exc))) from None
        finally:
            self.check(layer)
        if refused == self.errors or self.examples % self.layer_every == 0:
            self.check_layer(layer)
        self.driver.remove(layer)
        assert not self.driver.exists(layer)
        if self.examples % self.full_every == 0:
            self.final_check()

    def final_check(self) -> None:
        """Canary and parent content as at the start, and once the layer is gone the
        whole home as before (directory mtimes aside)."""
        changed = diff(self.canary_before, snapshot(self.canary))
        assert not changed, "the canary beside the home changed:\n" + "\n".join(changed)
        changed = diff(self.parent_before, snapshot(self.parent_root))
        assert not changed, "the parent layer changed:\n" + "\n".join(changed)
        if self.check_home:
            changed = diff(self.home_before, _without_dir_times(snapshot(self.home)))
            assert not changed, "the driver home changed outside the layer:\n" + "\n".join(changed)
            assert _records(self.driver) == self.records_before, "the layer records changed"

    def check_layer(self, layer: str) -> None:
        """Whatever was applied (or half applied) leaves a sound tree: every name
        readdir lists can be lstat'ed (overlay2: no stray whiteout devices)."""
        root = Path(self.driver.mount(layer))
        try:
            assert_listable(root, devices=self.driver.name != "overlay2")
        finally:
            self.driver.unmount(layer)

    def check(self, layer: str) -> None:
        changed = diff(self.canary_inodes, inodes(self.canary))
        assert not changed, "the canary beside the home changed:\n" + "\n".join(changed)
        changed = diff(self.parent_inodes, inodes(self.parent_root))
        assert not changed, "the parent layer changed:\n" + "\n".join(changed)
        assert sorted(os.listdir(self.home.parent)) == self.siblings
        assert sorted(mounts_under(self.home)) == self.mounts_before, "a mount leaked"
        assert set(self.driver.layers()) == {self.parent, layer}
        for path in ("/evil", "/tmp/evil", "/etc/evil"):
            assert not os.path.lexists(path)


def _records(driver) -> list:
    return driver.layer_store.records()


def _without_dir_times(snap: dict) -> dict:
    """Directory mtimes change with every create/remove of a layer: leave them out
    (and overlay2's ``committed`` mark, which a parent gets with its first child, and the
    layer store's log, which grows by a line per create and remove: its records are
    compared instead)."""
    import stat
    return {k: v if not stat.S_ISDIR(v[0]) else v[:6] + (None,) + v[7:] for k, v in snap.items()
            if not k.endswith(("/committed", "/_layers.json"))}

"""Diffs for drivers without a native one: compare mounted trees, then stream a tar.

A driver lists the mixin before Driver: ``class BtrfsDriver(NaiveDiff, Driver)``.
It needs the driver's ``mount``/``unmount``/``exists``/``parent``; the
attribute ``whiteout_format`` says how whiteouts are stored on disk (PLAIN:
as deletions).
"""
from __future__ import annotations

import pathlib
from typing import BinaryIO, Callable

from graphdrivers.archive import PLAIN, WhiteoutFormat, apply_tar, export_changes, export_tree
from graphdrivers.changes import changes_size, compare_trees
from graphdrivers.driver import Change
from graphdrivers.errors import LayerNotFound
from graphdrivers.layerid import check_id


class NaiveDiff:
    whiteout_format: WhiteoutFormat = PLAIN

    # provided by the driver
    mount: Callable[..., pathlib.Path]
    unmount: Callable[[str], None]
    exists: Callable[[str], bool]
    parent: Callable[[str], "str | None"]

    def _naive_check(self, id: str, parent: str | None) -> str | None:
        """Validate both ids; return the parent to compare with (the layer's own if None)."""
        check_id(id)
        if parent is not None:
            check_id(parent, "parent layer id")
        if not self.exists(id):
            raise LayerNotFound(f"layer {id} does not exist")
        if parent is None:
            parent = self.parent(id)
        if parent is not None and not self.exists(parent):
            raise LayerNotFound(f"parent layer {parent} of {id} does not exist")
        return parent

    def _with_both(self, id: str, parent: str | None, work):
        """Run ``work(layer_root, parent_root_or_None)`` with both layers mounted."""
        layer_root = self.mount(id)
        try:
            if parent is None:
                return work(layer_root, None)
            parent_root = self.mount(parent)
            try:
                return work(layer_root, parent_root)
            finally:
                self.unmount(parent)
        finally:
            self.unmount(id)

    def diff(self, id: str, parent: str | None = None) -> BinaryIO:
        parent = self._naive_check(id, parent)
        layer_root = self.mount(id)
        closed = False

        def release() -> None:
            nonlocal closed
            if not closed:
                closed = True
                self.unmount(id)
        try:
            if parent is None:
                return export_tree(layer_root, fmt=self.whiteout_format, on_close=release)
            parent_root = self.mount(parent)
            try:
                changes = compare_trees(layer_root, parent_root)
            finally:
                self.unmount(parent)       # only the layer is read while streaming
            return export_changes(layer_root, changes, on_close=release)
        except BaseException:
            release()
            raise

    def changes(self, id: str, parent: str | None = None) -> list[Change]:
        parent = self._naive_check(id, parent)
        return self._with_both(id, parent, compare_trees)

    def diff_size(self, id: str, parent: str | None = None) -> int:
        parent = self._naive_check(id, parent)
        return self._with_both(
            id, parent, lambda layer, base: changes_size(layer, compare_trees(layer, base)))

    def apply_diff(self, id: str, parent: str | None, diff: BinaryIO) -> int:
        check_id(id)
        if parent is not None:
            check_id(parent, "parent layer id")
        if not self.exists(id):
            raise LayerNotFound(f"layer {id} does not exist")
        root = self.mount(id)
        try:
            return apply_tar(root, diff, fmt=self.whiteout_format)
        finally:
            self.unmount(id)

"""Diffs for drivers without a native one: compare mounted trees, then stream a tar.

A driver lists the mixin before Driver: ``class BtrfsDriver(NaiveDiff, Driver)``.
It provides the template's diff hooks (driver.py: ids are checked, both layers
exist and ``parent`` is resolved before they run) through the driver's
``mount``/``unmount``; the attribute ``whiteout_format`` says how whiteouts are
stored on disk (PLAIN: as deletions).
"""
from __future__ import annotations

import pathlib
from typing import BinaryIO, Callable

from graphdrivers.archive import PLAIN, WhiteoutFormat, apply_tar, export_changes, export_tree
from graphdrivers.changes import changes_size, compare_trees
from graphdrivers.driver import Change, os_errors
from graphdrivers.store.layers import LayerRecord


class NaiveDiff:
    whiteout_format: WhiteoutFormat = PLAIN

    # provided by the driver
    mount: Callable[..., pathlib.Path]
    unmount: Callable[[str], None]

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

    def _diff(self, record: LayerRecord, parent: str | None) -> BinaryIO:
        def export(layer_root, release):
            if parent is None:
                return export_tree(layer_root, fmt=self.whiteout_format, on_close=release)
            parent_root = self.mount(parent)
            try:
                changes = compare_trees(layer_root, parent_root)
            finally:
                self.unmount(parent)       # only the layer is read while streaming
            return export_changes(layer_root, changes, on_close=release)
        return self._streamed(record.id, export)

    def _streamed(self, id: str, export) -> BinaryIO:
        """``export(layer_root, release)``'s stream, with the layer mounted until the
        stream is closed (``release`` runs once: at close, or now if export fails)."""
        layer_root = self.mount(id)
        closed = False

        def release() -> None:
            nonlocal closed
            if not closed:
                closed = True
                self.unmount(id)
        try:
            return export(layer_root, release)
        except BaseException:
            release()
            raise

    def diff_from_changes(self, id: str, changes: list[Change]) -> BinaryIO:
        """capabilities.DiffFromChanges, for the drivers that declare it (their diff is
        always this one): the layer's diff against its own parent from ``changes``."""
        self._diff_args(id, None)           # type: ignore[attr-defined]
        with os_errors(f"diff layer {id}"):
            return self._streamed(id, lambda root, release: export_changes(
                root, changes, on_close=release))

    def _changes(self, record: LayerRecord, parent: str | None) -> list[Change]:
        return self._with_both(record.id, parent, compare_trees)

    def _diff_size(self, record: LayerRecord, parent: str | None) -> int:
        return self._with_both(
            record.id, parent, lambda layer, base: changes_size(layer, compare_trees(layer, base)))

    def _apply_diff(self, record: LayerRecord, parent: str | None, diff: BinaryIO) -> int:
        root = self.mount(record.id)
        try:
            return apply_tar(root, diff, fmt=self.whiteout_format)
        finally:
            self.unmount(record.id)

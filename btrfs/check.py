"""btrfs's part of `graphdrivers check`: subvolumes and qgroups no layer explains.

- an entry of ``subvolumes/`` that no layer name can take (load leaves those), or a
  layer name there that is not a subvolume: deleted (a subvolume with what is nested
  in it, and its qgroups);
- a level-0 qgroup whose subvolume no longer exists anywhere on the filesystem
  (moby#29325: Docker leaked one per removed layer on older kernels; they are
  filesystem-wide and count against the quota tree): destroyed, as the driver's own
  remove does (quota.destroy waits until the cleaner dropped the subvolume).
"""
from __future__ import annotations

import os
import shutil
import time
from typing import TYPE_CHECKING

from graphdrivers.check.findings import DATA_WITHOUT_LAYER, Finding
from graphdrivers.layerid import is_valid_id

from . import quota, subvol

if TYPE_CHECKING:
    from .driver import BtrfsDriver

ORPHAN_QGROUP = "orphan-qgroup"


def findings(driver: BtrfsDriver) -> list[Finding]:
    found = []
    for entry in os.scandir(driver.home / "subvolumes"):
        is_sub = subvol.is_subvolume(entry.path)
        if is_valid_id(entry.name) and is_sub:
            continue                        # a layer's, or an orphan the framework reports
        what = "a subvolume" if is_sub else "an entry"
        found.append(Finding(DATA_WITHOUT_LAYER, entry.path,
                             f"{what} in subvolumes/ that is not a layer's "
                             "(no valid layer id, or not a subvolume)", "delete it",
                             lambda p=entry.path: _delete(driver, p)))
    if quota.enabled(driver.home):
        existing = subvol.subvolume_ids(driver.home)
        for qgroupid in quota.subvolume_qgroups(driver.home):
            if qgroupid not in existing:
                found.append(Finding(ORPHAN_QGROUP, f"0/{qgroupid}",
                                     "a qgroup whose subvolume no longer exists",
                                     "destroy the qgroup",
                                     lambda q=qgroupid: _destroy(driver, q)))
    return found


def _delete(driver: BtrfsDriver, path: str) -> None:
    if subvol.is_subvolume(path):
        deleted = subvol.delete_recursive(path)
        for sid in deleted:
            _destroy(driver, sid)
    elif os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    elif os.path.lexists(path):
        os.unlink(path)


def _destroy(driver: BtrfsDriver, qgroupid: int, tries: int = 100) -> None:
    """quota.destroy, committing the transaction between tries (the cleaner drops a
    deleted subvolume in the background)."""
    for _ in range(tries):
        if quota.destroy(driver.home, qgroupid):
            return
        subvol.sync(driver.home)
        time.sleep(0.1)
    raise OSError(f"qgroup 0/{qgroupid} still has numbers after the subvolume's deletion; "
                  "run check --repair again once btrfs's cleaner has dropped it")

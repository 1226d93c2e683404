"""overlay2's part of `graphdrivers check`: the ``l/`` links and Docker's layout files.

A mount takes its lowers through ``l/<short>`` links, so a link that points at the
wrong layer's ``diff`` silently stacks the wrong files: the link is the parent link
that matters. The layer store is the truth (each record's ``link`` field names its
short link); a repair makes the disk agree with it:

- a recorded layer's link missing, or pointing anywhere but ``../<id>/diff``: made again;
- a link no record names (load drops only dangling ones): deleted;
- a ``lower`` or ``link`` file that disagrees with the store (Docker's layout, read by
  operators and tools, not by mounts): written again;
- a non-directory entry with a layer's name in the home: deleted.
"""
from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from graphdrivers.check.findings import BROKEN_PARENT, DATA_WITHOUT_LAYER, Finding
from graphdrivers.layerid import is_valid_id
from graphdrivers.store.atomicfile import write_atomic

from .layout import LINK_DIR, dir_name, read_text

if TYPE_CHECKING:
    from .driver import Overlay2Driver

BAD_LAYOUT = "bad-layout-file"


def findings(driver: Overlay2Driver) -> list[Finding]:
    home = str(driver.home)
    links = f"{home}/{LINK_DIR}"
    records = driver.layer_store.records()
    owner = {r.fields.get("link"): r for r in records if r.fields.get("link")}
    recorded = {dir_name(r.id) for r in records}
    found = []
    for entry in os.scandir(links):
        record = owner.get(entry.name)
        if record is None:
            if _orphan_layer_link(home, entry.path, recorded):
                continue                   # the framework reports that layer's data
            found.append(Finding(DATA_WITHOUT_LAYER, entry.path,
                                 "a short link that no layer record names",
                                 "delete the link", lambda p=entry.path: _unlink(p)))
            continue
        want = f"../{dir_name(record.id)}/diff"
        target = os.readlink(entry.path) if entry.is_symlink() else None
        if target != want:
            found.append(Finding(BROKEN_PARENT, entry.path,
                                 f"the short link of layer {record.id} points to "
                                 f"{target or '(not a link)'}, not {want}: its children would "
                                 "stack the wrong files", f"point it at {want} again",
                                 lambda p=entry.path, w=want: _relink(p, w)))
    present = {e.name for e in os.scandir(links)}
    for short, record in owner.items():
        if short not in present:
            want = f"../{dir_name(record.id)}/diff"
            found.append(Finding(BROKEN_PARENT, f"{links}/{short}",
                                 f"the short link of layer {record.id} is missing",
                                 f"make it again (-> {want})",
                                 lambda p=f"{links}/{short}", w=want: _relink(p, w)))
    for record in records:
        layer = f"{home}/{dir_name(record.id)}"
        if not os.path.isdir(layer):
            continue                       # the framework reports a layer without data
        lowers = driver._lowers(record)
        if record.parent is not None and read_text(Path(layer, "lower")) != ":".join(lowers):
            found.append(Finding(BAD_LAYOUT, f"{layer}/lower",
                                 "Docker's lower file disagrees with the layer records",
                                 "write it again from the records",
                                 lambda p=f"{layer}/lower", t=":".join(lowers): _rewrite(p, t)))
        short = record.fields.get("link", "")
        if short and read_text(Path(layer, "link")) != short:
            found.append(Finding(BAD_LAYOUT, f"{layer}/link",
                                 "Docker's link file disagrees with the layer records",
                                 "write it again from the records",
                                 lambda p=f"{layer}/link", t=short: _rewrite(p, t)))
    for entry in os.scandir(home):
        if is_valid_id(entry.name) and entry.name != LINK_DIR and \
                not entry.is_dir(follow_symlinks=False):
            found.append(Finding(DATA_WITHOUT_LAYER, entry.path,
                                 "a file where only layer directories belong",
                                 "delete it", lambda p=entry.path: _unlink(p)))
    return found


def _orphan_layer_link(home: str, link: str, recorded: set[str]) -> bool:
    """Whether ``link`` points at the diff of a layer directory that exists but has no
    record (its removal as data without a layer takes the link with it)."""
    with contextlib.suppress(OSError):
        parts = os.readlink(link).split("/")
        return len(parts) == 3 and parts[0] == ".." and parts[2] == "diff" and \
            parts[1] not in recorded and os.path.isdir(f"{home}/{parts[1]}")
    return False


def _unlink(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def _relink(path: str, target: str) -> None:
    """Replace ``path`` by a link to ``target`` in one rename (a mount never sees none)."""
    temp = f"{path}.check-{os.getpid()}"
    with contextlib.suppress(FileNotFoundError):
        os.unlink(temp)
    os.symlink(target, temp)
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    os.rename(temp, path)


def _rewrite(path: str, text: str) -> None:
    write_atomic(path, text.encode(), mode=0o644)

"""The home's quarantine: where `check --repair` puts damaged layers instead of deleting them.

    <driver home>/_quarantine/<UTC time>-<layer id>/record.json   the layer's record, why, when
    <driver home>/_quarantine/<UTC time>-<layer id>/data          what the layer had (moved)

The ``_`` keeps the directory out of every backend's scan of layer names (ids start
with a letter or digit). A layer leaves the store in this order: its record is written
here (atomically), its data is moved here (the backend's ``_quarantine_data``), then its
layer record is dropped. A crash in between leaves a layer without data, which the next
check quarantines again; never a lost layer. Nothing here is read back by a driver: an
operator inspects it, copies out what is worth keeping and deletes the rest.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

from graphdrivers.store.atomicfile import fsync_dir, write_json
from graphdrivers.store.layers import LayerRecord

DIR = "_quarantine"


def root(home: str | os.PathLike) -> Path:
    return Path(home) / DIR


def place(home: str | os.PathLike, record: LayerRecord, reason: str) -> Path:
    """A new quarantine entry for ``record`` holding its record and ``reason``; return
    the entry (the data goes to ``<entry>/data``)."""
    base = root(home)
    base.mkdir(mode=0o700, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    for n in range(1000):
        entry = base / (f"{stamp}-{record.id}" + (f".{n}" if n else ""))
        try:
            entry.mkdir(mode=0o700)
            break
        except FileExistsError:
            continue
    else:
        raise FileExistsError(f"no free quarantine entry for {record.id} in {base}")
    fsync_dir(base)
    write_json(entry / "record.json", {"record": record.line(), "reason": reason,
                                       "time": stamp})
    return entry


def entries(home: str | os.PathLike) -> list[Path]:
    """The quarantine entries of a home, oldest first."""
    try:
        return sorted(p for p in root(home).iterdir() if p.is_dir())
    except FileNotFoundError:
        return []

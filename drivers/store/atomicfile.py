"""Crash-safe small files: write to a temp file, fsync, rename, fsync the directory."""
from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any

from graphdrivers.kernel import fallocate


def write_atomic(path: str | os.PathLike, data: bytes, mode: int = 0o600, *,
                 reserve: int = 0) -> None:
    """Replace ``path`` with ``data``, all or nothing; ``reserve``: blocks allocated up to
    that many bytes for later appends (kept by the rename)."""
    path = Path(path)
    # pid and thread in the name: two writers of one file never share a temp file
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{threading.get_ident()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
    try:
        try:
            view = memoryview(data)
            while view:                      # os.write may write less than asked
                view = view[os.write(fd, view):]
            if reserve > len(data):
                fallocate.reserve(fd, reserve)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    fsync_dir(path.parent)


def write_json(path: str | os.PathLike, value: Any) -> None:
    write_atomic(path, json.dumps(value, indent=1, sort_keys=True).encode() + b"\n")


def read_json(path: str | os.PathLike) -> Any:
    with open(path, "rb") as f:
        return json.loads(f.read())


def fsync_dir(path: str | os.PathLike) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def remove_stale_temps(directory: str | os.PathLike, prefix: str = "") -> None:
    """Drop temp files a crashed writer left behind (the rename never happened);
    with ``prefix``, only the temps whose names start with it."""
    for entry in os.scandir(directory):
        if entry.name.startswith(prefix or ".") and ".tmp-" in entry.name:
            try:
                os.unlink(entry.path)
            except FileNotFoundError:
                pass

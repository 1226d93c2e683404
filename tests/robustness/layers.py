"""Small helpers shared by the robustness tests: fill, read and compare layers."""
from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

from graphdrivers.kernel import mount as mnt

from .canary import snapshot


def content(driver, layer: str) -> dict:
    """The layer's tree as the driver presents it (root entry left out: its
    mtime and mode belong to the mount, not the content)."""
    root = driver.mount(layer)
    try:
        snap = snapshot(root)
    finally:
        driver.unmount(layer)
    snap.pop(".", None)
    return snap


def make_tar(files: dict[str, bytes | str | None], deletes: tuple[str, ...] = ()) -> bytes:
    """A layer tar: regular files (bytes), symlinks ('->target'), hard links ('=>target'),
    whiteouts (None, or the names in ``deletes``); directories for the parents."""
    files = {**files, **{name: None for name in deletes}}
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        dirs = sorted({str(Path(n).parent) for n in files} - {"."})
        for d in dirs:
            info = tarfile.TarInfo(d)
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, 1_700_000_000
            tar.addfile(info)
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.mtime, info.mode = 1_700_000_000, 0o644
            if data is None:
                p = Path(name)
                info.name = str(p.parent / (".wh." + p.name))
                tar.addfile(info, io.BytesIO(b""))
            elif isinstance(data, str):
                info.type = tarfile.SYMTYPE if data.startswith("->") else tarfile.LNKTYPE
                info.linkname = data[2:]
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def write(driver, layer: str, files: dict[str, bytes]) -> None:
    """Write files into a layer through its mount."""
    root = Path(driver.mount(layer))
    try:
        for name, data in files.items():
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            (root / name).write_bytes(data)
    finally:
        driver.unmount(layer)


def loop_devices_backed_under(path: str | os.PathLike) -> set[str]:
    prefix = os.path.realpath(path) + "/"
    found = set()
    for entry in Path("/sys/block").glob("loop*/loop/backing_file"):
        try:
            backing = entry.read_text().strip()
        except OSError:
            continue
        if backing.startswith(prefix):
            found.add(entry.parts[3])
    return found


def leftovers(home: str | os.PathLike, word: str) -> list[str]:
    """Paths under ``home`` whose name contains ``word`` (not descending into mounts)."""
    found = []
    mounted = set(mnt.mounts_under(home))
    for dirpath, dirnames, filenames in os.walk(home):
        dirnames[:] = [d for d in dirnames if os.path.join(dirpath, d) not in mounted]
        for name in dirnames + filenames:
            if word in name:
                found.append(os.path.join(dirpath, name))
    return found


def dangling_links(directory: str | os.PathLike) -> list[str]:
    if not os.path.isdir(directory):
        return []
    return [e.path for e in os.scandir(directory) if e.is_symlink() and not os.path.exists(e.path)]

"""Fixtures for the overlay2 driver's own tests: both mount methods, tar building, XFS."""
from __future__ import annotations

import contextlib
import io
import tarfile
from pathlib import Path

import pytest
from graphdrivers.overlay import mountapi
from graphdrivers.overlay.driver import Overlay2Driver
from graphdrivers.testing.loopfs import loop_filesystem


def new_api_works(tmp_path: Path) -> bool:
    return mountapi.supports_lowerdir_plus(tmp_path)[0]


def open_driver(home: Path, method: str | None = None, **kwargs) -> Overlay2Driver:
    """A driver instance on ``home`` (made like graphdrivers.load does)."""
    home.mkdir(parents=True, exist_ok=True)
    return Overlay2Driver(home, kwargs.pop("options", None), mount_method=method, **kwargs)


@pytest.fixture(params=["new", "legacy"])
def method(request, tmp_path) -> str:
    if request.param == "new" and not new_api_works(tmp_path):
        pytest.skip("this kernel's overlayfs has no lowerdir+ (Linux < 6.8)")
    return request.param


@pytest.fixture
def ovl(method, tmp_path):
    drv = open_driver(tmp_path / "home" / "overlay2", method)
    try:
        yield drv
    finally:
        drv.cleanup()


@pytest.fixture
def naive_ovl(tmp_path):
    drv = open_driver(tmp_path / "home" / "overlay2", naive_diff=True)
    try:
        yield drv
    finally:
        drv.cleanup()


class Tar:
    """A small in-memory tar builder (OCI whiteout names written by hand)."""

    def __init__(self) -> None:
        self.buf = io.BytesIO()
        self.tar = tarfile.open(fileobj=self.buf, mode="w", format=tarfile.PAX_FORMAT)

    def dir(self, name: str, mode: int = 0o755) -> "Tar":
        info = tarfile.TarInfo(name)
        info.type, info.mode, info.mtime = tarfile.DIRTYPE, mode, 1_600_000_000
        self.tar.addfile(info)
        return self

    def file(self, name: str, data: bytes | str = b"", mode: int = 0o644) -> "Tar":
        data = data.encode() if isinstance(data, str) else data
        info = tarfile.TarInfo(name)
        info.size, info.mode, info.mtime = len(data), mode, 1_600_000_000
        self.tar.addfile(info, io.BytesIO(data))
        return self

    def whiteout(self, path: str) -> "Tar":
        head, _, name = path.rpartition("/")
        return self.file(f"{head}/.wh.{name}" if head else f".wh.{name}")

    def opaque(self, directory: str) -> "Tar":
        return self.file(f"{directory}/.wh..wh..opq")

    def stream(self) -> io.BytesIO:
        self.tar.close()
        self.buf.seek(0)
        return self.buf


def tar_names(stream) -> list[str]:
    with tarfile.open(fileobj=stream, mode="r|") as tar:
        return [m.name.rstrip("/") for m in tar]


@contextlib.contextmanager
def xfs_filesystem(tmp_path: Path, options: str = "prjquota", size: int = 320 << 20):
    """A fresh XFS on a loop device, mounted with ``options``; yields the mount point."""
    with loop_filesystem(tmp_path, "xfs", size, options) as target:
        yield target

"""Loop devices through ioctls, on sparse files: attach, grow, autoclear, detach."""
from __future__ import annotations

import errno
import os
import time

import pytest

from graphdrivers.kernel import loop as loopback

pytestmark = pytest.mark.skipif(
    not os.path.exists("/dev/loop-control") or os.geteuid() != 0,
    reason="loop devices need root and /dev/loop-control")

MiB = 1 << 20


def _size(device: str) -> int:
    with open(f"/sys/block/{os.path.basename(device)}/size") as f:
        return int(f.read()) * 512


def _wait_detached(device: str, backing: str, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if device not in loopback.find(backing):
            return True
        time.sleep(0.02)
    return False


@pytest.fixture
def sparse(tmp_path):
    path = tmp_path / "backing.img"
    with open(path, "wb") as f:
        f.truncate(64 * MiB)
    attached: list[str] = []
    yield path, attached
    for device in loopback.find(path):   # never leak a loop device
        loopback.detach(device)


def test_attach_and_autoclear_detach(sparse):
    path, _ = sparse
    dev = loopback.attach(path)
    try:
        assert dev.path.startswith("/dev/loop") and dev.fd >= 0
        assert dev.backing_file == os.path.realpath(path)
        assert loopback.backing_file(dev.path) == os.path.realpath(path)
        assert loopback.find(path) == [dev.path]
        assert _size(dev.path) == 64 * MiB
        os.pwrite(dev.fd, b"through the loop", 4096)
        os.fsync(dev.fd)
        with open(path, "rb") as f:
            f.seek(4096)
            assert f.read(16) == b"through the loop"
        assert os.stat(path).st_blocks * 512 < 64 * MiB, "the file stays sparse"
    finally:
        dev.close()
    assert dev.fd == -1
    dev.close()   # idempotent
    assert _wait_detached(dev.path, path), "autoclear did not detach on last close"
    assert loopback.backing_file(dev.path) in (None, "")


def test_refresh_capacity_after_grow(sparse):
    path, _ = sparse
    with loopback.attach(path) as dev:
        assert _size(dev.path) == 64 * MiB
        os.truncate(path, 128 * MiB)
        assert _size(dev.path) == 64 * MiB, "the kernel only learns of the growth on request"
        loopback.refresh_capacity(dev.path)
        assert _size(dev.path) == 128 * MiB
        os.pwrite(dev.fd, b"end", 128 * MiB - 3)
    assert _wait_detached(dev.path, path)


def test_without_autoclear_needs_detach(sparse):
    path, _ = sparse
    dev = loopback.attach(path, autoclear=False)
    dev.close()
    time.sleep(0.1)
    assert loopback.find(path) == [dev.path], "detached although autoclear was off"
    loopback.detach(dev.path)
    assert _wait_detached(dev.path, path)
    loopback.detach(dev.path)   # already detached: no error


def test_read_only(sparse):
    path, _ = sparse
    with loopback.attach(path, read_only=True) as dev:
        with open(f"/sys/block/{os.path.basename(dev.path)}/ro") as f:
            assert f.read().strip() == "1"
        # recent kernels allow the open but refuse the write itself
        with pytest.raises(OSError) as info:
            fd = os.open(dev.path, os.O_RDWR)
            try:
                os.pwrite(fd, b"x", 0)
                os.fsync(fd)
            finally:
                os.close(fd)
        assert info.value.errno in (errno.EROFS, errno.EACCES, errno.EPERM)
    with open(path, "rb") as f:
        assert f.read(1) == b"\0"
    assert _wait_detached(dev.path, path)


def test_two_files_get_two_devices(sparse, tmp_path):
    path, _ = sparse
    other = tmp_path / "other.img"
    with open(other, "wb") as f:
        f.truncate(8 * MiB)
    try:
        with loopback.attach(path) as a, loopback.attach(other) as b:
            assert a.path != b.path
            assert loopback.find(other) == [b.path]
            assert _size(b.path) == 8 * MiB
    finally:
        for device in loopback.find(other):
            loopback.detach(device)


def test_direct_io(sparse):
    path, _ = sparse
    try:
        fd = os.open(path, os.O_RDWR | os.O_DIRECT)
        os.close(fd)
    except OSError as exc:
        pytest.skip(f"the filesystem under {path} refuses O_DIRECT: {exc}")
    with loopback.attach(path, direct_io=True) as dev:
        assert loopback.direct_io_enabled(dev.path)
    with loopback.attach(path) as dev:
        assert not loopback.direct_io_enabled(dev.path)


def test_attach_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        loopback.attach(tmp_path / "nope.img")

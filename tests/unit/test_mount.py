"""mount(2)/umount2(2) through ctypes and /proc/self/mountinfo parsing, on real tmpfs mounts."""
from __future__ import annotations

import errno
import os

import pytest

from graphdrivers.kernel.mount import (MNT_DETACH, MS_BIND, MS_RDONLY, MS_REMOUNT, is_mountpoint,
                                mount, mountinfo, mounts_under, umount, unmount_all_under)

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="mounting needs root (CAP_SYS_ADMIN)")


@pytest.fixture
def cleanup_mounts(tmp_path):
    """Whatever a test leaves mounted under tmp_path is detached afterwards."""
    yield tmp_path
    for target in sorted({m.mountpoint for m in mountinfo()
                          if m.mountpoint.startswith(str(tmp_path))}, key=len, reverse=True):
        umount(target, MNT_DETACH)


def _entry(path):
    matches = [m for m in mountinfo() if m.mountpoint == os.path.realpath(path)]
    return matches[-1] if matches else None


def test_tmpfs_mount_and_umount(cleanup_mounts):
    target = cleanup_mounts / "mnt"
    target.mkdir()
    assert not is_mountpoint(target)
    mount("tmpfs", target, "tmpfs", 0, "size=1m,mode=0710")
    assert is_mountpoint(target)
    entry = _entry(target)
    assert entry.fstype == "tmpfs" and entry.source == "tmpfs"
    assert "size=1024k" in entry.super_options and "mode=710" in entry.super_options
    assert oct(os.stat(target).st_mode & 0o7777) == oct(0o710)
    (target / "f").write_text("on tmpfs")
    umount(target)
    assert not is_mountpoint(target)
    assert not (target / "f").exists()


def test_remount_read_only(cleanup_mounts):
    target = cleanup_mounts / "mnt"
    target.mkdir()
    mount("tmpfs", target, "tmpfs")
    mount("none", target, None, MS_REMOUNT | MS_RDONLY)
    assert "ro" in _entry(target).options.split(",")
    with pytest.raises(OSError) as info:
        (target / "f").write_text("x")
    assert info.value.errno == errno.EROFS
    umount(target)


@pytest.mark.parametrize("name", ["with space", "tab\there", "new\nline", "back\\slash",
                                  "all \t\n\\ four"])
def test_mountinfo_unescapes_odd_names(cleanup_mounts, name):
    target = cleanup_mounts / name
    target.mkdir()
    raw = open("/proc/self/mountinfo", encoding="utf-8").read()
    mount(f"src {name}", target, "tmpfs")
    try:
        assert is_mountpoint(target)
        entry = _entry(target)
        assert entry is not None, "the escaped mount point was not decoded"
        assert entry.mountpoint == str(target)
        assert entry.source == f"src {name}"
        assert entry.fstype == "tmpfs"
        assert raw != open("/proc/self/mountinfo", encoding="utf-8").read()
    finally:
        umount(target)
    assert not is_mountpoint(target)


def test_mountinfo_fields_of_root():
    entries = mountinfo()
    assert any(m.mountpoint == "/" for m in entries)
    for m in entries:
        assert m.mountpoint.startswith("/") and m.root.startswith("/")
        assert m.fstype and ":" in m.major_minor
        assert m.mount_id > 0 and m.parent_id >= 0


def test_bind_mount_and_nested_unmount_all(cleanup_mounts):
    base = cleanup_mounts / "base"
    (base / "a" / "b").mkdir(parents=True)
    src = cleanup_mounts / "src"
    src.mkdir()
    (src / "hello").write_text("bound")
    mount("tmpfs", base, "tmpfs")
    (base / "a" / "b").mkdir(parents=True)
    mount("tmpfs", base / "a", "tmpfs")
    (base / "a" / "b").mkdir()
    mount(src, base / "a" / "b", None, MS_BIND)
    assert (base / "a" / "b" / "hello").read_text() == "bound"
    found = mounts_under(base)
    assert found == [str(base / "a" / "b"), str(base / "a"), str(base)], "deepest first"
    assert mounts_under(cleanup_mounts / "bas") == []   # a prefix is not a parent
    unmount_all_under(base)
    assert mounts_under(base) == []
    assert (src / "hello").read_text() == "bound"


def test_umount_busy_retries_then_detach(cleanup_mounts):
    target = cleanup_mounts / "busy"
    target.mkdir()
    mount("tmpfs", target, "tmpfs")
    held = open(target / "open-file", "w")
    try:
        with pytest.raises(OSError) as info:
            umount(target, retries=2)
        assert info.value.errno == errno.EBUSY
        umount(target, MNT_DETACH)       # lazy unmount works while busy
        assert not is_mountpoint(target)
    finally:
        held.close()


def test_errors_carry_errno_and_path(cleanup_mounts):
    with pytest.raises(OSError) as info:
        umount(cleanup_mounts)              # not a mount point
    assert info.value.errno == errno.EINVAL
    assert str(cleanup_mounts) in str(info.value)
    target = cleanup_mounts / "x"
    target.mkdir()
    with pytest.raises(OSError) as info:
        mount("none", target, "no-such-filesystem-type")
    assert info.value.errno == errno.ENODEV
    with pytest.raises(OSError) as info:
        mount("tmpfs", cleanup_mounts / "missing", "tmpfs")
    assert info.value.errno == errno.ENOENT
    assert not is_mountpoint(target)

"""Empty, base and snapshot layers, deep chains (Docker graphtest's Create* and DeepLayerRead)."""
from __future__ import annotations

import errno
import os
import stat
import threading

import pytest

import graphdrivers
from graphdrivers.errors import InvalidOption, NotSupported

from .helpers import (CAPABILITY, IGNORED_AT_ROOT, LONG_FILE, assert_same_tree, build_rich_tree,
                      content, hardlink_groups, mounted, read, snapshot, write,
                      xattrs_supported, xfs_with_project_quota)


def test_create_empty(driver):
    driver.create("empty")
    assert driver.exists("empty")
    assert "empty" in driver.layers()
    assert driver.parent("empty") is None
    with mounted(driver, "empty") as root:
        st = os.stat(root)
        assert stat.S_ISDIR(st.st_mode)
        assert stat.S_IMODE(st.st_mode) == 0o755
        if os.geteuid() == 0:
            assert (st.st_uid, st.st_gid) == (0, 0)
        assert set(os.listdir(root)) - IGNORED_AT_ROOT == set()
    driver.remove("empty")
    assert not driver.exists("empty")
    assert "empty" not in driver.layers()


def test_create_rw_layer_and_metadata(driver):
    driver.create("base")
    driver.create("rw", "base", rw=True)
    assert driver.exists("rw")
    assert driver.parent("rw") == "base"
    meta = driver.metadata("rw")
    assert isinstance(meta, dict)
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items())
    status = driver.status()
    assert isinstance(status, list)
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in status)


def test_base_layer_keeps_a_real_tree(driver):
    driver.create("base")
    with mounted(driver, "base") as root:
        build_rich_tree(root, xattrs=xattrs_supported(root) is None)
        expected = snapshot(root)
        links = hardlink_groups(root)
    # a fresh mount sees exactly what was written
    with mounted(driver, "base") as root:
        assert_same_tree(expected, snapshot(root))
        assert hardlink_groups(root) == links
        assert read(root, LONG_FILE) == b"deep\n"
        assert os.readlink(root / "hosts-link") == "/etc/hosts"
    assert {frozenset({"usr/bin/python3.11", "usr/bin/python3", "usr/bin/python"})} == links


def test_xattrs_survive_in_layer_and_snapshot(driver):
    driver.create("base")
    with mounted(driver, "base") as root:
        why = xattrs_supported(root)
        if why:
            pytest.skip(why)
        write(root, "f", b"x")
        os.setxattr(root / "f", "user.k", b"v")
        write(root, "cap", b"bin", 0o755)
        os.setxattr(root / "cap", "security.capability", CAPABILITY)
    driver.create("snap", "base")
    with mounted(driver, "snap") as root:
        assert os.getxattr(root / "f", "user.k") == b"v"
        assert os.getxattr(root / "cap", "security.capability") == CAPABILITY


def test_snapshot_sees_parent_and_keeps_modes(driver):
    driver.create("base")
    with mounted(driver, "base") as root:
        build_rich_tree(root, xattrs=xattrs_supported(root) is None)
        expected = snapshot(root)
        links = hardlink_groups(root)
    driver.create("snap", "base")
    assert driver.parent("snap") == "base"
    with mounted(driver, "snap") as root:
        assert_same_tree(expected, snapshot(root))
        assert hardlink_groups(root) == links


def test_snapshot_writes_do_not_leak_to_parent(driver):
    driver.create("base")
    with mounted(driver, "base") as root:
        write(root, "shared.txt", "from base")
        write(root, "dir/keep", "keep")
        write(root, "gone", "bye")
        expected = snapshot(root)
    driver.create("snap", "base")
    driver.create("sibling", "base")
    with mounted(driver, "snap") as root:
        write(root, "shared.txt", "changed in snap")
        write(root, "dir/new", "new")
        (root / "gone").unlink()
        os.chmod(root / "dir", 0o700)
        os.chown(root / "dir/keep", 12, 34)
    for layer in ("base", "sibling"):
        with mounted(driver, layer) as root:
            assert_same_tree(expected, snapshot(root))
    with mounted(driver, "snap") as root:
        assert read(root, "shared.txt") == b"changed in snap"
        assert read(root, "dir/new") == b"new"
        assert not (root / "gone").exists()


@pytest.mark.parametrize("DEPTH", [20, pytest.param(100, marks=pytest.mark.slow)])
def test_deep_chain_top_sees_every_layer(driver, DEPTH):
    """Docker's DeepLayerRead: 100 layers is the requirement (slow on vfs: each is a copy)."""
    driver.create("layer-0")
    with mounted(driver, "layer-0") as root:
        write(root, "testfile.txt", "test content")
        write(root, "layer-0/layer-id", "layer-0")
    for i in range(1, DEPTH + 1):
        driver.create(f"layer-{i}", f"layer-{i - 1}")
        with mounted(driver, f"layer-{i}") as root:
            write(root, f"layer-{i}/layer-id", f"layer-{i}")
            write(root, f"layer-{i}/parent-id", f"layer-{i - 1}")
            write(root, "top-id", f"layer-{i}")
    top = f"layer-{DEPTH}"
    with mounted(driver, top) as root:
        assert read(root, "top-id") == top.encode()
        assert read(root, "testfile.txt") == b"test content"
        expected = top
        for i in range(DEPTH, 0, -1):
            assert read(root, f"layer-{i}/layer-id") == expected.encode()
            expected = read(root, f"layer-{i}/parent-id").decode()
        assert expected == "layer-0"
    assert driver.parent(top) == f"layer-{DEPTH - 1}"
    assert set(driver.layers()) >= {f"layer-{i}" for i in range(DEPTH + 1)}


def _check_quota(driver) -> None:
    driver.create("base")
    driver.create("quota", "base", rw=True, storage_opt={"size": "20M"})
    with mounted(driver, "quota") as root:
        write(root, "small", content(1, 8 << 20))
        with pytest.raises(OSError) as info:
            with open(root / "big", "wb") as f:
                for i in range(20):
                    f.write(content(i, 1 << 20))
                f.flush()
                os.fsync(f.fileno())
        assert info.value.errno in (errno.EDQUOT, errno.ENOSPC)
        assert read(root, "small") == content(1, 8 << 20)
    driver.create("unlimited", "base", rw=True)   # the limit is per layer
    with mounted(driver, "unlimited") as root:
        write(root, "big", content(2, 24 << 20))


def test_size_quota(driver, driver_name, home_and_options, tmp_path):
    """Docker's DriverTestSetQuota: a size storage option caps what a rw layer holds.

    Drivers on a plain directory (no test backend) get an XFS home with project
    quotas when their own home cannot take the option, so the quota code runs
    wherever the kernel can do it."""
    try:
        _check_quota(driver)
        return
    except InvalidOption as exc:
        reason = exc
    (tmp_path / "quota-fs").mkdir()
    with xfs_with_project_quota(tmp_path / "quota-fs") as xfs:
        try:
            again = graphdrivers.load(driver_name, xfs / "home", home_and_options[1])
        except NotSupported as exc:
            pytest.skip(f"{driver_name} takes no size quota here ({reason}) "
                        f"and cannot run on XFS ({exc})")
        with again:
            try:
                _check_quota(again)
            except InvalidOption as exc:
                # devicemapper: size is the layer's device size, never below dm.basesize
                # (tests/devmapper/test_driver.py covers growth and the refusal)
                pytest.skip(f"{driver_name}: size is not a quota: {exc}")


def test_layers_from_threads(driver):
    driver.create("base")
    with mounted(driver, "base") as root:
        write(root, "shared", "base")
    errors = []

    def worker(n):
        try:
            for i in range(4):
                layer = f"t{n}-{i}"
                driver.create(layer, "base")
                with mounted(driver, layer) as root:
                    assert read(root, "shared") == b"base"
                    write(root, "mine", layer)
                with mounted(driver, layer) as root:
                    assert read(root, "mine") == layer.encode()
                if i % 2:
                    driver.remove(layer)
        except BaseException as exc:  # collected and reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert sorted(driver.layers()) == sorted(["base"] + [f"t{n}-{i}" for n in range(4)
                                                         for i in (0, 2)])

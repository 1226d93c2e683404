"""Mount reference counting and removal rules (DESIGN.md, edge cases)."""
from __future__ import annotations

import threading

import pytest

import graphdrivers

from graphdrivers.errors import LayerInUse

from .helpers import mounted, read, write


def test_n_mounts_need_n_unmounts(driver):
    driver.create("l")
    with mounted(driver, "l") as root:
        write(root, "f", "data")
    paths = [driver.mount("l") for _ in range(3)]
    assert len(set(map(str, paths))) == 1, "every mount returns the same root"
    for remaining in (2, 1):
        driver.unmount("l")
        assert read(paths[0], "f") == b"data", f"still readable with {remaining} mounts left"
        with pytest.raises(LayerInUse):
            driver.remove("l")
    driver.unmount("l")
    driver.remove("l")
    assert not driver.exists("l")


def test_remove_while_mounted_keeps_the_layer(driver):
    driver.create("base")
    with mounted(driver, "base") as root:
        write(root, "f", "base")
    driver.create("l", "base")
    root = driver.mount("l")
    try:
        write(root, "g", "written while mounted")
        with pytest.raises(LayerInUse):
            driver.remove("l")
        assert driver.exists("l")
        assert read(root, "f") == b"base"
        assert read(root, "g") == b"written while mounted"
    finally:
        driver.unmount("l")
    with mounted(driver, "l") as root:
        assert read(root, "g") == b"written while mounted"
    driver.remove("l")
    assert not driver.exists("l")


def test_remove_parent_with_children(driver):
    """One rule for every driver (Docker's layer store, containerd): a layer with
    children is not removed; LayerInUse names the children."""
    driver.create("parent")
    with mounted(driver, "parent") as root:
        write(root, "p", "from parent")
    driver.create("child", "parent")
    driver.create("child2", "parent")
    with mounted(driver, "child") as root:
        write(root, "c", "from child")
    with pytest.raises(LayerInUse, match="child, child2"):
        driver.remove("parent")
    assert driver.exists("parent") and driver.parent("child") == "parent"
    with mounted(driver, "parent") as root:
        assert read(root, "p") == b"from parent"
    driver.remove("child2")
    with pytest.raises(LayerInUse, match="child"):
        driver.remove("parent")
    assert driver.exists("child")
    with mounted(driver, "child") as root:
        assert read(root, "p") == b"from parent"
        assert read(root, "c") == b"from child"


def test_concurrent_mounts_from_threads(driver):
    driver.create("l")
    with mounted(driver, "l") as root:
        write(root, "f", "x")
    errors = []

    def worker():
        try:
            for _ in range(20):
                root = driver.mount("l")
                assert read(root, "f") == b"x"
                driver.unmount("l")
        except BaseException as exc:  # reported below, with the thread's error
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    driver.remove("l")   # every mount was matched: nothing holds it any more
    assert not driver.exists("l")


def test_cleanup_releases_mounts(driver, driver_name, home_and_options):
    driver.create("l")
    driver.mount("l")
    driver.mount("l")
    driver.cleanup()
    driver.cleanup()   # idempotent: the fixture calls it once more
    # cleanup unmounted everything: a new instance can remove the layer
    home, options = home_and_options
    with graphdrivers.load(driver_name, home, options) as again:
        again.remove("l")
        assert not again.exists("l")


def test_remove_and_recreate_same_id(driver):
    driver.create("l")
    with mounted(driver, "l") as root:
        write(root, "old", "old")
    driver.remove("l")
    driver.create("l")
    with mounted(driver, "l") as root:
        assert not (root / "old").exists()

"""Bad ids, bad options, double create, missing layers: clear errors, nothing left behind."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

import graphdrivers
from graphdrivers.registry import driver_class
from graphdrivers.errors import (DriverError, InvalidLayerId, InvalidOption, LayerExists,
                                 LayerNotFound)

from .helpers import TarBuilder, mounted, read, write

BAD_IDS = ["../x", "a/b", "", "x" * 129, ".hidden", "-dash", "..", ".", "a b", "a\x00b",
           "tab\t", "é", None, 123, b"bytes"]


def _paths(root) -> set[str]:
    root = Path(root)
    if not root.exists():
        return set()
    return {os.path.relpath(os.path.join(d, n), root)
            for d, dirs, files in os.walk(root) for n in dirs + files}


def _tar():
    return TarBuilder().file("f", "x").stream()


CALLS = {
    "create": lambda d, bad: d.create(bad),
    "create-parent": lambda d, bad: d.create("fresh", bad),
    "remove": lambda d, bad: d.remove(bad),
    "mount": lambda d, bad: d.mount(bad),
    "unmount": lambda d, bad: d.unmount(bad),
    "metadata": lambda d, bad: d.metadata(bad),
    "parent": lambda d, bad: d.parent(bad),
    "diff": lambda d, bad: d.diff(bad),
    "diff-parent": lambda d, bad: d.diff("good", bad),
    "changes": lambda d, bad: d.changes(bad),
    "changes-parent": lambda d, bad: d.changes("good", bad),
    "diff_size": lambda d, bad: d.diff_size(bad),
    "apply_diff": lambda d, bad: d.apply_diff(bad, None, _tar()),
}


@pytest.mark.parametrize("method", sorted(CALLS))
def test_bad_ids_rejected_by_every_method(driver, method):
    driver.create("good")
    before = _paths(driver.home)
    for bad in BAD_IDS:
        if bad is None and method.endswith("-parent"):
            continue   # a parent of None means "no parent"
        with pytest.raises(InvalidLayerId):
            CALLS[method](driver, bad)
    assert _paths(driver.home) == before, "a refused call left something behind"
    assert not driver.exists("fresh")
    assert sorted(driver.layers()) == ["good"]


def test_exists_with_bad_ids(driver):
    for bad in BAD_IDS:
        try:
            assert driver.exists(bad) is False
        except InvalidLayerId:
            pass


def test_longest_valid_id(driver):
    long_id = "a" + "b" * 127
    driver.create(long_id)
    driver.create("c." + "d_-" * 42, long_id)
    assert driver.exists(long_id)
    with mounted(driver, "c." + "d_-" * 42) as root:
        assert root.is_dir()


def test_unknown_driver_option(driver_name, home_and_options):
    home, options = home_and_options
    before = _paths(home)
    with pytest.raises(InvalidOption) as info:
        graphdrivers.load(driver_name, home, {**options, "nosuch.option": "1"})
    assert "nosuch.option" in str(info.value)
    assert _paths(home) == before, "a refused load left state behind"


def test_malformed_driver_option(driver_name, home_and_options):
    home, options = home_and_options
    cls = driver_class(driver_name)
    bad_value = "not-a-value-%!"
    key = next((k for k, spec in cls.OPTIONS.items() if _rejects(spec.parse, bad_value)), None)
    if key is None:
        pytest.skip(f"{driver_name} has no option that can be malformed")
    before = _paths(home)
    with pytest.raises(InvalidOption) as info:
        graphdrivers.load(driver_name, home, {**options, key: bad_value})
    assert key in str(info.value)
    assert _paths(home) == before


def _rejects(parse, value) -> bool:
    try:
        parse(value)
    except (ValueError, TypeError):
        return True
    return False


@pytest.mark.parametrize("storage_opt", [{"nosuch": "1"}, {"size": "12 parsecs"},
                                         {"size": "-5G"}])
def test_bad_storage_opt(driver, storage_opt):
    driver.create("base")
    before = _paths(driver.home)
    with pytest.raises(InvalidOption):
        driver.create("l", storage_opt=storage_opt)
    with pytest.raises(InvalidOption):
        driver.create("l", "base", storage_opt=storage_opt)
    with pytest.raises(InvalidOption):
        driver.create("l", "base", rw=True, storage_opt=storage_opt)
    assert not driver.exists("l")
    assert _paths(driver.home) == before
    driver.create("l", "base")   # the id is free again
    assert driver.exists("l")


def test_double_create(driver):
    driver.create("base")
    with mounted(driver, "base") as root:
        write(root, "f", "original")
    driver.create("child", "base")
    for args in (("base",), ("base", None), ("child", "base"), ("child",)):
        with pytest.raises(LayerExists):
            driver.create(*args)
    with mounted(driver, "base") as root:
        assert read(root, "f") == b"original"
    assert driver.parent("child") == "base"


MISSING_CALLS = {
    "remove": lambda d: d.remove("missing"),
    "mount": lambda d: d.mount("missing"),
    "diff": lambda d: d.diff("missing"),
    "changes": lambda d: d.changes("missing"),
    "diff_size": lambda d: d.diff_size("missing"),
    "metadata": lambda d: d.metadata("missing"),
    "apply_diff": lambda d: d.apply_diff("missing", None, _tar()),
    "create-parent": lambda d: d.create("orphan", "missing"),
    "diff-parent": lambda d: d.diff("good", "missing"),
    "changes-parent": lambda d: d.changes("good", "missing"),
}


@pytest.mark.parametrize("method", sorted(MISSING_CALLS))
def test_missing_layer(driver, method):
    driver.create("good")
    before = _paths(driver.home)
    with pytest.raises(LayerNotFound):
        MISSING_CALLS[method](driver)
    assert not driver.exists("missing") and not driver.exists("orphan")
    assert _paths(driver.home) == before


def test_errors_are_driver_errors_with_words(driver):
    with pytest.raises(DriverError) as info:
        driver.mount("missing")
    assert "missing" in str(info.value)
    with pytest.raises(DriverError) as info:
        driver.create("../x")
    assert "../x" in str(info.value)

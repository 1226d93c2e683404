"""Fixtures for the btrfs driver's own tests: one loop-device btrfs per module."""
from __future__ import annotations

import itertools

import pytest

import graphdrivers
from graphdrivers.btrfs.testing import filesystem

_homes = itertools.count()


@pytest.fixture(scope="module")
def btrfs_fs(tmp_path_factory):
    with filesystem(tmp_path_factory.mktemp("btrfs")) as target:
        yield target


@pytest.fixture
def home(btrfs_fs):
    return btrfs_fs / f"home{next(_homes)}"


@pytest.fixture
def drv(home):
    driver = graphdrivers.load("btrfs", home)
    try:
        yield driver
    finally:
        driver.cleanup()

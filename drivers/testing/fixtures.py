"""pytest fixtures for driver tests: one test per selected driver, each in a fresh home.

A conftest makes them available by importing them (the conformance suite's own
conftest does; so does the project's tests/conftest.py):

    from graphdrivers.testing.fixtures import driver, driver_name, home_and_options  # noqa: F401

``driver_name`` is parametrized over graphdrivers.testing.selection.driver_names()
when this module is imported, so the selection must be made before (the
``--graphdriver`` option is applied before any conftest is imported).
"""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

import graphdrivers
import graphdrivers.registry
from graphdrivers.testing.homes import driver_home
from graphdrivers.testing.selection import driver_names, skip_unless_requested


@pytest.fixture(params=driver_names())
def driver_name(request) -> str:
    return request.param


@pytest.fixture
def home_and_options(driver_name, tmp_path):
    """(home, options) for the driver, after checking it can run there (else a skip)."""
    with driver_home(driver_name, tmp_path) as prepared:
        try:
            cls = graphdrivers.registry.driver_class(driver_name)
            cls.probe(Path(prepared[0]) / driver_name)
        except graphdrivers.NotSupported as exc:
            skip_unless_requested(driver_name, exc)
        yield prepared


@pytest.fixture
def driver(driver_name, home_and_options):
    """The loaded driver; cleaned up (every mount released) after the test."""
    home, options = home_and_options
    try:
        drv = graphdrivers.load(driver_name, home, options)
    except graphdrivers.NotSupported as exc:
        skip_unless_requested(driver_name, exc)
    try:
        yield drv
    finally:
        drv.cleanup()


@pytest.fixture(autouse=True)
def _reclaim_tmp_path(tmp_path):
    """Every test's files go when it ends (see reclaim); runs after its fixtures' teardown."""
    yield
    reclaim(tmp_path)


def reclaim(tmp_path: Path) -> None:
    """Delete a finished test's files (pool images, layers): pytest keeps every
    tmp_path of a session, which fills the VM's tmpfs after a few dozen pools.
    Only when nothing is mounted below any more, so no mounted data is touched."""
    from graphdrivers.kernel.mount import mounts_under
    if mounts_under(tmp_path):
        return
    for entry in tmp_path.iterdir():
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)

"""Shared fixtures: a home for every driver that can run here.

Each driver may provide ``tests/backends/<name>.py`` with a context manager
``backend(tmp_path)`` that prepares what the driver needs (a btrfs loop
filesystem, a thin pool, ...) and yields ``(home, options)``, or calls
``pytest.skip`` with the reason the machine cannot run it. Drivers without such
a module get a plain temporary directory.
"""
from __future__ import annotations

import contextlib
import importlib
import os
import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, os.path.dirname(__file__))

import graphdrivers  # noqa: E402
import graphdrivers.registry  # noqa: E402


def _backend(name: str):
    try:
        module = importlib.import_module(f"backends.{name}")
    except ModuleNotFoundError as exc:
        if exc.name != f"backends.{name}":
            raise
        return None
    return module.backend


def driver_names() -> list[str]:
    only = os.environ.get("GRAPHDRIVERS_TEST_DRIVERS")
    names = graphdrivers.available()
    return [n for n in names if not only or n in only.split(",")]


@contextlib.contextmanager
def driver_home(name: str, tmp_path: Path):
    """Yield (home, options) for driver ``name``, skipping when the machine cannot run it."""
    backend = _backend(name)
    if backend is None:
        yield tmp_path / "home", {}
        return
    with backend(tmp_path) as prepared:
        yield prepared


@pytest.fixture(params=driver_names())
def driver_name(request) -> str:
    return request.param


def _explicitly_requested(name: str) -> bool:
    only = os.environ.get("GRAPHDRIVERS_TEST_DRIVERS", "")
    return name in only.split(",")


def skip_unless_requested(name: str, exc: Exception):
    """A driver that cannot run here is skipped with its reason (as Docker's graphtest
    does), unless GRAPHDRIVERS_TEST_DRIVERS names it: then it must work."""
    if _explicitly_requested(name):
        raise exc
    pytest.skip(f"{name} cannot run here: {exc}")


@pytest.fixture
def home_and_options(driver_name, tmp_path):
    with driver_home(driver_name, tmp_path) as prepared:
        try:
            cls = graphdrivers.registry.driver_class(driver_name)
            cls.probe(Path(prepared[0]) / driver_name)
        except graphdrivers.NotSupported as exc:
            skip_unless_requested(driver_name, exc)
        yield prepared


@pytest.fixture(autouse=True)
def _reclaim_tmp_path(tmp_path):
    """Every test's files go when it ends (see _reclaim); runs after its fixtures' teardown."""
    yield
    _reclaim(tmp_path)


def _reclaim(tmp_path: Path) -> None:
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


@pytest.fixture
def driver(driver_name, home_and_options):
    home, options = home_and_options
    try:
        drv = graphdrivers.load(driver_name, home, options)
    except graphdrivers.NotSupported as exc:
        skip_unless_requested(driver_name, exc)
    try:
        yield drv
    finally:
        drv.cleanup()

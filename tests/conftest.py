"""Shared fixtures: every test that takes ``driver``/``driver_name`` runs once per driver.

The fixtures, the driver selection (GRAPHDRIVERS_TEST_DRIVERS, ``--graphdriver``)
and the backend homes (btrfs on a loop device, a devicemapper thin pool) are the
installed package's, graphdrivers.testing, which third-party drivers use too.
tests/conformance is a link to that package's conformance suite.
"""
from __future__ import annotations

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))   # helper modules beside the tests

from graphdrivers.testing.fixtures import (_reclaim_tmp_path, driver, driver_name,  # noqa: E402,F401
                                           home_and_options)
from graphdrivers.testing.homes import home_maker  # noqa: E402

# drivers of this project whose conformance runs need a prepared home
OWN_HOME_MAKERS = ("btrfs", "devicemapper")


def pytest_sessionstart(session: pytest.Session) -> None:
    """An install older than the testing package registers no home makers: btrfs would
    then run on a plain directory and skip everything, so stop with the fix instead."""
    missing = [name for name in OWN_HOME_MAKERS if home_maker(name) is None]
    if missing:
        raise pytest.UsageError(
            f"no home maker registered for {', '.join(missing)} (graphdrivers.testing.homes "
            f"entry points): the installed metadata is stale; run "
            f"`.venv/bin/pip install -e '.[test,btrfs,bench]'` in the checkout")

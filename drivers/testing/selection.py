"""Which drivers a test run covers.

``GRAPHDRIVERS_TEST_DRIVERS`` (comma separated) names them; the pytest option
``--graphdriver`` sets it (see graphdrivers.testing.plugin), so the choice also
reaches child processes and the VM. Unset, the run covers every installed driver.
"""
from __future__ import annotations

import os

import pytest

import graphdrivers

ENV = "GRAPHDRIVERS_TEST_DRIVERS"


def requested() -> list[str]:
    """The drivers named for this run, sorted; empty when none is named."""
    return sorted({name.strip() for name in os.environ.get(ENV, "").split(",") if name.strip()})


def driver_names() -> list[str]:
    """The drivers this run covers, sorted.

    A named driver that is not installed stays in the list: its tests then fail
    saying so, where dropping it would pass a run that tested nothing.
    """
    return requested() or graphdrivers.available()


def explicitly_requested(name: str) -> bool:
    return name in requested()


def skip_unless_requested(name: str, exc: Exception) -> None:
    """A driver that cannot run here is skipped with its reason (as Docker's graphtest
    does), unless the run names it: then it must work, and ``exc`` is raised."""
    if explicitly_requested(name):
        raise exc
    pytest.skip(f"{name} cannot run here: {exc}")

"""The pytest plugin (entry point ``pytest11``): the ``--graphdriver`` option.

Only the option lives here, because pytest loads this module in every run of an
environment where graphdrivers is installed; the fixtures are imported by the
conftests that want them (graphdrivers.testing.fixtures). Without the plugin
(PYTEST_DISABLE_PLUGIN_AUTOLOAD=1) add ``-p graphdrivers.testing.plugin``, or set
GRAPHDRIVERS_TEST_DRIVERS.
"""
from __future__ import annotations

import os

import pytest

from graphdrivers.testing.selection import ENV


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.getgroup("graphdrivers").addoption(
        "--graphdriver", action="append", default=[], metavar="NAME",
        help=f"run the driver tests against driver NAME (an entry point in graphdrivers.drivers; "
             f"repeatable or comma separated); sets {ENV}, which it overrides")


@pytest.hookimpl(tryfirst=True)
def pytest_load_initial_conftests(early_config: pytest.Config) -> None:
    """Apply the option before any conftest imports the fixtures, which read the selection."""
    names = [n for value in early_config.known_args_namespace.graphdriver
             for n in value.split(",") if n.strip()]
    if names:
        os.environ[ENV] = ",".join(names)

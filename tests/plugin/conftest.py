"""Fixtures: a plugin server on a temporary unix socket (helpers in plugin_client.py)."""
from __future__ import annotations

import pytest

import graphdrivers
from graphdrivers.servers.docker_plugin import PluginServer

from plugin.plugin_client import Client, running


@pytest.fixture
def plugin_driver() -> str:
    """Protocol tests run on vfs: the protocol, not the storage, is under test."""
    from graphdrivers.registry import driver_class
    try:
        driver_class("vfs")
    except graphdrivers.NotSupported as exc:
        pytest.skip(f"the vfs driver is not available: {exc}")
    return "vfs"


@pytest.fixture
def plugin_env(tmp_path):
    """Paths a plugin uses: socket, Init state dir, and dockerd's would-be data root."""
    env = {"socket": tmp_path / "run" / "gd.sock", "state": tmp_path / "state",
           "home": tmp_path / "data-root" / "graphdrivers-vfs"}
    return env


@pytest.fixture
def server(plugin_driver, plugin_env):
    srv = PluginServer(plugin_driver, None, {}, plugin_env["socket"], state_dir=plugin_env["state"])
    with running(srv):
        yield srv


@pytest.fixture
def client(server, plugin_env):
    """A client on an initialised plugin (Activate + Init, as dockerd starts)."""
    c = Client(plugin_env["socket"])
    assert c.ok("Plugin.Activate") == {"Implements": ["GraphDriver"]}
    c.ok("GraphDriver.Init", {"Home": str(plugin_env["home"]), "Opts": None,
                              "UIDMaps": None, "GIDMaps": None})
    try:
        yield c
    finally:
        c.close()

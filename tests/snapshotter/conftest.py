"""A snapshotter process per driver (homes as the conformance suite makes them)."""
from __future__ import annotations

import contextlib
from pathlib import Path

import pytest

import graphdrivers
import graphdrivers.registry
from graphdrivers.kernel.mount import mounts_under, umount
from graphdrivers.testing.homes import driver_home
from graphdrivers.testing.selection import skip_unless_requested

from snapshotter.client import Client, Server


@pytest.fixture
def snap_env(driver_name, tmp_path):
    with driver_home(driver_name, tmp_path) as (home, options):
        try:
            graphdrivers.registry.driver_class(driver_name).probe(Path(home) / driver_name)
        except graphdrivers.NotSupported as exc:
            skip_unless_requested(driver_name, exc)
        mnt = tmp_path / "mnt"
        mnt.mkdir()
        server = Server(driver_name, Path(home), options, tmp_path / "run" / "snap.sock",
                        tmp_path / "server.log")
        (tmp_path / "run").mkdir()
        try:
            yield {"server": server, "home": Path(home), "mnt": mnt, "driver": driver_name,
                   "options": options}
        finally:
            for target in mounts_under(mnt):
                with contextlib.suppress(OSError):
                    umount(target, 2)
            server.stop()


@pytest.fixture
def server(snap_env):
    return snap_env["server"].start()


@pytest.fixture
def client(server):
    c = Client(server.socket)
    yield c
    c.close()

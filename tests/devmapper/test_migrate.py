"""graphdrivers migrate to and from devicemapper (issue 18), in the VM: the chain of
tests/migrate (23 layers, every kind of entry) devicemapper -> overlay2 and back.

overlay2's home sits on ext4 on a loop device: the guest's /tmp is a tmpfs, which on
Debian's 6.1 kernel takes no user xattrs."""
from __future__ import annotations

import contextlib
import time

import pytest

import graphdrivers
from graphdrivers import migrate
from graphdrivers.devmapper.testing import backend
from graphdrivers.testing.loopfs import loop_filesystem

from migrate.chain import assert_same_layers, build_chain

pytestmark = pytest.mark.devicemapper


@contextlib.contextmanager
def both(tmp_path):
    with backend(tmp_path / "dm") as (dm_home, dm_options), \
            loop_filesystem(tmp_path, "ext4", 1 << 30, name="ovl") as ovl_root:
        dm = graphdrivers.load("devicemapper", dm_home, dm_options)
        ovl = graphdrivers.load("overlay2", ovl_root / "home")
        try:
            yield dm, ovl
        finally:
            ovl.cleanup()
            dm.cleanup()


@pytest.mark.parametrize("direction", ["devicemapper-to-overlay2", "overlay2-to-devicemapper"])
def test_migrate_the_chain(direction, tmp_path, capsys):
    (tmp_path / "dm").mkdir()
    with both(tmp_path) as (dm, ovl):
        source, target = (dm, ovl) if direction.startswith("devicemapper") else (ovl, dm)
        ids = build_chain(source)
        start = time.monotonic()
        summary = migrate.migrate(source, target)
        took = time.monotonic() - start
        assert summary["copied"] == len(ids) == summary["verified"]
        assert_same_layers(source, target, ids)
        with capsys.disabled():
            print(f"\n{direction}: {len(ids)} layers migrated in {took:.1f}s")

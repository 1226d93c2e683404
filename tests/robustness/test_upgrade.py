"""A home written by the code from before the layer store loads with its layers intact.

The old home is made by the old code itself: the tree of commit OLD (the last one
before the store) is taken from git and imported in a child process, which
creates layers on the home the way that code did (vfs meta/<id>.json, overlay2's
lower/link files and l/ links, btrfs meta/ records, devicemapper's device records
with their parents in metadata/layers/). The new code then loads it.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import graphdrivers
from graphdrivers.errors import LayerInUse
from graphdrivers.store.layers import LOG

from .layers import content, dangling_links, write

OLD = "6b8b77c"      # the last commit before the layer store
OLD_DM = "9fdb190"   # the last commit where devicemapper kept its own layer records
REPO = Path(__file__).resolve().parents[2]
DRIVERS = ("vfs", "overlay2", "btrfs",
           pytest.param("devicemapper", marks=pytest.mark.devicemapper))   # in the VM
NO_RW_FLAG = ("overlay2", "devicemapper")   # their old layouts kept no read-write flag

OLD_SCRIPT = """
import json, sys, graphdrivers
assert graphdrivers.__file__.startswith(sys.argv[1]), graphdrivers.__file__
d = graphdrivers.load(sys.argv[2], sys.argv[3], json.loads(sys.argv[4]))
def put(layer, name, data):
    root = d.mount(layer)
    with open(f"{root}/{name}", "wb") as f:
        f.write(data)
    d.unmount(layer)
d.create("base"); put("base", "f", b"base")
d.create("child", "base"); put("child", "g", b"child")
d.create("top", "child", rw=True); put("top", "h", b"top")
d.create("alone"); d.create("gone", "alone"); d.remove("gone")
d.cleanup()
"""


def _old_package(tmp_path: Path, commit: str) -> Path:
    """The old tree laid out as the installed package was (setup.cfg's package_dir)."""
    try:
        tar = subprocess.run(["git", "-C", str(REPO), "archive", commit, "drivers", "overlay",
                              "btrfs", "devmapper"], check=True, capture_output=True).stdout
    except (OSError, subprocess.CalledProcessError) as exc:
        pytest.skip(f"the old code ({commit}) is not in this clone's history: {exc}")
    root = tmp_path / "old-code"
    root.mkdir()
    # GNU tar, not tarfile: Debian 12's Python 3.11.2 predates extractall(filter=)
    subprocess.run(["tar", "-x", "-C", str(root)], input=tar, check=True)
    package = root / "site" / "graphdrivers"
    package.parent.mkdir()
    (root / "drivers").rename(package)
    for sub in ("overlay", "btrfs", "devmapper"):
        (root / sub).rename(package / sub)
    return package.parent


@pytest.mark.parametrize("name", DRIVERS)
def test_home_written_by_the_old_code(name, tmp_path):
    from graphdrivers.testing.homes import driver_home
    from graphdrivers.testing.selection import skip_unless_requested
    if name not in graphdrivers.available():
        pytest.skip(f"{name} is not installed")
    site = _old_package(tmp_path, OLD_DM if name == "devicemapper" else OLD)
    with driver_home(name, tmp_path) as (home, options):
        try:
            graphdrivers.registry.driver_class(name).probe(Path(home) / name)
        except graphdrivers.NotSupported as exc:
            skip_unless_requested(name, exc)
        env = {**os.environ, "PYTHONPATH": str(site)}
        subprocess.run([sys.executable, "-c", OLD_SCRIPT, str(site), name, str(home),
                        json.dumps(options)], check=True, env=env, cwd=tmp_path,
                       capture_output=True, text=True)
        state = Path(home) / name
        assert not (state / LOG).exists(), "the old code wrote no layer store"

        drv = graphdrivers.load(name, home, options)
        try:
            assert drv.layers() == ["alone", "base", "child", "top"]
            assert [drv.parent(i) for i in ("base", "child", "top", "alone")] == \
                [None, "base", "child", None]
            if name not in NO_RW_FLAG:
                assert drv.layer_store.get("top").rw and not drv.layer_store.get("child").rw
            assert content(drv, "top")["h"][7] and set(content(drv, "top")) >= {"f", "g", "h"}
            assert set(content(drv, "child")) >= {"f", "g"} and "h" not in content(drv, "child")
            with pytest.raises(LayerInUse, match="child"):
                drv.remove("base")
            # the store is the record now: a second load reads it, not the old files
            assert (state / LOG).exists()
            second = graphdrivers.load(name, home, options)
            try:
                assert second.layers() == drv.layers()
            finally:
                second.cleanup()
            drv.create("new", "top")
            write(drv, "new", {"n": b"new"})
            assert set(content(drv, "new")) >= {"f", "g", "h", "n"}
            for layer in ("new", "top", "child", "base", "alone"):
                drv.remove(layer)
            assert drv.layers() == []
            if name == "devicemapper":      # every layer's device went with it
                assert drv.store.layer_ids() == []
                assert drv.store.all_device_ids() == {drv.store.base().device_id}
        finally:
            drv.cleanup()
        if name == "overlay2":
            assert dangling_links(state / "l") == [] and os.listdir(state / "l") == []
        assert not (state / "meta").exists() or os.listdir(state / "meta") == []

"""Docker's option vocabulary as dockerd accepts it (vfs' driver-wide ``size``,
``overlay2.override_kernel_check``, the libdm log-level mapping), and the
``layer inspect`` / ``layer usage`` commands. devicemapper's side runs in the VM
(tests/devmapper/test_docker_options_dm.py), vfs' size on XFS project quotas in
tests/unit/test_vfs_quota.py (the VM too: the host kernel has no XFS quotas)."""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys

import pytest

import graphdrivers
from graphdrivers.errors import InvalidOption

CLI = [sys.executable, "-m", "graphdrivers.cli"]


def cli(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(CLI + list(args), capture_output=True, text=True, timeout=120)
    if check:
        assert result.returncode == 0, result.stderr
    return result


def test_vfs_driver_wide_size_without_quotas_is_refused_at_load(tmp_path):
    with pytest.raises(InvalidOption, match="size=1G"):
        graphdrivers.load("vfs", tmp_path / "home", {"size": "1G"})
    with pytest.raises(InvalidOption, match="size"):
        graphdrivers.load("vfs", tmp_path / "home", {"size": "lots"})


def test_overlay2_override_kernel_check_is_accepted_and_noted(tmp_path, caplog):
    try:
        graphdrivers.registry.driver_class("overlay2").probe(tmp_path / "overlay2")
    except graphdrivers.NotSupported as exc:
        pytest.skip(f"overlay2 cannot run here: {exc}")
    with caplog.at_level(logging.INFO, logger="graphdrivers.overlay"):
        driver = graphdrivers.load("overlay2", tmp_path / "home",
                                   {"overlay2.override_kernel_check": "true"})
    try:
        assert "changes nothing" in caplog.text
        assert "changes nothing" in dict(driver.status())["Override Kernel Check"]
        driver.create("a")
        driver.mount("a")
        driver.unmount("a")
    finally:
        driver.cleanup()
    plain = graphdrivers.load("overlay2", tmp_path / "home",
                              {"overlay2.override_kernel_check": "false"})
    try:
        assert "Override Kernel Check" not in dict(plain.status())
    finally:
        plain.cleanup()
    with pytest.raises(InvalidOption, match="override_kernel_check"):
        graphdrivers.load("overlay2", tmp_path / "home2",
                          {"overlay2.override_kernel_check": "perhaps"})


@pytest.fixture
def dm_logger_level():
    logger = logging.getLogger("graphdrivers.devmapper.dm")
    general = logging.getLogger("graphdrivers")
    saved = (logger.level, general.level)
    yield logger, general
    logger.setLevel(saved[0])
    general.setLevel(saved[1])


@pytest.mark.parametrize("libdm,expected", [(2, logging.CRITICAL), (3, logging.ERROR),
                                            (4, logging.WARNING), (5, logging.INFO),
                                            (6, logging.INFO), (7, logging.DEBUG)])
def test_libdm_log_level_maps_as_docker_does(dm_logger_level, libdm, expected):
    from graphdrivers.devmapper import dm
    logger, general = dm_logger_level
    general.setLevel(logging.DEBUG)
    dm.set_log_level(libdm)
    assert logger.level == expected
    general.setLevel(logging.WARNING)        # the process's level still applies on top
    dm.set_log_level(libdm)
    assert logger.level == max(expected, logging.WARNING)


def test_libdm_log_level_out_of_range_is_refused():
    from graphdrivers.devmapper.config import parse_config
    with pytest.raises(InvalidOption, match="libdm_log_level"):
        parse_config({"dm.libdm_log_level": "8"})


# -- layer inspect / layer usage ------------------------------------------------

def test_layer_inspect(tmp_path):
    common = ["--home", str(tmp_path / "home"), "--driver", "vfs"]
    cli(*common, "layer", "create", "base")
    cli(*common, "layer", "create", "--rw", "--parent", "base", "c")
    got = json.loads(cli(*common, "layer", "inspect", "c", "--json").stdout)
    assert got == {"id": "c", "parent": "base", "rw": True, "mounted_by": None, "driver": "vfs",
                   "metadata": {"Dir": str(tmp_path / "home" / "vfs" / "dir" / "c")}}
    text = cli(*common, "layer", "inspect", "c").stdout.splitlines()
    assert text[:5] == ["ID: c", "Driver: vfs", "Parent: base", "Mode: rw", "Mounted: -"]
    assert f"Dir: {tmp_path / 'home' / 'vfs' / 'dir' / 'c'}" in text
    missing = cli(*common, "layer", "inspect", "nosuch", check=False)
    assert missing.returncode == 1 and "nosuch" in missing.stderr
    assert len(missing.stderr.splitlines()) == 1


@pytest.mark.parametrize("driver", ["vfs", "overlay2"])
def test_layer_usage_counts_real_blocks_and_inodes(tmp_path, driver):
    home = tmp_path / "home"
    try:
        graphdrivers.registry.driver_class(driver).probe(home / driver)
    except graphdrivers.NotSupported as exc:
        pytest.skip(f"{driver} cannot run here: {exc}")
    with graphdrivers.load(driver, home) as drv:
        drv.create("base")
        root = drv.mount("base")
        (root / "sparse").write_bytes(b"")
        os.truncate(root / "sparse", 100 << 20)          # 100 MiB apparent, no blocks
        (root / "dense").write_bytes(b"\1" * (1 << 20))
        for n in range(10):
            (root / f"f{n}").write_text("x")
        drv.unmount("base")
        drv.create("child", "base")
        (drv.mount("child") / "one").write_bytes(b"\2" * 8192)
        drv.unmount("child")
    common = ["--home", str(home), "--driver", driver]
    base = json.loads(cli(*common, "layer", "usage", "base", "--json").stdout)
    child = json.loads(cli(*common, "layer", "usage", "child", "--json").stdout)
    assert (1 << 20) <= base["bytes"] < (3 << 20)        # the sparse file takes no space
    assert base["inodes"] == 13                          # root, sparse, dense, f0..f9
    if driver == "vfs":                                  # a full copy, all its own
        assert child["inodes"] == 14 and child["bytes"] > base["bytes"]
    else:                                                # only what the child wrote
        assert child["inodes"] == 2 and 8192 <= child["bytes"] < (1 << 20)
    text = cli(*common, "layer", "usage", "base").stdout.split("\t")
    assert int(text[0]) == base["bytes"] and text[2].strip() == "13 inodes"

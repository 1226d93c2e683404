"""devicemapper's Docker vocabulary on a real kernel (VM only): dm.libdm_log_level
filters the device-mapper messages for real, and ``status`` explains the rows whose
meaning differs from Docker's."""
from __future__ import annotations

import json
import logging
import subprocess
import sys

import pytest

import graphdrivers
from graphdrivers.devmapper import dm
from graphdrivers.devmapper.testing import backend

pytestmark = pytest.mark.devicemapper


def _dm_records(caplog) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "graphdrivers.devmapper.dm"]


def test_libdm_log_level_sets_what_device_mapper_logs(tmp_path, caplog):
    caplog.set_level(logging.DEBUG, logger="graphdrivers")
    with backend(tmp_path) as (home, options):
        driver = graphdrivers.load("devicemapper", home, {**options, "dm.libdm_log_level": "7"})
        try:
            caplog.clear()
            driver.create("a")            # a thin snapshot: a message to the pool
            driver.mount("a")             # its device activated: DM_DEV_CREATE
            driver.unmount("a")
            records = _dm_records(caplog)
            assert not [r for r in records if r.levelno >= logging.WARNING], records
            debug = [r.getMessage() for r in records if r.levelno == logging.DEBUG]
            pool = driver.pool_status()["pool_name"]
            assert any(m.startswith(f"DM_TARGET_MSG {pool} ok in ") for m in debug), debug
            assert any(m.startswith("DM_DEV_CREATE ") for m in debug), debug
        finally:
            driver.cleanup()
        quiet = graphdrivers.load("devicemapper", home, {**options, "dm.libdm_log_level": "2"})
        try:
            caplog.clear()
            quiet.create("b")
            quiet.mount("b")
            quiet.unmount("b")
            assert _dm_records(caplog) == []          # Docker's default: nothing
            with pytest.raises(dm.DmError):
                dm.message(quiet.pool_status()["pool_name"], "no-such-thin-pool-message")
            assert _dm_records(caplog) == []
        finally:
            quiet.cleanup()
        errors = graphdrivers.load("devicemapper", home, {**options, "dm.libdm_log_level": "3"})
        try:
            caplog.clear()
            errors.create("c")
            pool = errors.pool_status()["pool_name"]
            with pytest.raises(dm.DmError):
                dm.message(pool, "no-such-thin-pool-message")     # EINVAL: a real error
            records = _dm_records(caplog)
            assert [r.levelno for r in records] == [logging.ERROR], records
            assert records[0].getMessage().startswith(f"DM_TARGET_MSG {pool}: ")
        finally:
            errors.cleanup()
            dm.set_log_level(2)


def test_status_explains_rows_that_differ_from_docker(tmp_path):
    with backend(tmp_path) as (home, options):
        graphdrivers.load("devicemapper", home, options).create("a")
        opts = [f"--storage-opt={k}={v}" for k, v in options.items()]
        common = [sys.executable, "-m", "graphdrivers.cli", "--home", str(home), "--driver",
                  "devicemapper", *opts, "status"]
        try:
            text = subprocess.run(common, capture_output=True, text=True, check=True).stdout
            got = json.loads(subprocess.run(common + ["--json"], capture_output=True, text=True,
                                            check=True).stdout)
        finally:
            graphdrivers.load("devicemapper", home, options).cleanup()
    assert " Udev Sync Supported: false (*)" in text
    assert "(*) Udev Sync Supported: false by design" in text
    assert "(*) Library Version: the kernel's device-mapper interface" in text
    assert set(got["notes"]) == {"Udev Sync Supported", "Library Version"}
    assert got["status"]["Udev Sync Supported"] == "false"    # the value itself is unchanged

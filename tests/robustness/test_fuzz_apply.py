"""Hostile tar fuzzing of every host driver's apply_diff (issue 9, part 1).

After every generated tar: the canary tree beside the home and the parent
layer are byte-for-byte and inode-for-inode unchanged, no mount leaked, and
any error was a DriverError with a message. CI runs GRAPHDRIVERS_FUZZ_EXAMPLES
(default 120) derandomized examples per driver; bench/fuzz_apply.py runs the
long random campaign.
"""
from __future__ import annotations

import json
import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .fuzzing import Session
from .hostile import streams

EXAMPLES = int(os.environ.get("GRAPHDRIVERS_FUZZ_EXAMPLES", "120"))
LONG = "GRAPHDRIVERS_FUZZ_EXAMPLES" in os.environ


@pytest.fixture
def session(driver, home_and_options):
    s = Session(driver, home_and_options[0])
    try:
        yield s
    finally:
        s.close()


def test_fuzz_apply_diff(session, driver_name):
    _fuzz(session, driver_name, EXAMPLES)


def test_fuzz_overlay2_naive_apply(tmp_path, monkeypatch):
    """overlay2 with the naive diff applies through the overlay mount itself
    (copy-up of the parent's entries, whiteouts made by the kernel): a path of
    its own, fuzzed with a third of the examples."""
    import graphdrivers
    from graphdrivers.testing.homes import driver_home
    if "overlay2" not in graphdrivers.available():
        pytest.skip("overlay2 is not installed")
    monkeypatch.setenv("GRAPHDRIVERS_OVERLAY2_NAIVE_DIFF", "1")
    with driver_home("overlay2", tmp_path) as (home, options):
        try:
            drv = graphdrivers.load("overlay2", home, options)
        except graphdrivers.NotSupported as exc:
            pytest.skip(f"overlay2: {exc}")
        session = Session(drv, home)
        try:
            _fuzz(session, "overlay2-naive", max(EXAMPLES // 3, 10))
        finally:
            session.close()
            drv.cleanup()


def _fuzz(session, driver_name, examples):
    @settings(max_examples=examples, deadline=None, database=None, derandomize=not LONG,
              suppress_health_check=list(HealthCheck), print_blob=True)
    @given(data=streams(str(session.canary), session.rel), with_parent=st.booleans())
    def one(data: bytes, with_parent: bool) -> None:
        session.run(data, with_parent)

    one()
    print(f"\n{driver_name}: {session.examples} tars applied, {session.errors} refused with a DriverError")
    report = os.environ.get("GRAPHDRIVERS_FUZZ_REPORT")
    if report:
        with open(report, "a") as f:
            f.write(json.dumps({"driver": driver_name, "examples": session.examples,
                                "driver_errors": session.errors}) + "\n")
    assert session.examples >= min(examples, 10)

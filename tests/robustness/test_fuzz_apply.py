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
    @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=not LONG,
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
    assert session.examples >= min(EXAMPLES, 50)

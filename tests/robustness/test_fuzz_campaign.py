"""The campaign path of bench/fuzz_apply.py, CI-sized, so that it cannot rot:
the seeded builder (hostile_random.py), a Campaign over a few hundred tars per
host driver and overlay2 with the naive diff, and proof that its cheap per-tar
check catches a write into the canary and keeps the tar for a replay."""
from __future__ import annotations

import contextlib
import io
import itertools
import os
import tarfile

import pytest

from . import hostile as h
from .campaign import Campaign, Range
from .hostile_random import case

TARS = int(os.environ.get("GRAPHDRIVERS_FUZZ_CAMPAIGN_TARS", "300"))


def _one_home(driver, home):
    """A HomeFactory over the fixture's driver: the first session only (a second one is
    asked for only after a failure, which the tests below count)."""
    used = []

    @contextlib.contextmanager
    def new_home():
        if used:
            pytest.fail("the campaign wanted a fresh home: a tar failed")
        used.append(1)
        yield driver, home
    return new_home


def _campaign(driver, home, label, tmp_path, **spec):
    rng = Range(label, seed=17, start=0, stop=spec.pop("stop", TARS), full_every=100, **spec)
    return Campaign(rng, _one_home(driver, home), tmp_path / "failures").run()


def test_campaign_range(driver, driver_name, home_and_options, tmp_path):
    progress = _campaign(driver, home_and_options[0], driver_name, tmp_path, max_failures=1)
    assert progress.failures == []
    assert progress.tars == progress.next == TARS
    assert 0 < progress.refused < TARS          # some tars apply, most are refused


def test_campaign_overlay2_naive(tmp_path, monkeypatch):
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
        try:
            progress = _campaign(drv, home, "overlay2-naive", tmp_path, max_failures=1,
                                 stop=TARS // 3)
        finally:
            drv.cleanup()
    assert progress.failures == [] and progress.tars == TARS // 3


def test_a_write_into_the_canary_is_caught(tmp_path):
    """The check the campaign relies on fails when the canary changes, the failing tar
    is kept (and is the one ``case`` rebuilds), and the run goes on in a fresh home."""
    import graphdrivers
    homes = itertools.count()

    @contextlib.contextmanager
    def new_home():
        home = tmp_path / f"h{next(homes)}" / "home"
        drv = graphdrivers.load("vfs", home, {})
        try:
            yield drv, home
        finally:
            drv.cleanup()
    rng = Range("vfs", seed=5, start=0, stop=30, inject_at=7)
    progress = Campaign(rng, new_home, tmp_path / "failures").run()
    assert [f["index"] for f in progress.failures] == [7]
    assert "the canary beside the home changed" in progress.failures[0]["error"]
    assert progress.tars == 30 and next(homes) == 2
    failure = progress.failures[0]
    assert failure["canary"] == str(tmp_path / "h0" / "canary")
    kept = (tmp_path / "failures" / "vfs-5-7.tar").read_bytes()
    assert kept == case(5, 7, failure["canary"], failure["rel"])[0]


def test_seed_and_index_name_one_tar():
    assert case(3, 11, "/c", "../c") == case(3, 11, "/c", "../c")
    assert case(3, 11, "/c", "../c") != case(3, 12, "/c", "../c")
    assert case(3, 11, "/c", "../c") != case(4, 11, "/c", "../c")


def test_the_builder_covers_the_vocabulary():
    """Over a thousand tars every kind of entry, PAX overrides, long names and each
    stream mutation show up: the builder draws from all of hostile.py's tables."""
    kinds, mutated, pax, long = set(), 0, 0, 0
    end = b"\0" * (2 * h.BLOCK)
    for index in range(1000):
        data, _ = case(1, index, "/c", "../c")
        if not data.endswith(end) or len(data) % h.BLOCK:
            mutated += 1
        try:
            with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
                for m in tar:
                    kinds.add(m.type)
                    pax += bool(m.pax_headers and set(m.pax_headers) - {"mtime"})
                    long += m.name.startswith("long/long/")
        except (tarfile.TarError, OSError, ValueError):
            mutated += 1
    assert {tarfile.REGTYPE, tarfile.DIRTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE,
            tarfile.CHRTYPE, tarfile.BLKTYPE, tarfile.FIFOTYPE} <= kinds
    assert pax > 10 and long > 10 and mutated > 100

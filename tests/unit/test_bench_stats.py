"""The benchmark report's statistics: paired-round ratios with bootstrap intervals,
and the quiet-machine guard (issue 20)."""
from __future__ import annotations

import random

import pytest

from graphdrivers.benchmarking import quiet, stats


def test_a_real_difference_has_an_interval_that_excludes_one():
    rng = random.Random(1)
    base = [1.0 + rng.uniform(-0.05, 0.05) for _ in range(12)]
    slow = [b * 1.5 * (1 + rng.uniform(-0.03, 0.03)) for b in base]
    r = stats.paired_ratio(slow, base)
    assert r.differs and 1.4 < r.low <= r.value <= r.high < 1.6
    assert "no difference" not in r.describe()


def test_noise_around_one_is_no_difference():
    rng = random.Random(2)
    a = [1.0 + rng.uniform(-0.3, 0.3) for _ in range(8)]
    b = [1.0 + rng.uniform(-0.3, 0.3) for _ in range(8)]
    r = stats.paired_ratio(a, b)
    assert not r.differs and r.low < 1.0 < r.high
    assert r.describe().startswith("no difference")


def test_pairs_are_kept_together():
    """A drift that hits both sides of every round cancels in the paired ratio."""
    drift = [1.0, 3.0, 1.2, 2.8, 1.1, 3.1, 0.9, 2.9]
    a = [1.2 * d for d in drift]
    r = stats.paired_ratio(a, drift)
    assert r.value == pytest.approx(1.2) and r.differs
    assert r.relative_width < 0.2


def test_headline_counts_only_real_differences():
    real = stats.Ratio(2.0, 1.8, 2.2, 6)
    none = stats.Ratio(1.05, 0.9, 1.2, 6)
    assert stats.headline([real, none]) == (pytest.approx(2.0), 1)
    assert stats.headline([none]) == (None, 1)


def test_bad_rounds_are_refused():
    with pytest.raises(ValueError):
        stats.paired_ratio([1.0], [1.0])
    with pytest.raises(ValueError):
        stats.paired_ratio([1.0, 2.0], [1.0])


def test_enough_rounds_stops_on_a_narrow_interval():
    assert stats.enough_rounds(stats.Ratio(1.0, 0.97, 1.03, 4))
    assert not stats.enough_rounds(stats.Ratio(1.0, 0.7, 1.4, 4))


def test_the_guard_waits_then_marks_the_report():
    clock = [0.0]
    watch = quiet.Watch(max_load=1e9, clock=lambda: clock[0])
    assert watch.wait(60, sleep=lambda s: None)          # any load is quiet below 1e9
    assert watch.verdict() is None and watch.summary()["fit"]
    busy = quiet.Watch(max_load=-1.0, clock=lambda: clock[0])

    def sleep(seconds):
        clock[0] += seconds
    assert not busy.wait(30, step=10, sleep=sleep)        # never quiet: gives up at 30 s
    assert len(busy.samples) == 4
    assert busy.verdict().startswith("UNFIT FOR PUBLICATION")

"""Ratios with confidence intervals, from rounds measured in pairs.

A benchmark here runs the two sides of a comparison (loop and block, ours and
GNU tar) alternately, round by round, so that a drift of the machine's load hits
both. The ratio of the two medians is then given with a 95% percentile-bootstrap
interval that resamples whole rounds (each round's pair stays together), and a
ratio whose interval holds 1.0 is reported as no difference at all.
"""
from __future__ import annotations

import dataclasses
import random
import statistics
from typing import Sequence

LEVEL = 0.95
RESAMPLES = 2000


@dataclasses.dataclass(frozen=True)
class Ratio:
    value: float         # median(a) / median(b)
    low: float
    high: float
    rounds: int

    @property
    def differs(self) -> bool:
        """Whether the interval excludes 1.0 (a difference the rounds can tell)."""
        return self.low > 1.0 or self.high < 1.0

    @property
    def relative_width(self) -> float:
        return (self.high - self.low) / self.value if self.value else float("inf")

    def describe(self) -> str:
        if not self.differs:
            return f"no difference ({self.value:.2f}, 95% CI {self.low:.2f}-{self.high:.2f})"
        return f"{self.value:.2f} (95% CI {self.low:.2f}-{self.high:.2f})"


def paired_ratio(a: Sequence[float], b: Sequence[float], *, level: float = LEVEL,
                 resamples: int = RESAMPLES, seed: int = 0) -> Ratio:
    """median(a) / median(b) with a bootstrap interval over paired rounds (a[i] and
    b[i] were measured back to back). Needs at least two rounds."""
    if len(a) != len(b):
        raise ValueError(f"paired rounds differ in number: {len(a)} and {len(b)}")
    if len(a) < 2:
        raise ValueError("a confidence interval needs at least two rounds")
    if min(b) <= 0 or min(a) < 0:
        raise ValueError("times must be positive")
    n = len(a)
    rng = random.Random(seed)
    ratios = []
    for _ in range(resamples):
        picks = [rng.randrange(n) for _ in range(n)]
        ratios.append(statistics.median(a[i] for i in picks) /
                      statistics.median(b[i] for i in picks))
    ratios.sort()
    tail = (1.0 - level) / 2
    low = ratios[int(tail * (resamples - 1))]
    high = ratios[int((1.0 - tail) * (resamples - 1))]
    return Ratio(statistics.median(a) / statistics.median(b), low, high, n)


def enough_rounds(ratio: Ratio, *, width: float = 0.10) -> bool:
    """Stop adding rounds once the interval is within ``width`` of the ratio (10%) or
    clearly excludes 1.0."""
    return ratio.relative_width <= width or (ratio.differs and ratio.rounds >= 5)


def headline(ratios: Sequence[Ratio]) -> tuple[float | None, int]:
    """Geometric mean of the ratios that differ, and how many were left out."""
    kept = [r.value for r in ratios if r.differs]
    if not kept:
        return None, len(ratios)
    return statistics.geometric_mean(kept), len(ratios) - len(kept)

"""Whether the machine is quiet enough to publish what is measured on it.

The load average and the CPU steal (time a hypervisor gave other guests) are
read from /proc before and during a run. Above the thresholds the runner waits
for the machine to calm down; if it never does, the run still happens and the
report says in its first line that it is unfit for publication.
"""
from __future__ import annotations

import dataclasses
import os
import time
from typing import Callable

MAX_LOAD_PER_CPU = 0.5      # the 1-minute load average per CPU
MAX_STEAL = 0.05            # share of CPU time stolen by the hypervisor


@dataclasses.dataclass
class Sample:
    at: float
    load1: float
    steal: float | None      # None: not measured (no interval yet)


def _cpu_times() -> tuple[int, int]:
    """(total, steal) jiffies of all CPUs from /proc/stat."""
    with open("/proc/stat") as f:
        fields = f.readline().split()[1:]
    values = [int(v) for v in fields]
    steal = values[7] if len(values) > 7 else 0
    return sum(values[:8]), steal


class Watch:
    """Samples of the load and the steal, kept for the report."""

    def __init__(self, *, max_load: float | None = None, max_steal: float = MAX_STEAL,
                 clock: Callable[[], float] = time.monotonic):
        self.max_load = max_load if max_load is not None else MAX_LOAD_PER_CPU * (os.cpu_count() or 1)
        self.max_steal = max_steal
        self.samples: list[Sample] = []
        self._clock = clock
        self._last = _cpu_times()

    def sample(self) -> Sample:
        total, steal = _cpu_times()
        spent = total - self._last[0]
        share = (steal - self._last[1]) / spent if spent > 0 else None
        self._last = (total, steal)
        s = Sample(self._clock(), os.getloadavg()[0], share)
        self.samples.append(s)
        return s

    def quiet(self, s: Sample) -> bool:
        return s.load1 <= self.max_load and (s.steal is None or s.steal <= self.max_steal)

    def wait(self, budget: float, *, step: float = 10.0,
             sleep: Callable[[float], None] = time.sleep) -> bool:
        """Wait up to ``budget`` seconds for a quiet sample; True if one came."""
        deadline = self._clock() + budget
        while True:
            if self.quiet(self.sample()):
                return True
            if self._clock() >= deadline:
                return False
            sleep(step)

    def verdict(self) -> str | None:
        """None when every sample was quiet, else the line the report starts with."""
        loud = [s for s in self.samples if not self.quiet(s)]
        if not loud:
            return None
        worst = max(s.load1 for s in self.samples)
        steal = max((s.steal for s in self.samples if s.steal is not None), default=0.0)
        return (f"UNFIT FOR PUBLICATION: the machine was busy during {len(loud)} of "
                f"{len(self.samples)} samples (load average up to {worst:.1f}, limit "
                f"{self.max_load:.1f}; steal up to {steal:.0%}, limit {self.max_steal:.0%})")

    def summary(self) -> dict:
        loads = [s.load1 for s in self.samples]
        steals = [s.steal for s in self.samples if s.steal is not None]
        return {"samples": len(self.samples), "load1_max": max(loads, default=None),
                "load1_min": min(loads, default=None),
                "steal_max": max(steals, default=None), "limit_load1": self.max_load,
                "limit_steal": self.max_steal, "fit": self.verdict() is None}

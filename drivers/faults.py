"""Fault injection for the crash tests: die at a named step, deterministically.

``GRAPHDRIVERS_FAULT=<driver>.<op>.<step>`` makes the process SIGKILL itself
when it reaches ``point("<driver>.<op>.<step>")``, e.g.
``GRAPHDRIVERS_FAULT=vfs.create.after_copy``. SIGKILL, not an exception: no
``finally`` block, no atexit handler runs, exactly as when the OOM killer or a
power cut stops the engine. Several names may be given, separated by commas;
``GRAPHDRIVERS_FAULT_SKIP=n`` lets the first n hits pass (to die in the
middle of a loop). Unset (always, outside tests) a point costs one dictionary
lookup.

Each driver registers its points (``register``) when its module is imported.
"""
from __future__ import annotations

import os
import signal

ENV = "GRAPHDRIVERS_FAULT"
SKIP_ENV = "GRAPHDRIVERS_FAULT_SKIP"
_hits = 0

POINTS: dict[str, list[str]] = {}   # driver name -> its points, filled by register()


def register(driver: str, *names: str) -> tuple[str, ...]:
    """Declare a driver's fault points (at import of its module), so the crash tests
    can hit every one and notice when one disappears from the code."""
    known = POINTS.setdefault(driver, [])
    known.extend(n for n in names if n not in known)
    return names


def point(name: str) -> None:
    """SIGKILL this process if ``name`` is the fault the environment asks for."""
    wanted = os.environ.get(ENV)
    if wanted is None or name not in wanted.split(","):
        return
    global _hits
    _hits += 1
    if _hits > int(os.environ.get(SKIP_ENV, "0")):
        os.kill(os.getpid(), signal.SIGKILL)

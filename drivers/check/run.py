"""Inspection and repair of one loaded driver: the framework's checks, then the backend's.

``inspect`` only looks (after the load that opened the driver, whose recovery may have
fixed crash leftovers already: those come back as ``fixed`` findings). ``repair`` runs
each finding's action, then inspects again, since one repair can uncover the next (a
leaked mount dropped leaves an active thin device nothing uses), up to a few rounds;
what is still wrong at the end is reported as found or failed.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from graphdrivers.check import generic
from graphdrivers.check.findings import FAILED, FOUND, REPAIRED, Finding

if TYPE_CHECKING:
    from graphdrivers.driver import Driver

ROUNDS = 4


def inspect(driver: Driver) -> list[Finding]:
    """Every finding on the driver's home, the framework's then the backend's."""
    return generic.inspect(driver) + list(driver.check_findings())


def repair(driver: Driver) -> list[Finding]:
    """Repair what can be repaired; return what was done and what is left."""
    report: list[Finding] = []
    tried: set[tuple[str, str]] = set()
    for _ in range(ROUNDS):
        findings = inspect(driver)
        report += [f for f in findings if f.state != FOUND]     # load's own fixes (once)
        todo = [f for f in findings
                if f.state == FOUND and f.action is not None and f.key not in tried]
        if not todo:
            break
        for finding in todo:
            tried.add(finding.key)
            try:
                finding.action()              # type: ignore[misc]
                finding.state = REPAIRED
            except Exception as exc:  # noqa: BLE001 - one failed repair must not stop the rest
                finding.state, finding.error = FAILED, _describe(exc)
            report.append(finding)
    left = [f for f in inspect(driver) if f.state == FOUND]
    failed = {f.key for f in report if f.state == FAILED}
    return report + [f for f in left if f.key not in failed]


def _describe(exc: Exception) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return f"{exc.filename + ': ' if isinstance(exc.filename, str) else ''}{exc.strerror}"
    return str(exc) or type(exc).__name__


def outstanding(findings: list[Finding]) -> list[Finding]:
    """The findings that are still wrong on the home."""
    return [f for f in findings if f.outstanding]

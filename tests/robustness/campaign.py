"""One driver's share of the hostile-tar campaign (bench/fuzz_apply.py): tars
``start..stop`` of a seed, applied through a fuzzing Session, with progress
reported as it goes and every failure kept as a tar file that can be replayed.

A failure (an escape, a changed parent or home, a leaked mount, an error that is
not a DriverError) does not end the run: the tar is written to
``<failures>/<driver>-<seed>-<index>.tar`` with the message beside it, the home
is thrown away and a fresh one made (the old one may be damaged), and the run
goes on, up to ``max_failures``. ``replay`` applies one such tar again.
"""
from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, ContextManager, Iterator

from .fuzzing import Session
from .hostile_random import case

# a home for one session: a context manager yielding (driver, home)
HomeFactory = Callable[[], ContextManager[tuple[object, Path]]]


@dataclass
class Range:
    driver: str
    seed: int
    start: int
    stop: int
    full_every: int = 200         # whole-home comparison every Nth tar (and at the end)
    layer_every: int = 1          # the layer mounted and listed after every Nth refused tar
    max_failures: int = 10
    inject_at: int | None = None  # write into the canary before this tar (proves the check)


@dataclass
class Progress:
    next: int                     # the first index not done yet
    tars: int = 0                 # applied (and checked) in this run
    refused: int = 0              # of those, refused with a DriverError
    failures: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    cpu_seconds: float = 0.0

    def as_dict(self) -> dict:
        return dict(self.__dict__)


class Campaign:
    def __init__(self, spec: Range, new_home: HomeFactory, failures_dir: Path,
                 report: Callable[[Progress], None] = lambda p: None,
                 report_every: float = 10.0, stopping: Callable[[], bool] = lambda: False):
        self.spec, self.new_home, self.failures_dir = spec, new_home, Path(failures_dir)
        self.report, self.report_every, self.stopping = report, report_every, stopping
        self.progress = Progress(next=spec.start)
        self._started = time.monotonic()
        self._cpu0 = _cpu()
        self._last_report = self._started

    def run(self) -> Progress:
        """Apply the tars; stops early after the current tar once ``stopping()`` is true."""
        while not self._done():
            with self._session() as session:
                self._apply(session)
        self._update(force=True)
        return self.progress

    def _done(self) -> bool:
        return (self.progress.next >= self.spec.stop or self.stopping()
                or len(self.progress.failures) >= self.spec.max_failures)

    @contextlib.contextmanager
    def _session(self) -> Iterator[Session]:
        with self.new_home() as (driver, home):
            session = Session(driver, home, full_every=self.spec.full_every,
                              layer_every=self.spec.layer_every)
            try:
                yield session
            finally:
                try:
                    session.close()
                except Exception:            # noqa: BLE001 - a damaged home goes anyway
                    pass

    def _apply(self, session: Session) -> None:
        """Tars until the range ends or one fails (then the caller makes a fresh home)."""
        canary, rel = str(session.canary), session.rel
        since = self.progress.next     # the first tar after the last whole-home check
        while not self._done():
            index = self.progress.next
            data, with_parent = case(self.spec.seed, index, canary, rel)
            if index == self.spec.inject_at:
                with open(session.canary / "file", "ab") as f:
                    f.write(b"injected\n")
            refused = session.errors
            try:
                session.run(data, with_parent)
            except Exception as exc:         # noqa: BLE001 - every failure is a finding
                self._failed(session, index, data, with_parent, exc, since)
                return
            finally:
                self.progress.next = index + 1
                self.progress.tars += 1
                self.progress.refused += session.errors - refused
                self._update()
            if session.examples % session.full_every == 0:
                since = index + 1
        try:
            session.final_check()
        except Exception as exc:             # noqa: BLE001
            self._failed(session, self.progress.next - 1, b"", False, exc, since)

    def _failed(self, session: Session, index: int, data: bytes, with_parent: bool,
                exc: BaseException, since: int) -> None:
        """Keep the tar and the message; a whole-home difference may come from any tar
        since the last whole-home check, so that window is recorded too. The tar names
        the canary's paths: ``case(seed, index, canary, rel)`` rebuilds it."""
        self.failures_dir.mkdir(parents=True, exist_ok=True)
        stem = self.failures_dir / f"{self.spec.driver}-{self.spec.seed}-{index}"
        Path(f"{stem}.tar").write_bytes(data)
        message = f"{type(exc).__name__}: {exc}"
        Path(f"{stem}.txt").write_text(
            f"driver {self.spec.driver}, seed {self.spec.seed}, index {index}, "
            f"with_parent {with_parent}, canary {str(session.canary)!r}, rel {session.rel!r}, "
            f"tars since the last whole-home check {since}..{index}\n{message}\n")
        self.progress.failures.append({"index": index, "with_parent": with_parent,
                                       "since": since, "canary": str(session.canary),
                                       "rel": session.rel, "tar": f"{stem}.tar",
                                       "error": message[:2000]})

    def _update(self, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self._last_report >= self.report_every:
            self._last_report = now
            self.progress.seconds = now - self._started
            self.progress.cpu_seconds = _cpu() - self._cpu0
            self.report(self.progress)


def replay(session: Session, tar: Path, with_parent: bool) -> None:
    """Apply one kept failure again (after a fix, or to debug it): raises if it still fails."""
    session.run(Path(tar).read_bytes(), with_parent)
    session.final_check()


def _cpu() -> float:
    t = os.times()
    return t.user + t.system

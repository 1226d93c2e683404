"""The home (directory and options) a driver under test starts in.

Most drivers need only an empty directory. One that needs a prepared backend
registers a home maker under the ``graphdrivers.testing.homes`` entry points,
named like its driver entry point:

    [options.entry_points]
    graphdrivers.testing.homes =
        mydriver = mypackage.testing:home

A maker is called with the test's ``tmp_path`` and returns a context manager
that yields ``(home, options)``: the directory to pass to ``graphdrivers.load``
and the driver options to start with. It releases what it made on exit, and
calls ``pytest.skip`` with the reason when the machine cannot provide it.
The built-in makers register the same way, each beside its driver
(``graphdrivers.btrfs.testing``, ``graphdrivers.devmapper.testing``).
"""
from __future__ import annotations

import contextlib
import functools
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path
from typing import Callable, ContextManager, Iterator

GROUP = "graphdrivers.testing.homes"

Home = tuple[Path, dict[str, str]]
HomeMaker = Callable[[Path], ContextManager[Home]]


@functools.cache
def _registered() -> dict[str, list[EntryPoint]]:
    found: dict[str, list[EntryPoint]] = {}
    for ep in entry_points(group=GROUP):
        found.setdefault(ep.name, []).append(ep)
    return found


def home_maker(name: str) -> HomeMaker | None:
    """The registered home maker of driver ``name``, or None when it registers none."""
    candidates = _registered().get(name, [])
    if len(candidates) > 1:
        raise RuntimeError(f"several home makers are registered for {name!r} in {GROUP}: "
                           + ", ".join(ep.value for ep in candidates))
    return candidates[0].load() if candidates else None


@contextlib.contextmanager
def driver_home(name: str, tmp_path: Path) -> Iterator[Home]:
    """Yield (home, options) for driver ``name``: its maker's, else a plain directory."""
    maker = home_maker(name)
    if maker is None:
        yield tmp_path / "home", {}
        return
    with maker(tmp_path) as prepared:
        yield prepared

"""Finding and loading drivers through the ``graphdrivers.drivers`` entry points.

stevedore is imported lazily: its import (mostly importlib.metadata) costs
about 50 ms, which only the commands that load a driver should pay.
"""
from __future__ import annotations

import os
import pathlib
from typing import Mapping

from graphdrivers.driver import Driver
from graphdrivers.errors import DriverError, NotSupported, from_os_error

NAMESPACE = "graphdrivers.drivers"

# Auto-selection order for a fresh home: the only place the framework names drivers.
PRIORITY = ("btrfs", "overlay2", "devicemapper", "vfs")


def available() -> list[str]:
    """Names of every registered driver, sorted (usable here or not).

    Reads the entry-point names only: importing every driver just to list them
    would cost time and let one broken driver's import stall the listing.
    """
    from importlib.metadata import entry_points
    return sorted({ep.name for ep in entry_points(group=NAMESPACE)})


def driver_class(name: str) -> type[Driver]:
    """Import one driver's class; any import failure becomes NotSupported with the reason."""
    from stevedore import DriverManager
    from stevedore.exception import NoMatches
    failures: list[str] = []

    def on_failure(_manager, entrypoint, exc):
        failures.append(f"{entrypoint.value}: {type(exc).__name__}: {exc}")

    try:
        manager = DriverManager(NAMESPACE, name, invoke_on_load=False,
                                on_load_failure_callback=on_failure)
    except NoMatches:
        if failures:
            raise NotSupported(f"driver {name!r} failed to load: {failures[0]}") from None
        raise NotSupported(f"unknown driver {name!r}; installed drivers: "
                           f"{', '.join(available()) or 'none'}") from None
    return manager.driver


def describe(home: str | os.PathLike) -> list[tuple[str, str | None]]:
    """Each registered driver with None when usable for ``home``, else the reason why not."""
    home = pathlib.Path(home)
    report = []
    for name in available():
        try:
            driver_class(name).probe(home / name)
            reason = None
        except DriverError as exc:
            reason = str(exc)
        except Exception as exc:  # a broken third-party driver must not break the listing
            reason = f"{type(exc).__name__}: {exc}"
        report.append((name, reason))
    return report


def load(name: str | None, home: str | os.PathLike,
         options: Mapping[str, str] | None = None) -> Driver:
    """Load driver ``name`` (or auto-select one) with its state under ``home/<name>``."""
    home = pathlib.Path(home)
    if home.exists() and not home.is_dir():
        raise DriverError(f"the home {home} is not a directory; give a directory "
                          "(it is created when missing)")
    home.mkdir(parents=True, exist_ok=True, mode=0o711)
    if name is not None:
        return _instantiate(name, home, options)
    prior = prior_drivers(home)
    if len(prior) > 1:
        raise DriverError(
            f"{home} holds state of several drivers ({', '.join(prior)}); remove the ones "
            "you no longer use or choose one explicitly with --driver")
    if prior:  # never silently switch drivers: the layers would seem to vanish
        return _instantiate(prior[0], home, options)
    reasons = []
    for candidate in auto_order(available()):
        try:
            return _instantiate(candidate, home, options)
        except NotSupported as exc:
            reasons.append(f"{candidate}: {exc}")
    raise NotSupported("no storage driver works here: " + "; ".join(reasons))


def _instantiate(name: str, home: pathlib.Path, options: Mapping[str, str] | None) -> Driver:
    cls = driver_class(name)
    cls.probe(home / name)
    created = not (home / name).exists()
    (home / name).mkdir(mode=0o711, exist_ok=True)
    try:
        try:
            return cls(home / name, options)
        except OSError as exc:   # a full disk at start-up is NoSpace, like any operation's
            raise from_os_error(exc, f"start the {name} driver in {home / name}") from exc
    except BaseException:
        if created:  # refuse without leaving an empty state dir that would pin auto-selection
            try:
                os.rmdir(home / name)
            except OSError:
                pass
        raise


def auto_order(names: list[str]) -> list[str]:
    """The order auto-selection tries ``names`` in: PRIORITY first, then the others."""
    return [n for n in PRIORITY if n in names] + [n for n in names if n not in PRIORITY]


def default_driver(home: pathlib.Path, usable: list[str]) -> str | None:
    """The driver ``load(None, home)`` picks among ``usable``: the one with state here,
    else the first in auto order; None when the choice is ambiguous or there is none."""
    prior = prior_drivers(home) if home.is_dir() else []
    if prior:
        return prior[0] if len(prior) == 1 else None
    order = auto_order(usable)
    return order[0] if order else None


def prior_drivers(home: pathlib.Path) -> list[str]:
    """Drivers that already keep state under ``home`` (a non-empty ``home/<name>``)."""
    found = []
    for name in available():
        path = home / name
        if path.is_dir() and any(path.iterdir()):
            found.append(name)
    return found


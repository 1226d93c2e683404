"""What the command modules share: the home default, the CLI's own errors,
opening a driver on --home, and output as tables or JSON."""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
from typing import Any, Sequence

PROG = "graphdrivers"
DEFAULT_HOME = "/var/lib/graphdrivers"


class CliError(Exception):
    """A usage problem found by the CLI itself (not by a driver): exit status 2."""


class NoState(Exception):
    """A command that reads state was pointed at a home without any: exit status 1."""



def default_home() -> str:
    return os.environ.get("GRAPHDRIVERS_HOME") or DEFAULT_HOME


def driver_options(args: argparse.Namespace) -> dict[str, str]:
    from graphdrivers.options import parse_key_values
    return parse_key_values(args.storage_opt or [])


def open_driver(args: argparse.Namespace, *, create: bool = False):
    """Load the driver the global options name (or auto-select one) on ``--home``.

    Only commands that make layers pass ``create``: every other command works on
    state that exists, so a mistyped --home gets an error, not a new empty store.
    """
    import graphdrivers
    if not create:
        require_state(args)
    return graphdrivers.load(args.driver, args.home, driver_options(args))


def require_state(args: argparse.Namespace) -> None:
    """NoState unless --home holds state of --driver (or of some driver, without one)."""
    from graphdrivers.registry import available, prior_drivers
    home = pathlib.Path(args.home)
    if (home.exists() and not home.is_dir()) or (args.driver and args.driver not in available()):
        return   # load() says what is wrong
    prior = prior_drivers(home) if home.is_dir() else []
    if args.driver in prior or (args.driver is None and prior):
        return
    where = f"it holds {', '.join(prior)} state" if prior else (
        "it holds no driver state" if home.is_dir() else "it does not exist")
    driver = f"the {args.driver} driver" if args.driver else "any driver"
    raise NoState(f"no layers of {driver} under {home} ({where}); check --home or "
                  "$GRAPHDRIVERS_HOME ('layer create' starts a new store)")


def emit_json(value: Any) -> None:
    json.dump(value, sys.stdout, indent=2, sort_keys=False)
    sys.stdout.write("\n")


def print_table(rows: Sequence[Sequence[str]], header: Sequence[str] | None = None) -> None:
    """Left-aligned columns, like ``docker ps``; the last column is never padded."""
    all_rows = ([list(header)] if header else []) + [list(map(str, r)) for r in rows]
    if not all_rows:
        return
    widths = [max(len(r[i]) for r in all_rows) for i in range(len(all_rows[0]) - 1)]
    for row in all_rows:
        cells = [cell.ljust(widths[i]) for i, cell in enumerate(row[:-1])] + [row[-1]]
        print("  ".join(cells).rstrip())

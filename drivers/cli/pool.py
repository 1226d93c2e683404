"""``graphdrivers pool ...``: status and online resize of a driver's storage pool.

Any driver that declares the PoolAdmin capability has a pool (devicemapper's thin
pool); both commands call its own API (``pool_status()`` and ``resize_pool()``), so
an engine embedding the driver gets the same behaviour without the CLI.
"""
from __future__ import annotations

import argparse
import pathlib
import sys
from typing import Any

from graphdrivers.cli.common import CliError, NoState, driver_options, emit_json, require_state

# integer fields shown in human units too (never counts, ids or percentages)
_SIZE_SUFFIXES = ("_used", "_total", "_available", "_size", "_space", "_bytes")


def add_commands(commands, common: argparse.ArgumentParser) -> None:
    pool = commands.add_parser("pool", help="storage pool (devicemapper's thin pool): status and online resize")
    sub = pool.add_subparsers(dest="pool_command", metavar="ACTION", required=True)

    p = sub.add_parser("status", parents=[common],
                       help="data and metadata used/total, mode, loop files, warnings")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser(
        "resize", parents=[common],
        help="grow the pool online (data and/or metadata); shrinking is refused",
        description="Grow the thin pool while layers stay mounted. Loop pools: give the new "
                    "sizes. Block-device pools: grow the device first, then run without sizes "
                    "to reload the table at the device's new size. Direct-lvm pools: --extend "
                    "runs lvextend on the thin pool LV (or lvextend it yourself and run "
                    "without options).")
    p.add_argument("--storage-opt", dest="resize_opt", metavar="K=V", action="append",
                   default=[], help="dm.loopdatasize=SIZE and/or dm.loopmetadatasize=SIZE")
    p.add_argument("--extend", metavar="SIZE", nargs="?", const="100%FREE", default=None,
                   help="direct-lvm pools: lvextend the pool's data by SIZE (+10G, 10G) or "
                        "N%%FREE of the volume group; alone: 100%%FREE")
    p.add_argument("--extend-metadata", metavar="SIZE", default=None,
                   help="direct-lvm pools: lvextend --poolmetadatasize +SIZE")
    p.add_argument("--force", action="store_true",
                   help="grow sparse files even when the host filesystem lacks the room")
    p.set_defaults(func=cmd_resize)


def pool_drivers() -> dict[str, type]:
    """The installed drivers that declare the PoolAdmin capability, by name."""
    from graphdrivers.capabilities import PoolAdmin
    from graphdrivers.errors import DriverError
    from graphdrivers.registry import available, driver_class
    found = {}
    for name in available():
        try:
            cls = driver_class(name)
        except DriverError:
            continue
        if issubclass(cls, PoolAdmin):
            found[name] = cls
    return found


def open_pool_driver(args: argparse.Namespace, pools: dict[str, type]):
    """The pool driver for --home, or a clear error naming what is there instead."""
    import graphdrivers
    from graphdrivers.registry import available, prior_drivers
    names = "/".join(pools) or "no installed driver's"
    if args.driver is not None and args.driver in available() and args.driver not in pools:
        raise CliError(f"the {args.driver} driver has no pool; pool commands work on "
                       f"{', '.join(pools) or 'no installed driver'}")
    home = pathlib.Path(args.home)
    found = [n for n in (prior_drivers(home) if home.is_dir() else []) if n in pools]
    name = args.driver or (found[0] if found else None)
    try:
        if name is None:
            raise NoState("")
        require_state(argparse.Namespace(home=args.home, driver=name))
    except NoState:
        raise NoState(f"no {names} pool under {args.home}; pool commands work on a home that "
                      "uses a driver with a pool ('layer create' makes the pool)") from None
    return graphdrivers.load(name, args.home, driver_options(args))


def cmd_status(args: argparse.Namespace) -> int:
    driver = open_pool_driver(args, pool_drivers())
    status = driver.pool_status()
    if args.json:
        emit_json(status)
    else:
        print_status(status)
    return 0


def cmd_resize(args: argparse.Namespace) -> int:
    from graphdrivers.options import Option, parse_key_values, parse_options, parse_size
    pools = pool_drivers()
    # the options are checked before any driver is opened: a typo costs nothing
    vocabulary = {key: Option(parse_size) for cls in pools.values() for key in cls.RESIZE_OPTIONS}
    given = parse_options(parse_key_values(args.resize_opt, what="resize option"), vocabulary,
                          what="resize option")
    driver = open_pool_driver(args, pools)
    accepted = driver.RESIZE_OPTIONS
    foreign = [key for key in given if given[key] is not None and key not in accepted]
    if foreign:
        raise CliError(f"the {driver.name} pool is not resized with {', '.join(foreign)}")
    kwargs: dict[str, Any] = {accepted[key]: given[key] for key in accepted if key in given}
    kwargs.update(force=args.force, extend=args.extend, extend_metadata=args.extend_metadata)
    if sys.stderr.isatty():
        kwargs["progress"] = lambda message: _say(f"pool resize: {message}")
    status = driver.resize_pool(**kwargs)
    if args.json:
        emit_json(status)
    else:
        print_status(status)
    return 0


def print_status(status: dict, indent: str = "") -> None:
    """Every field as ``Label: value``, sizes also in human units; warnings last."""
    from graphdrivers.options import format_size
    warnings: list[str] = []
    for key, value in status.items():
        if key.lower() in ("warnings", "warning"):
            warnings.extend([value] if isinstance(value, str) else list(value or []))
            continue
        label = _label(key)
        if isinstance(value, dict):
            print(f"{indent}{label}:")
            print_status(value, indent + "  ")
        elif isinstance(value, bool) or value is None:
            print(f"{indent}{label}: {_plain(value)}")
        elif isinstance(value, int) and key.lower().endswith(_SIZE_SUFFIXES):
            print(f"{indent}{label}: {format_size(value)} ({value} bytes)")
        elif isinstance(value, (list, tuple)):
            print(f"{indent}{label}: {', '.join(map(str, value)) or '-'}")
        else:
            print(f"{indent}{label}: {value}")
    for warning in warnings:
        print(f"{indent}WARNING: {warning}")


def _label(key: str) -> str:
    text = key.replace("_", " ").strip()
    return text[:1].upper() + text[1:]


def _plain(value: Any) -> str:
    return {True: "yes", False: "no", None: "-"}[value]


def _say(message: str) -> None:
    sys.stderr.write(message + "\n")
    sys.stderr.flush()

"""``graphdrivers pool ...``: status and online resize of a devicemapper thin pool.

Both call the devicemapper driver's own API (``pool_status()`` and
``resize_pool()``), so an engine embedding the driver gets the same
behaviour without the CLI.
"""
from __future__ import annotations

import argparse
import inspect
import sys
from typing import Any

from graphdrivers.cli.common import CliError, NoState, driver_options, emit_json, require_state

POOL_DRIVER = "devicemapper"
# integer fields shown in human units too (never counts, ids or percentages)
_SIZE_SUFFIXES = ("_used", "_total", "_available", "_size", "_space", "_bytes")


def add_commands(commands, common: argparse.ArgumentParser) -> None:
    pool = commands.add_parser("pool", help="devicemapper thin pool: status and online resize")
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


def open_pool_driver(args: argparse.Namespace):
    """The devicemapper driver for --home, or a clear error naming what is there instead."""
    import graphdrivers
    if args.driver not in (None, POOL_DRIVER):
        raise CliError(f"pool commands work on the devicemapper driver only, not {args.driver!r}")
    try:
        require_state(argparse.Namespace(home=args.home, driver=POOL_DRIVER))
    except NoState:
        raise NoState(f"no devicemapper pool under {args.home}; pool commands work on a home "
                      "that uses the devicemapper driver ('layer create' makes the pool)") from None
    driver = graphdrivers.load(POOL_DRIVER, args.home, driver_options(args))
    if not hasattr(driver, "pool_status"):
        raise CliError(f"the {driver.name} driver here has no pool administration")
    return driver


def cmd_status(args: argparse.Namespace) -> int:
    driver = open_pool_driver(args)
    status = driver.pool_status()
    if args.json:
        emit_json(status)
    else:
        print_status(status)
    return 0


def cmd_resize(args: argparse.Namespace) -> int:
    from graphdrivers.options import Option, parse_key_values, parse_options, parse_size
    given = parse_key_values(args.resize_opt, what="resize option")
    sizes = parse_options(given, {"dm.loopdatasize": Option(parse_size),
                                  "dm.loopmetadatasize": Option(parse_size)},
                          what="resize option")
    driver = open_pool_driver(args)
    kwargs: dict[str, Any] = {"data_size": sizes["dm.loopdatasize"],
                              "metadata_size": sizes["dm.loopmetadatasize"],
                              "force": args.force}
    if args.extend or args.extend_metadata:
        if "extend" not in inspect.signature(driver.resize_pool).parameters:
            raise CliError("this devicemapper driver cannot --extend")
        kwargs.update(extend=args.extend, extend_metadata=args.extend_metadata)
    show = sys.stderr.isatty()
    if "progress" in inspect.signature(driver.resize_pool).parameters and show:
        kwargs["progress"] = lambda message: _say(f"pool resize: {message}")
    elif show:
        _say("pool resize: growing the pool (layers stay mounted)...")
    result = driver.resize_pool(**kwargs)
    status = result if isinstance(result, dict) else driver.pool_status()
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

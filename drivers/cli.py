"""The ``graphdrivers`` command line: argparse front end and error handling.

argparse (stdlib) rather than click or typer: no dependency to install next
to a storage daemon, nested subcommands (``layer create``) are built in, and
its import is cheap, so ``graphdrivers --help`` starts in tens of
milliseconds. Command groups live in cli_layer.py and cli_pool.py; every
heavy import (stevedore, a driver, the plugin server) happens inside the
command that needs it.

Errors a user can cause (DriverError, OSError) print one line,
``graphdrivers: error: ...``, and exit 1, or 2 for a usage error (a malformed
command line, option or layer id); never a traceback (set
GRAPHDRIVERS_DEBUG=1 to see one). Ctrl-C exits 130, a closed stdout 141.
"""
from __future__ import annotations

import argparse
import errno
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


# -- helpers the command modules share ---------------------------------------

def default_home() -> str:
    return os.environ.get("GRAPHDRIVERS_HOME") or DEFAULT_HOME


def driver_options(args: argparse.Namespace) -> dict[str, str]:
    from .options import parse_key_values
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


# -- commands kept here: drivers, status, serve, bench -----------------------

def cmd_drivers(args: argparse.Namespace) -> int:
    import graphdrivers
    from graphdrivers.registry import PRIORITY, prior_drivers
    home = pathlib.Path(args.home)
    report = graphdrivers.describe(home)
    prior = prior_drivers(home) if home.is_dir() else []
    usable = [name for name, reason in report if reason is None]
    # the driver `load(None, home)` would pick: prior state first, then priority order
    order = [n for n in PRIORITY if n in usable] + [n for n in usable if n not in PRIORITY]
    default = prior[0] if len(prior) == 1 else (None if prior else (order[0] if order else None))
    rows = [{"name": name, "usable": reason is None, "reason": reason,
             "state_here": name in prior, "default": name == default}
            for name, reason in report]
    if args.json:
        emit_json(rows)
        return 0
    table = []
    for row in rows:
        notes = []
        if row["default"]:
            notes.append("default here")
        if row["state_here"]:
            notes.append("has layers here")
        if row["reason"]:
            notes.append(row["reason"])
        table.append([row["name"], "yes" if row["usable"] else "no", "; ".join(notes)])
    print_table(table, ["DRIVER", "USABLE", "NOTES"])
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    driver = open_driver(args)
    status = driver.status()
    if args.json:
        emit_json({"driver": driver.name, "home": str(driver.home),
                   "status": {key: value for key, value in status}})
        return 0
    print(f"Storage Driver: {driver.name}")
    print(f" Home: {driver.home}")
    for key, value in status:
        print(f" {key}: {value}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    try:
        from graphdrivers import plugin
    except ModuleNotFoundError as exc:
        if exc.name != "graphdrivers.plugin":
            raise
        raise CliError("the plugin server (graphdrivers.plugin) is not installed") from None
    extra = {"name": args.name} if args.name else {}
    result = plugin.serve(args.driver, args.home, driver_options(args), args.socket, **extra)
    return result if isinstance(result, int) else 0


def cmd_bench(args: argparse.Namespace) -> int:
    import importlib.util
    try:
        found = importlib.util.find_spec("graphdrivers.bench") is not None
    except ModuleNotFoundError:
        found = False
    if not found:
        raise CliError("the benchmark suites (graphdrivers.bench) are not installed; "
                       "run them from a source checkout")
    from graphdrivers import bench
    result = bench.main(list(args.bench_args))
    return result if isinstance(result, int) else 0


# -- parser ---------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    from . import cli_layer, cli_pool

    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Storage (graph) drivers for container engines: vfs, overlay2, btrfs, "
                    "devicemapper. Manage layers, pools and the Docker plugin from the shell.",
        epilog="Sizes take Docker's units (100GB, 2G, 512MiB; powers of 1024). "
               "Run '%(prog)s COMMAND --help' for a command's options.")
    add_global_options(parser, top_level=True)
    from . import __version__
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")

    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    common = common_parent()

    p = commands.add_parser("drivers", parents=[common], help="list drivers: usable here, or why not")
    p.set_defaults(func=cmd_drivers)

    p = commands.add_parser("status", parents=[common], help="show the driver's status for --home")
    p.set_defaults(func=cmd_status)

    cli_layer.add_commands(commands, common)
    cli_pool.add_commands(commands, common)

    p = commands.add_parser("serve", parents=[common],
                            help="serve Docker's graph driver plugin protocol on a unix socket")
    p.add_argument("--socket", metavar="PATH",
                   help="socket to listen on (default: /run/docker/plugins/<name>.sock)")
    p.add_argument("--name", help="plugin name for dockerd --storage-driver "
                                  "(default: graphdrivers-<driver>)")
    p.set_defaults(func=cmd_serve)

    p = commands.add_parser("bench", add_help=False, prefix_chars="\0",
                            help="run the benchmark suites and write a report "
                                 "(arguments go to the bench runner)")
    p.add_argument("bench_args", nargs=argparse.REMAINDER)
    p.set_defaults(func=cmd_bench)
    return parser


def add_global_options(parser: argparse.ArgumentParser, *, top_level: bool) -> None:
    """--home, --driver, --json; real defaults at the top, SUPPRESS on subcommands
    so ``graphdrivers layer ls --home H`` and ``graphdrivers --home H layer ls`` agree."""
    default = (lambda value: value) if top_level else (lambda value: argparse.SUPPRESS)
    parser.add_argument("--home", metavar="DIR", default=default(default_home()),
                        help="where the driver keeps its state "
                             "(default: $GRAPHDRIVERS_HOME or /var/lib/graphdrivers)")
    parser.add_argument("--driver", "-s", metavar="NAME", default=default(None),
                        help="storage driver (default: the one with state under --home, "
                             "else the first that works here)")
    parser.add_argument("--json", action="store_true", default=default(False),
                        help="machine-readable output (read commands)")
    if top_level:
        parser.add_argument("--storage-opt", metavar="K=V", action="append", default=[],
                            help="driver option with Docker's spelling, e.g. dm.basesize=20G "
                                 "(repeatable)")


def common_parent() -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    add_global_options(parent, top_level=False)
    return parent


# -- entry point ------------------------------------------------------------

def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args) or 0
    except KeyboardInterrupt:
        sys.stderr.write(f"\n{PROG}: interrupted\n")
        return 130
    except BrokenPipeError:
        # the reader went away (`| head`): not an error worth a message
        _silence_stdout()
        return 141
    except CliError as exc:
        return fail(str(exc), code=2)
    except Exception as exc:  # noqa: BLE001 - every error becomes one line
        if os.environ.get("GRAPHDRIVERS_DEBUG"):
            raise
        return fail(describe_error(exc), code=2 if is_usage_error(exc) else 1)


def is_usage_error(exc: BaseException) -> bool:
    """A malformed option or layer id on the command line: refused before anything ran."""
    from graphdrivers.errors import InvalidLayerId, InvalidOption
    return isinstance(exc, (InvalidOption, InvalidLayerId))


def describe_error(exc: BaseException) -> str:
    from graphdrivers.errors import DriverError
    if isinstance(exc, (DriverError, NoState)):
        return str(exc) or type(exc).__name__
    if isinstance(exc, OSError):
        text = exc.strerror or str(exc)
        if exc.filename and os.fsdecode(exc.filename) not in text:
            text = f"{os.fsdecode(exc.filename)}: {text}"
        if exc.errno in (errno.EPERM, errno.EACCES) and os.geteuid() != 0:
            text += " (most commands need root)"
        return text
    if isinstance(exc, NotImplementedError):
        return f"not supported by this driver: {exc}" if str(exc) else "not supported by this driver"
    return f"{type(exc).__name__}: {exc} (unexpected; GRAPHDRIVERS_DEBUG=1 shows a traceback)"


def fail(message: str, *, code: int = 1) -> int:
    message = " ".join(message.split())   # one line, whatever the message held
    sys.stderr.write(f"{PROG}: error: {message}\n")
    return code


def _silence_stdout() -> None:
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


if __name__ == "__main__":
    # `python -m graphdrivers.cli`: run the package's module, not this __main__ copy,
    # so the exception classes the command modules raise are the ones main() catches
    from graphdrivers.cli import main as _main
    sys.exit(_main())

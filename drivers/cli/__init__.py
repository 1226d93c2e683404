"""The ``graphdrivers`` command line: argparse front end and error handling.

argparse (stdlib) rather than click or typer: no dependency to install next
to a storage daemon, nested subcommands (``layer create``) are built in, and
its import is cheap, so ``graphdrivers --help`` starts in tens of
milliseconds. Command groups live in layer.py, pool.py and migrate.py, their shared helpers in common.py; every
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
import os
import pathlib
import sys
from typing import Sequence

from graphdrivers.cli.common import (PROG, CliError, NoState, default_home, driver_options,
                                     emit_json, open_driver, print_table)


# -- commands kept here: drivers, status, serve, bench -----------------------

def cmd_drivers(args: argparse.Namespace) -> int:
    import graphdrivers
    from graphdrivers.registry import default_driver, prior_drivers
    home = pathlib.Path(args.home)
    report = graphdrivers.describe(home)
    prior = prior_drivers(home) if home.is_dir() else []
    default = default_driver(home, [name for name, reason in report if reason is None])
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
    notes = {key: note for key, note in driver.status_notes().items()
             if key in dict(status)}
    if args.json:
        emit_json({"driver": driver.name, "home": str(driver.home),
                   "status": {key: value for key, value in status}, "notes": notes})
        return 0
    print(f"Storage Driver: {driver.name}")
    print(f" Home: {driver.home}")
    for key, value in status:
        print(f" {key}: {value}{' (*)' if key in notes else ''}")
    for key, note in notes.items():   # rows that do not mean what they mean in Docker
        print(f"(*) {key}: {note}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    try:
        from graphdrivers.servers import docker_plugin as plugin
    except ModuleNotFoundError as exc:
        if exc.name != "graphdrivers.servers.docker_plugin":
            raise
        raise CliError("the plugin server (graphdrivers.servers.docker_plugin) is not installed") from None
    extra = {"name": args.name} if args.name else {}
    if args.metrics_addr:
        extra["metrics_addr"] = args.metrics_addr
    result = plugin.serve(args.driver, args.home, driver_options(args), args.socket, **extra)
    return result if isinstance(result, int) else 0


def cmd_snapshotter(args: argparse.Namespace) -> int:
    try:
        from graphdrivers.servers.snapshotter import server
    except ModuleNotFoundError as exc:
        if exc.name not in ("grpc", "google", "google.protobuf"):
            raise
        raise CliError(f"the containerd snapshotter needs grpcio and protobuf ({exc.name} is "
                       "missing): pip install grpcio protobuf") from None
    return server.serve(args.driver, args.home, driver_options(args), args.socket,
                        metrics_addr=args.metrics_addr)


def cmd_bench(args: argparse.Namespace) -> int:
    import importlib.util
    try:
        found = importlib.util.find_spec("graphdrivers.benchmarking.runner") is not None
    except ModuleNotFoundError:
        found = False
    if not found:
        raise CliError("the benchmark suites (graphdrivers.benchmarking.runner) are not installed; "
                       "run them from a source checkout")
    from graphdrivers.benchmarking import runner as bench
    result = bench.main(list(args.bench_args))
    return result if isinstance(result, int) else 0


# -- parser ---------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    from graphdrivers.cli import check as cli_check
    from graphdrivers.cli import layer as cli_layer
    from graphdrivers.cli import migrate as cli_migrate
    from graphdrivers.cli import pool as cli_pool
    from graphdrivers.cli import config as cli_config
    from graphdrivers.cli import metrics as cli_metrics
    from graphdrivers.cli import shell as cli_shell

    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Storage (graph) drivers for container engines: vfs, overlay2, btrfs, "
                    "devicemapper. Manage layers, pools and the Docker plugin from the shell.",
        epilog="Sizes take Docker's units (100GB, 2G, 512MiB; powers of 1024). "
               "Run '%(prog)s COMMAND --help' for a command's options.")
    add_global_options(parser, top_level=True)
    from graphdrivers import __version__
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")

    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    common = common_parent()

    p = commands.add_parser("drivers", parents=[common], help="list drivers: usable here, or why not")
    p.set_defaults(func=cmd_drivers)

    p = commands.add_parser("status", parents=[common], help="show the driver's status for --home")
    p.set_defaults(func=cmd_status)

    cli_layer.add_commands(commands, common)
    cli_pool.add_commands(commands, common)
    cli_migrate.add_commands(commands, common)
    cli_check.add_commands(commands, common)
    cli_config.add_commands(commands, common)

    p = commands.add_parser("serve", parents=[common],
                            help="serve Docker's graph driver plugin protocol on a unix socket")
    p.add_argument("--socket", metavar="PATH",
                   help="socket to listen on (default: /run/docker/plugins/<name>.sock)")
    p.add_argument("--name", help="plugin name for dockerd --storage-driver "
                                  "(default: graphdrivers-<driver>)")
    add_metrics_option(p)
    p.set_defaults(func=cmd_serve)

    p = commands.add_parser("snapshotter", parents=[common],
                            help="serve containerd's snapshots API (a proxy snapshotter) "
                                 "on a unix socket")
    p.add_argument("--socket", metavar="PATH",
                   help="socket to listen on (default: /run/graphdrivers/snapshotter-<driver>.sock)")
    p.add_argument("--storage-opt", metavar="K=V", action="append", default=argparse.SUPPRESS,
                   help="driver option, as before the command (repeatable)")
    add_metrics_option(p)
    p.set_defaults(func=cmd_snapshotter)

    cli_metrics.add_commands(commands, common)
    cli_shell.add_commands(commands, common)

    p = commands.add_parser("bench", add_help=False, prefix_chars="\0",
                            help="run the benchmark suites and write a report "
                                 "(arguments go to the bench runner)")
    p.add_argument("bench_args", nargs=argparse.REMAINDER)
    p.set_defaults(func=cmd_bench)
    return parser


def add_global_options(parser: argparse.ArgumentParser, *, top_level: bool) -> None:
    """--home, --driver, --json; real defaults at the top, SUPPRESS on subcommands
    so ``graphdrivers layer ls --home H`` and ``graphdrivers --home H layer ls`` agree.
    Top-level defaults are marked (config.Default) so the config file can replace them."""
    from graphdrivers.cli.config import LOG_FORMATS, LOG_LEVELS, Default, DefaultList
    default = (lambda value: value) if top_level else (lambda value: argparse.SUPPRESS)
    parser.add_argument("--home", metavar="DIR", default=default(Default(default_home())),
                        help="where the driver keeps its state "
                             "(default: $GRAPHDRIVERS_HOME or /var/lib/graphdrivers)")
    parser.add_argument("--driver", "-s", metavar="NAME", default=default(None),
                        help="storage driver (default: the one with state under --home, "
                             "else the first that works here)")
    parser.add_argument("--json", action="store_true", default=default(False),
                        help="machine-readable output (read commands)")
    parser.add_argument("--config", metavar="FILE", default=default(None),
                        help="configuration file (default: $GRAPHDRIVERS_CONFIG or "
                             "/etc/graphdrivers/config.toml if it exists)")
    parser.add_argument("--log-level", choices=LOG_LEVELS, type=str.lower, default=default(None),
                        help="least severe log messages shown (default: warning; "
                             "info for the servers)")
    parser.add_argument("--log-format", choices=LOG_FORMATS, default=default(None),
                        help="log lines as text or as one JSON object each (default: text)")
    if top_level:
        parser.add_argument("--storage-opt", metavar="K=V", action="append", default=DefaultList(),
                            help="driver option with Docker's spelling, e.g. dm.basesize=20G "
                                 "(repeatable)")


def add_metrics_option(parser: argparse.ArgumentParser) -> None:
    from graphdrivers.cli.config import metrics_address

    def address(text: str) -> str:
        try:
            return metrics_address(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    parser.add_argument("--metrics-addr", metavar="HOST:PORT|unix:PATH", type=address,
                        help="serve Prometheus metrics at http://HOST:PORT/metrics or on a "
                             "unix socket (default: none)")


def common_parent() -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    add_global_options(parent, top_level=False)
    return parent


# -- entry point ------------------------------------------------------------

def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        from graphdrivers.cli.config import resolve
        args.effective_config = resolve(args)
        from graphdrivers import logs
        logs.configure(args.log_level, args.log_format)
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

"""``graphdrivers metrics``: the driver's figures once, for node_exporter's textfile
collector (layers; for a pool, its space, headroom and mode). A cron job or timer runs
``graphdrivers metrics -o /var/lib/node_exporter/textfile/graphdrivers.prom``; the
file is replaced atomically, so the collector never reads half of it. Operation
counts and latencies exist only in a running server (``--metrics-addr``)."""
from __future__ import annotations

import argparse
import os
import sys

from graphdrivers.cli.common import open_driver


def add_commands(commands, common: argparse.ArgumentParser) -> None:
    p = commands.add_parser("metrics", parents=[common],
                            help="print Prometheus metrics once (textfile-collector format)")
    p.add_argument("--output", "-o", metavar="FILE",
                   help="write them to FILE, replaced atomically (default: stdout)")
    p.set_defaults(func=cmd_metrics)


def cmd_metrics(args: argparse.Namespace) -> int:
    try:
        from graphdrivers.servers.metrics import one_shot
    except ModuleNotFoundError as exc:
        from graphdrivers.cli.common import CliError
        raise CliError(f"metrics need prometheus-client ({exc.name} is missing): "
                       "pip install prometheus-client") from None
    driver = open_driver(args)
    text = one_shot(driver)
    if args.output in (None, "-"):
        sys.stdout.buffer.write(text)
        sys.stdout.buffer.flush()
    else:
        from graphdrivers.store.atomicfile import write_atomic
        write_atomic(os.path.abspath(args.output), text, 0o644)
    return 0

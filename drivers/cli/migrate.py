"""``graphdrivers migrate``: copy every layer of one driver into another (graphdrivers.migrate).

    graphdrivers [--home H] migrate --to DRIVER [--from DRIVER] [--target-home H2]
        [--storage-opt K=V ...] [--source-opt K=V ...] [--dry-run] [--json]
        [--remove-source] [--drop-layer-options]

``--storage-opt`` after ``migrate`` configures the target driver; the source takes the
global ``--storage-opt`` (before the command) and ``--source-opt``. The target home
defaults to the source's: each driver keeps its own ``<home>/<driver>``.
"""
from __future__ import annotations

import argparse
import pathlib
import sys

from graphdrivers.cli.common import CliError, emit_json, print_table, require_state
from graphdrivers.cli.progress import Progress
from graphdrivers.options import format_size, parse_key_values


def add_commands(commands, common: argparse.ArgumentParser) -> None:
    p = commands.add_parser(
        "migrate", parents=[common],
        help="copy every layer into another driver (same ids, parents, rw flags), verified")
    p.add_argument("--to", required=True, metavar="DRIVER", help="the target driver")
    p.add_argument("--from", dest="source", metavar="DRIVER",
                   help="the source driver (default: --driver, else the one with state "
                        "under --home)")
    p.add_argument("--target-home", metavar="DIR",
                   help="the target's home (default: --home; each driver has its own subdir)")
    p.add_argument("--storage-opt", dest="target_opt", metavar="K=V", action="append",
                   default=[], help="target driver option (repeatable)")
    p.add_argument("--source-opt", metavar="K=V", action="append", default=[],
                   help="source driver option (repeatable; as the global --storage-opt)")
    p.add_argument("--dry-run", action="store_true",
                   help="print the layers, the bytes to copy and whether the target has "
                        "room; copy nothing")
    p.add_argument("--remove-source", action="store_true",
                   help="remove the source's layers once every one is copied and verified")
    p.add_argument("--drop-layer-options", action="store_true",
                   help="create the copies without the source's per-layer options (size)")
    p.set_defaults(func=cmd_migrate)


def cmd_migrate(args: argparse.Namespace) -> int:
    import graphdrivers
    from graphdrivers import migrate
    source = _open_source(args)
    target_home = pathlib.Path(args.target_home or args.home)
    keep = not args.drop_layer_options
    if args.to not in graphdrivers.available():
        raise CliError(f"unknown target driver {args.to!r}; installed drivers: "
                       f"{', '.join(graphdrivers.available())}")
    target_options = parse_key_values(args.target_opt)
    if args.dry_run:
        return _dry_run(args, source, target_home, target_options, keep)
    target = graphdrivers.load(args.to, target_home, target_options)
    try:
        with _Shown() as shown:
            summary = migrate.migrate(source, target, remove_source=args.remove_source,
                                      keep_options=keep, observer=shown)
    finally:
        target.cleanup()
        source.cleanup()
    if args.json:
        emit_json(summary)
    else:
        print(f"migrated {summary['copied']} of {summary['layers']} layer(s) from "
              f"{source.name} to {target.name} in {target.home} "
              f"({format_size(summary['bytes'])} in {summary['seconds']:.1f}s; "
              f"{summary['already_done']} already done, {summary['redone']} redone; all "
              f"verified{'; source removed' if summary['source_removed'] else ''})")
    return 0


def _open_source(args: argparse.Namespace):
    import graphdrivers
    from graphdrivers.registry import prior_drivers
    name = args.source or args.driver
    if name is None:
        prior = [d for d in prior_drivers(pathlib.Path(args.home)) if d != args.to]
        if len(prior) > 1:
            raise CliError(f"{args.home} holds layers of {', '.join(prior)}; name the source "
                           "with --from")
        name = prior[0] if prior else None
    require_state(argparse.Namespace(home=args.home, driver=name))
    options = parse_key_values((args.storage_opt or []) + args.source_opt)
    return graphdrivers.load(name, args.home, options)


def _dry_run(args, source, target_home: pathlib.Path, options, keep: bool) -> int:
    import graphdrivers
    from graphdrivers import migrate
    home = target_home / args.to
    # a home that does not exist stays so: nothing is created by a dry run
    target = graphdrivers.load(args.to, target_home, options) if home.is_dir() else None
    try:
        plan = migrate.plan(source, target, args.to, home, keep_options=keep)
    finally:
        if target is not None:
            target.cleanup()
        source.cleanup()
    if args.json:
        emit_json(plan.to_json())
    else:
        rows = [[layer.id, layer.parent or "-", "yes" if layer.rw else "no",
                 " ".join(f"{k}={v}" for k, v in layer.options.items()) or "-",
                 format_size(layer.bytes), layer.state] for layer in plan.layers]
        print_table(rows, ["LAYER", "PARENT", "RW", "OPTIONS", "BYTES", "ACTION"])
        room = {True: "yes", False: "NO", None: "unknown"}[plan.room]
        free = "unknown" if plan.space_available is None else format_size(plan.space_available)
        print(f"{len(plan.to_copy)} of {len(plan.layers)} layer(s) to copy from "
              f"{plan.source_driver} to {plan.target_driver} in {plan.target_home}: "
              f"{format_size(plan.bytes_to_copy)}; target free: {free}; room: {room}")
    plan.check()        # a conflict or a refused option: exit 1, as the real run would
    return 0


class _Shown:
    """The migration's progress on a terminal: ``layer 3/21 app  12 MB / 200 MB  6%  45 MB/s
    4s left``. Bytes are the layers' diff sizes: a layer's tar (headers, padding) counts
    up to its own size, and a finished layer counts as all of it."""

    def __enter__(self):
        self.progress: Progress | None = None
        return self

    def started(self, plan) -> None:
        self.total = len(plan.to_copy)
        self.count = 0
        self.progress = Progress(f"layer 0/{self.total}", plan.bytes_to_copy, stream=sys.stderr)

    def layer_started(self, index, layer) -> None:
        self.count += 1
        self.left = layer.bytes         # what this layer may still add to the count
        if self.progress is not None:
            self.progress.label = f"layer {self.count}/{self.total} {layer.id[:12]}"
            self.progress.update(0)

    def copied(self, count: int) -> None:
        step = min(count, self.left)
        self.left -= step
        if self.progress is not None:
            self.progress.update(step)

    def layer_finished(self, index, layer) -> None:
        self.copied(self.left)

    def __exit__(self, *exc: object) -> None:
        if self.progress is not None:
            self.progress.close()

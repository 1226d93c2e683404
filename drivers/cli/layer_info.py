"""``graphdrivers layer inspect`` and ``layer usage``: one layer's record and driver
metadata (what dockerd's GetMetadata returns), and the disk space it really takes."""
from __future__ import annotations

import argparse

from graphdrivers.cli.common import CliError, emit_json, open_driver


def add_commands(sub, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("inspect", parents=[common],
                       help="show a layer's record and the driver's metadata for it")
    p.add_argument("id")
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser("usage", parents=[common],
                       help="disk space and inodes a layer's own data takes (as du counts)")
    p.add_argument("id")
    p.set_defaults(func=cmd_usage)


def cmd_inspect(args: argparse.Namespace) -> int:
    driver = open_driver(args)
    info = driver.info(args.id)
    metadata = driver.metadata(args.id)
    if args.json:
        emit_json({**info, "driver": driver.name, "metadata": metadata})
        return 0
    print(f"ID: {info['id']}")
    print(f"Driver: {driver.name}")
    print(f"Parent: {info['parent'] or '-'}")
    print(f"Mode: {'rw' if info['rw'] else 'ro'}")
    print(f"Mounted: {info['mounted_by'] or '-'}")
    for key, value in sorted(metadata.items()):
        print(f"{key}: {value}")
    return 0


def cmd_usage(args: argparse.Namespace) -> int:
    from graphdrivers.capabilities import LayerMounts
    from graphdrivers.options import format_size
    driver = open_driver(args)
    if not isinstance(driver, LayerMounts):
        raise CliError(f"the {driver.name} driver cannot measure a layer's own data")
    usage = driver.layer_usage(args.id)
    if args.json:
        emit_json({"id": args.id, "bytes": usage.size, "inodes": usage.inodes})
    else:
        print(f"{usage.size}\t{format_size(usage.size)}\t{usage.inodes} inodes")
    return 0

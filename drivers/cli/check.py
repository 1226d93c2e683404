"""``graphdrivers check [--repair]``: compare the layer records with the disk and the kernel.

Exit status: 0 when nothing is left wrong (also after ``--repair`` fixed everything, or
when only load's own recovery had work), 3 when findings remain (found, or a repair that
failed or needs an operator), 1 and 2 as every command (errors, usage).
"""
from __future__ import annotations

import argparse

from graphdrivers.cli.common import emit_json, open_driver, print_table

FINDINGS_LEFT = 3


def add_commands(commands, common: argparse.ArgumentParser) -> None:
    p = commands.add_parser(
        "check", parents=[common],
        help="compare the layer records with the disk and the kernel; --repair fixes",
        description="Report layers without data, data without a layer, broken parent chains, "
                    "layers left half made by a crash, leaked mounts, loop and device-mapper "
                    "devices, each with what --repair does. --repair deletes only what no "
                    "layer needs and moves damaged layers into <home>/<driver>/_quarantine. "
                    "Run it while no other process (engine, plugin, snapshotter) uses the "
                    "home: their mounts would read as leaked.")
    p.add_argument("--repair", action="store_true",
                   help="repair what can be repaired, then report what is left")
    p.set_defaults(func=cmd_check)


def cmd_check(args: argparse.Namespace) -> int:
    from graphdrivers import check
    drv = open_driver(args)
    try:
        findings = check.repair(drv) if args.repair else check.inspect(drv)
    finally:
        drv.release()       # hand back what the driver holds without unmounting anything
    left = check.outstanding(findings)
    if args.json:
        emit_json({"driver": drv.name, "home": str(drv.home), "clean": not left,
                   "findings": [f.to_json() for f in findings]})
    elif not findings:
        print(f"{drv.name} at {drv.home}: no findings")
    else:
        print_table([(f.state, f.kind, f.subject,
                      f.detail + (f"; error: {f.error}" if f.error else ""),
                      f.repair or "(none: needs an operator)") for f in findings],
                    header=("STATE", "KIND", "SUBJECT", "DETAIL", "REPAIR"))
        print(f"{len(left)} finding(s) left" if left else "nothing left to repair")
    return FINDINGS_LEFT if left else 0

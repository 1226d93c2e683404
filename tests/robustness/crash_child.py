"""The process that is killed: load the driver and run one operation.

    python3 crash_child.py <driver> <home> <options-json> <op> [<tar> <kill-at>]

With GRAPHDRIVERS_FAULT set, the fault point SIGKILLs us in the middle of the
operation. ``apply_diff`` kills itself from inside the tar stream after
``kill-at`` bytes were read (no fault point needed: it is the stream that
stops). Exit code 0 means the operation finished without being killed, which
the test treats as a missing fault point.
"""
from __future__ import annotations

import json
import os
import signal
import sys

import graphdrivers


class KillingStream:
    """A file whose reader is SIGKILLed once more than ``limit`` bytes were read."""

    def __init__(self, path: str, limit: int):
        self.f = open(path, "rb")         # noqa: SIM115  (read until the process dies)
        self.limit = limit
        self.pos = 0

    def read(self, n: int = -1) -> bytes:
        # short reads, so the applier has written some entries when we die
        data = self.f.read(65536 if n < 0 else min(n, 65536))
        self.pos += len(data)
        if self.pos > self.limit:
            os.kill(os.getpid(), signal.SIGKILL)
        return data

    def readinto(self, buf) -> int:
        data = self.read(len(buf))
        buf[:len(data)] = data
        return len(data)


def main() -> None:
    name, home, options, op = sys.argv[1:5]
    drv = graphdrivers.load(name, home, json.loads(options))
    if op == "create":
        drv.create("victim", "child")
    elif op == "remove":
        drv.remove("victim")
    elif op == "mount":
        drv.mount("child")
    elif op == "unmount":
        drv.mount("child")
        drv.unmount("child")
    elif op == "apply_diff":
        drv.apply_diff("victim", "child", KillingStream(sys.argv[5], int(sys.argv[6])))
    else:
        raise SystemExit(f"unknown op {op}")


if __name__ == "__main__":
    main()

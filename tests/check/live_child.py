"""A live user of a home, for the tests that `check` leaves live work alone.

    python3 live_child.py <driver> <home> <options-json> mount <layer>
    python3 live_child.py <driver> <home> <options-json> apply <layer> <parent>

``mount``: mounts the layer, prints "ready", waits until stdin closes.
``apply``: applies a tar read from stdin (prints "ready" first); the parent sends
part of it and keeps the pipe open, so the apply stays in flight.
"""
from __future__ import annotations

import json
import sys

import graphdrivers


def main() -> None:
    name, home, options, op = sys.argv[1:5]
    drv = graphdrivers.load(name, home, json.loads(options))
    if op == "mount":
        drv.mount(sys.argv[5])
        print("ready", flush=True)
        sys.stdin.read()
    elif op == "apply":
        print("ready", flush=True)
        drv.apply_diff(sys.argv[5], sys.argv[6], sys.stdin.buffer)
    else:
        raise SystemExit(f"unknown op {op}")


if __name__ == "__main__":
    main()

"""Fault injection for the crash tests: die at a named step, deterministically.

``GRAPHDRIVERS_FAULT=<driver>.<op>.<step>`` makes the process SIGKILL itself
when it reaches ``point("<driver>.<op>.<step>")``, e.g.
``GRAPHDRIVERS_FAULT=vfs.create.after_copy``. SIGKILL, not an exception: no
``finally`` block, no atexit handler runs, exactly as when the OOM killer or a
power cut stops the engine. Several names may be given, separated by commas;
``GRAPHDRIVERS_FAULT_SKIP=n`` lets the first n hits pass (to die in the
middle of a loop). Unset (always, outside tests) a point costs one dictionary
lookup.

The points each driver has are listed in ``POINTS`` so the crash tests can hit
every one and notice when one disappears from the code.
"""
from __future__ import annotations

import os
import signal

ENV = "GRAPHDRIVERS_FAULT"
SKIP_ENV = "GRAPHDRIVERS_FAULT_SKIP"
_hits = 0

POINTS: dict[str, list[str]] = {
    "vfs": ["vfs.create.after_mkdir", "vfs.create.after_copy", "vfs.create.after_meta",
            "vfs.create.after_rename", "vfs.remove.after_rename", "vfs.remove.after_meta"],
    "overlay2": ["overlay2.create.after_mkdir", "overlay2.create.after_link",
                 "overlay2.create.after_rename", "overlay2.remove.after_rename",
                 "overlay2.remove.after_link", "overlay2.mount.after_mkdir",
                 "overlay2.mount.after_mount", "overlay2.unmount.after_umount"],
    "btrfs": ["btrfs.create.after_meta", "btrfs.create.after_subvolume",
              "btrfs.remove.after_quota_file", "btrfs.remove.after_delete"],
}


def point(name: str) -> None:
    """SIGKILL this process if ``name`` is the fault the environment asks for."""
    wanted = os.environ.get(ENV)
    if wanted is None or name not in wanted.split(","):
        return
    global _hits
    _hits += 1
    if _hits > int(os.environ.get(SKIP_ENV, "0")):
        os.kill(os.getpid(), signal.SIGKILL)

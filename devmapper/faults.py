"""Fault injection for the crash tests.

``GRAPHDRIVERS_FAULT=devmapper.<op>.<step>`` makes the process SIGKILL itself
when it reaches that point, e.g. ``devmapper.snapshot.after_message``. Ops:
create (thin device), snapshot, remove, resize; steps: after_open,
after_message, after_register, after_commit (resize: after_grow_files,
after_suspend, after_reload). Unset (always, outside tests) it costs one
dictionary lookup.
"""
from __future__ import annotations

import os
import signal

ENV = "GRAPHDRIVERS_FAULT"


def point(name: str) -> None:
    if os.environ.get(ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)

"""Fault injection for the crash tests.

``GRAPHDRIVERS_FAULT=devmapper.<op>.<step>`` makes the process SIGKILL itself
when it reaches that point, e.g. ``devmapper.snapshot.after_message``. Ops:
create (thin device), snapshot, remove, resize; steps: after_open,
after_message, after_register, after_commit (resize: after_grow_files,
after_suspend, after_reload). Unset (always, outside tests) it costs one
dictionary lookup. The hook itself is graphdrivers.faults.
"""
from __future__ import annotations

from graphdrivers.faults import ENV, point  # noqa: F401  (the framework's hook, same variable)

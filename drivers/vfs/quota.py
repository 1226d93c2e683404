"""Project quotas for vfs' ``size`` option.

The XFS project-quota code lives with overlay2 (which needs the same thing for
``overlay2.size``); vfs borrows it, importing lazily so that vfs keeps working
when that package is missing.
"""
from __future__ import annotations

import os
import pathlib
from typing import Any


def quota_control(layers_dir: pathlib.Path) -> tuple[Any | None, str]:
    """(control, "") when per-layer size limits work under ``layers_dir``, else (None, why)."""
    try:
        from graphdrivers.kernel.projquota import open_control
    except ImportError as exc:
        return None, f"project quota support is not installed ({exc})"
    control, reason = open_control(layers_dir)
    if control is None:
        return None, reason
    for entry in os.scandir(layers_dir):           # keep project ids unique after a restart
        control.note_existing(pathlib.Path(entry.path))
    return control, ""

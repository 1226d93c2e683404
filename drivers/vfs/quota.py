"""Project quotas for vfs' ``size`` option (the kernel's XFS project quotas, as overlay2 uses)."""
from __future__ import annotations

import os
import pathlib

from graphdrivers.kernel.projquota import QuotaControl, open_control


def quota_control(layers_dir: pathlib.Path) -> tuple[QuotaControl | None, str]:
    """(control, "") when per-layer size limits work under ``layers_dir``, else (None, why)."""
    control, reason = open_control(layers_dir)
    if control is None:
        return None, reason
    for entry in os.scandir(layers_dir):           # keep project ids unique after a restart
        control.note_existing(pathlib.Path(entry.path))
    return control, ""

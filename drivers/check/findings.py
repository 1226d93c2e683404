"""What `graphdrivers check` reports: one Finding per thing wrong, with its repair.

A finding names what kind of damage it is, what it is about (a layer id, a path,
a device), what was seen, and what ``--repair`` does about it, in words an operator
can act on. ``action`` is that repair, as a call; None when check can only report
(a repair needs a decision: the finding says which). Backends make findings of their
own kinds in their ``check_findings()``; the framework's kinds are below.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

# the framework's kinds (a backend may use these or its own, e.g. "orphan-qgroup")
RECOVERED = "recovered-at-load"        # load's crash recovery dealt with it already
LAYER_WITHOUT_DATA = "layer-without-data"
DATA_WITHOUT_LAYER = "data-without-layer"
BROKEN_PARENT = "broken-parent"
HALF_MADE = "half-made-layer"
STALE_MARK = "stale-mark"
LEAKED_MOUNT = "leaked-mount"
LEAKED_LOOP = "leaked-loop"

# states
FOUND = "found"            # present now; `--repair` would do what ``repair`` says
REPAIRED = "repaired"      # `--repair` did it
FAILED = "failed"          # `--repair` tried; ``error`` says why it did not work
FIXED_AT_LOAD = "fixed"    # load's recovery did it before the inspection


@dataclass
class Finding:
    kind: str
    subject: str           # layer id, path or device the finding is about
    detail: str            # what was seen
    repair: str            # what --repair does ("" when it cannot: see detail)
    action: Callable[[], None] | None = field(default=None, repr=False, compare=False)
    state: str = FOUND
    error: str = ""

    @property
    def key(self) -> tuple[str, str]:
        return self.kind, self.subject

    @property
    def outstanding(self) -> bool:
        """Still wrong on the home (what the exit status counts)."""
        return self.state in (FOUND, FAILED)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind, "subject": self.subject,
                               "detail": self.detail, "repair": self.repair,
                               "repairable": self.action is not None, "state": self.state}
        if self.error:
            out["error"] = self.error
        return out

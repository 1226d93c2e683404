"""Running scripts/demo as a user would, and checking that it left nothing behind."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from graphdrivers.kernel import loop as loopback
from graphdrivers.kernel.mount import mounts_under

DEMO = Path(__file__).resolve().parent.parent / "scripts" / "demo"


def run_demo(workdir: Path, *args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(DEMO), "--workdir", str(workdir), *args],
                          capture_output=True, text=True, timeout=timeout,
                          env=dict(os.environ, PYTHONUNBUFFERED="1"))


def loops_under(root: Path) -> list[str]:
    """Loop devices whose backing file lies under ``root``."""
    found = []
    for entry in Path("/sys/block").glob("loop*"):
        backing = loopback.backing_file(f"/dev/{entry.name}")
        if backing and backing.startswith(str(root)):
            found.append(entry.name)
    return found


def assert_nothing_left(workdir: Path) -> None:
    assert mounts_under(workdir) == []
    assert loops_under(workdir) == []
    assert list(workdir.iterdir()) == []   # the demo's scratch dir is gone


def corrupt_tar(path: Path) -> Path:
    path.write_bytes(b"this is not a tar archive\n" * 400)
    return path

"""Real damage to a driver home, one kind per helper, and the content hashes to prove
that `check --repair` left every intact layer as it was."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

from graphdrivers.kernel import mount as mnt

from robustness.canary import snapshot
from robustness.layers import make_tar, write

CRASH_CHILD = str(Path(__file__).parent.parent / "robustness" / "crash_child.py")


def build(drv) -> None:
    """base <- child <- leaf, and a separate chain other <- other2, with content."""
    drv.create("base")
    write(drv, "base", {"etc/os-release": b"base\n", "bin/sh": b"#!sh\n" * 100})
    drv.create("child", "base")
    write(drv, "child", {"etc/hosts": b"127.0.0.1 child\n"})
    drv.create("leaf", "child")
    write(drv, "leaf", {"var/log/leaf": b"leaf\n"})
    drv.create("other")
    write(drv, "other", {"usr/share/other": os.urandom(4096)})
    drv.create("other2", "other", rw=True)
    write(drv, "other2", {"tmp/x": b"x\n"})


def hashes(drv, ids=None) -> dict[str, str]:
    """One digest per layer over its whole tree as the driver presents it."""
    out = {}
    for layer in sorted(ids if ids is not None else drv.layers()):
        root = drv.mount(layer)
        try:
            snap = snapshot(root)
        finally:
            drv.unmount(layer)
        snap.pop(".", None)
        out[layer] = hashlib.sha256(json.dumps(sorted(snap.items()), default=str)
                                    .encode()).hexdigest()
    return out


def append_record_line(drv, line: dict) -> None:
    """Write a line into the layer store's log behind its back (a bad edit, a bad tool)."""
    with open(Path(drv.home) / "_layers.json", "a") as f:
        f.write(json.dumps(line) + "\n")


def kill_inside_apply(name: str, home, options, victim_parent: str = "child") -> None:
    """Create ``victim`` on ``victim_parent`` and have a child process apply a diff to
    it that SIGKILLs the process half way through the tar."""
    tar = Path(home).parent / "kill.tar"
    tar.write_bytes(make_tar({f"many/f{i:03}": bytes([i]) * 8192 for i in range(50)}
                             | {"big": b"B" * (600 << 10)}))
    result = subprocess.run([sys.executable, CRASH_CHILD, name, str(home), json.dumps(options),
                             "apply_diff", str(tar), str(200 << 10)],
                            capture_output=True, text=True, timeout=300)
    tar.unlink()
    assert result.returncode == -9, (result.returncode, result.stderr[-2000:])


def bind_leak(source: Path, target: Path) -> None:
    """A bind mount under the home that no driver instance holds."""
    target.mkdir(parents=True, exist_ok=True)
    mnt.mount(str(source), str(target), None, mnt.MS_BIND)

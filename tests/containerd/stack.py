"""containerd plus `graphdrivers snapshotter`, started and stopped as one stack.

``running`` makes, under ``work``: the mount namespace both share, the
snapshotter (when a driver is given) on ``work/s.sock``, and containerd in
``work/ctrd`` with that socket as the proxy snapshotter ``graphdrivers-<driver>``.
Teardown goes in reverse order and by PID only; the namespace's end takes
every mount made inside it. The driver's home must exist before (a btrfs loop
mount made later would not be seen inside the namespace).
"""
from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from containerd.engine import SLOW, Containerd, EngineError, MountNamespace, short_path


@dataclass
class Snapshotter:
    """One `graphdrivers snapshotter` process in the shared namespace."""
    driver: str
    home: Path
    options: dict
    sock: Path
    log: Path
    mountns: MountNamespace
    process: subprocess.Popen | None = None

    @property
    def name(self) -> str:
        return f"graphdrivers-{self.driver}"

    def argv(self) -> list[str]:
        argv = [sys.executable, "-m", "graphdrivers.cli", "snapshotter", "--driver", self.driver,
                "--home", str(self.home), "--socket", str(short_path(self.sock))]
        for key, value in sorted(self.options.items()):
            argv += ["--storage-opt", f"{key}={value}"]
        return argv

    def start(self) -> None:
        with open(self.log, "ab") as out:
            self.process = self.mountns.popen(self.argv(), stdout=out, stderr=subprocess.STDOUT,
                                              env=dict(os.environ, GRAPHDRIVERS_DEBUG="1"))
        deadline = time.monotonic() + 60 * SLOW
        while not self._accepts():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise EngineError(f"graphdrivers snapshotter did not start:\n"
                                  f"{self.log.read_text()[-3000:]}")
            time.sleep(0.05)

    def _accepts(self) -> bool:
        with socket.socket(socket.AF_UNIX) as probe:
            try:
                probe.connect(str(self.sock))
            except OSError:
                return False
        return True

    def stop(self, sig: int = signal.SIGTERM) -> int | None:
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            code = self.process.wait(30 * SLOW)
        except subprocess.TimeoutExpired:
            self.process.kill()
            code = self.process.wait()
        self.process = None
        return code


@dataclass
class Stack:
    mountns: MountNamespace
    containerd: Containerd
    snapshotter: Snapshotter | None

    def restart(self, *, containerd: bool = True, snapshotter: bool = True,
                sig: int = signal.SIGTERM) -> None:
        """Stop containerd and/or the snapshotter with ``sig``; start them again."""
        if containerd:
            self.containerd.stop(sig)
        if snapshotter and self.snapshotter is not None:
            self.snapshotter.stop(sig)
            self.snapshotter.start()
        if containerd:
            self.containerd.start()


@contextlib.contextmanager
def running(work: Path, driver: str | None = None, home: Path | None = None,
            options: dict | None = None) -> Iterator[Stack]:
    work.mkdir(parents=True, exist_ok=True)
    mountns = MountNamespace()
    snap = None
    try:
        proxies = {}
        if driver is not None:
            snap = Snapshotter(driver, Path(home), dict(options or {}), work / "s.sock",
                               work / "snapshotter.log", mountns)
            snap.start()
            proxies[snap.name] = snap.sock
        engine = Containerd(work / "ctrd", mountns, proxies)
        engine.start()
        try:
            yield Stack(mountns, engine, snap)
        finally:
            engine.stop()
    finally:
        if snap is not None:
            snap.stop()
        mountns.close()

"""The plugin as its own process: SIGTERM and restart, logging, and memory that
stays flat while a large layer streams through ApplyDiff and Diff."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path

import psutil
import pytest

from plugin.plugin_client import Client

L1 = "1" * 64
C1 = "2" * 64

SERVE = ("import sys; from graphdrivers.servers.docker_plugin import serve; "
         "serve(sys.argv[1], None, {}, sys.argv[2], state_dir=sys.argv[3])")


def listening(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX) as s:
        try:
            s.connect(str(path))
            return True
        except OSError:
            return False


class PluginProcess:
    def __init__(self, driver: str, socket_path: Path, state: Path, log: Path):
        self.socket_path = socket_path
        self.log = log
        env = dict(os.environ, GRAPHDRIVERS_DEBUG="1")
        with open(log, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", SERVE, driver, str(socket_path), str(state)],
                stdout=out, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + 20
        while not listening(socket_path):   # a stale socket file may exist already
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise AssertionError(f"plugin did not start:\n{log.read_text()}")
            time.sleep(0.02)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise


@pytest.fixture
def proc_env(plugin_driver, tmp_path):
    started: list[PluginProcess] = []

    def start() -> PluginProcess:
        p = PluginProcess(plugin_driver, tmp_path / "run" / "gd.sock", tmp_path / "state",
                          tmp_path / "plugin.log")
        started.append(p)
        return p

    yield start, tmp_path
    for p in started:
        if p.proc.poll() is None:
            p.proc.kill()
            p.proc.wait()


def test_sigterm_and_restart_keep_layers_and_init(proc_env):
    start, tmp = proc_env
    first = start()
    c = Client(first.socket_path)
    c.ok("Plugin.Activate")
    c.ok("GraphDriver.Init", {"Home": str(tmp / "data" / "graphdrivers-vfs")})
    c.ok("GraphDriver.Create", {"ID": L1})
    c.ok("GraphDriver.CreateReadWrite", {"ID": C1, "Parent": L1})
    root = Path(c.ok("GraphDriver.Get", {"ID": C1})["Dir"])   # mounted when the plugin stops
    (root / "file").write_text("survives")
    c.close()
    assert first.stop() == 0
    assert not first.socket_path.exists()       # removed on a clean stop
    log = first.log.read_text()
    assert "POST /GraphDriver.Create -> 200" in log and "stopping" in log

    second = start()                            # dockerd sends no Activate/Init again
    c = Client(second.socket_path)
    assert Path(c.ok("GraphDriver.Get", {"ID": C1})["Dir"]) == root
    assert (root / "file").read_text() == "survives"
    c.ok("GraphDriver.Put", {"ID": C1})
    c.ok("GraphDriver.Put", {"ID": C1})
    assert c.ok("GraphDriver.Changes", {"ID": C1, "Parent": L1}) == {
        "Changes": [{"Path": "/file", "Kind": 1}]}
    c.close()
    assert second.stop() == 0


def test_killed_plugin_leaves_a_stale_socket_that_the_next_one_replaces(proc_env):
    start, tmp = proc_env
    first = start()
    c = Client(first.socket_path)
    c.ok("GraphDriver.Init", {"Home": str(tmp / "data" / "graphdrivers-vfs")})
    c.ok("GraphDriver.Create", {"ID": L1})
    c.close()
    first.proc.kill()
    first.proc.wait()
    assert first.socket_path.exists()
    second = start()
    c = Client(second.socket_path)
    assert c.ok("GraphDriver.Exists", {"ID": L1}) == {"Exists": True}
    c.close()
    assert second.stop() == 0


class ZeroTar:
    """A tar of one ``size``-byte file of zeros, produced on the fly in 1 MiB pieces."""

    def __init__(self, size: int):
        info = tarfile.TarInfo("big")
        info.size, info.mode, info.mtime = size, 0o644, 1_600_000_000
        self.header = info.tobuf(tarfile.PAX_FORMAT)
        self.size = size

    def __iter__(self):
        yield self.header
        block = bytes(1 << 20)
        left = self.size
        while left:
            n = min(left, len(block))
            yield block[:n]
            left -= n
        yield bytes(512 - self.size % 512 if self.size % 512 else 0) + bytes(1024)


class PeakRss:
    def __init__(self, pid: int):
        self.process = psutil.Process(pid)
        self.peak = self.process.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self):
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, self.process.memory_info().rss)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


@pytest.mark.slow
def test_large_layer_streams_in_constant_memory(proc_env):
    """2 GiB through ApplyDiff and back through Diff: the plugin's RSS barely moves."""
    size = 2 << 30
    start, tmp = proc_env
    plugin = start()
    c = Client(plugin.socket_path)
    c.ok("GraphDriver.Init", {"Home": str(tmp / "data" / "graphdrivers-vfs")})
    c.ok("GraphDriver.Create", {"ID": L1})
    c.ok("GraphDriver.Status", {})            # the driver and archive code are imported now
    baseline = psutil.Process(plugin.proc.pid).memory_info().rss
    with PeakRss(plugin.proc.pid) as apply_peak:
        status, reply = c.apply_diff(L1, None, ZeroTar(size))
    assert status == 200 and reply == {"Size": size}
    with PeakRss(plugin.proc.pid) as diff_peak:
        response = c.diff(L1)
        assert response.status == 200
        received = 0
        while data := response.read(1 << 20):
            received += len(data)
    assert received > size
    c.close()
    assert plugin.stop() == 0
    grow = max(apply_peak.peak, diff_peak.peak) - baseline
    print(f"baseline RSS {baseline >> 20} MiB; peak growth apply "
          f"{(apply_peak.peak - baseline) >> 20} MiB, diff {(diff_peak.peak - baseline) >> 20} MiB")
    assert grow < 48 << 20, f"RSS grew by {grow >> 20} MiB while streaming {size >> 20} MiB"

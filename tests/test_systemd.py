"""systemd integration: the shipped units pass ``systemd-analyze verify``; the servers
send READY=1 to $NOTIFY_SOCKET only once their own socket answers, STOPPING=1 on
SIGTERM; the plugin server takes a socket passed by socket activation."""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest

from plugin.plugin_client import Client as PluginClient
from snapshotter.client import Server as SnapServer

ROOT = Path(__file__).resolve().parents[1]
UNITS = ROOT / "contrib" / "systemd"
CLI = [sys.executable, "-m", "graphdrivers.cli"]


def test_units_verify(tmp_path):
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    exe = Path(sys.executable).with_name("graphdrivers")
    assert exe.exists(), exe
    units = sorted(UNITS.glob("graphdrivers-*"))
    assert {u.name for u in units} == {"graphdrivers-plugin.socket",
                                      "graphdrivers-plugin.service",
                                      "graphdrivers-snapshotter.service"}
    for unit in units:   # as scripts/setup --systemd installs them: ExecStart made real
        text = unit.read_text().replace("/usr/local/bin/graphdrivers", str(exe))
        (tmp_path / unit.name).write_text(text)
        if unit.suffix == ".service":
            assert "Type=notify" in text
    result = subprocess.run([analyze, "verify", "--man=no",
                             *[str(tmp_path / u.name) for u in units]],
                            capture_output=True, text=True, timeout=120)
    ours = [line for line in (result.stdout + result.stderr).splitlines()
            if "graphdrivers" in line]
    assert result.returncode == 0 and not ours, result.stdout + result.stderr


class Notifications:
    """A datagram socket standing in for systemd's $NOTIFY_SOCKET."""

    def __init__(self, path: Path):
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))

    def wait(self, state: str, timeout: float = 30) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.sock.settimeout(max(0.1, deadline - time.monotonic()))
            try:
                message = self.sock.recv(4096).decode()
            except socket.timeout:
                break
            if state in message.split("\n"):
                return message
        raise AssertionError(f"no {state} within {timeout} s")

    def close(self) -> None:
        self.sock.close()


def _plugin_env(tmp_path: Path, notify: Path) -> dict:
    env = dict(os.environ, NOTIFY_SOCKET=str(notify),
               GRAPHDRIVERS_PLUGIN_STATE=str(tmp_path / "state"))
    env.pop("GRAPHDRIVERS_DEBUG", None)
    return env


def _answers_now(path: Path) -> None:
    """One request, no retry: it must be answered right away."""
    client = PluginClient(path)
    client.conn.timeout = 5
    assert client.ok("Plugin.Activate") == {"Implements": ["GraphDriver"]}
    client.conn.close()


def test_plugin_is_ready_only_once_it_answers(tmp_path):
    notes = Notifications(tmp_path / "notify.sock")
    sock = tmp_path / "run" / "p.sock"
    proc = subprocess.Popen(CLI + ["serve", "--driver", "vfs", "--home", str(tmp_path / "home"),
                                   "--socket", str(sock), "--log-level", "debug"],
                            env=_plugin_env(tmp_path, notes.path),
                            stderr=open(tmp_path / "log", "wb"))
    try:
        ready = notes.wait("READY=1")
        _answers_now(sock)
        assert f"STATUS=serving graphdrivers-vfs on {sock}" in ready
        # the probe behind READY=1 was a real request, answered and logged
        assert "POST /Plugin.Activate -> 200" in (tmp_path / "log").read_text()
        proc.send_signal(signal.SIGTERM)
        notes.wait("STOPPING=1")
        assert proc.wait(20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        notes.close()


def test_plugin_socket_activation(tmp_path):
    notes = Notifications(tmp_path / "notify.sock")
    path = tmp_path / "activated.sock"
    listening = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listening.bind(str(path))
    listening.listen(16)
    # what systemd does: the socket as fd 3, LISTEN_FDS=1, LISTEN_PID = the server's pid
    wrapper = [sys.executable, "-c",
               "import os, sys; os.dup2(int(os.environ.pop('GD_FD')), 3); "
               "os.environ.update(LISTEN_FDS='1', LISTEN_PID=str(os.getpid())); "
               "os.execv(sys.executable, [sys.executable] + sys.argv[1:])"]
    env = dict(_plugin_env(tmp_path, notes.path), GD_FD=str(listening.fileno()))
    proc = subprocess.Popen(wrapper + CLI[1:] + ["serve", "--driver", "vfs", "--home",
                                                 str(tmp_path / "home")],
                            env=env, pass_fds=(listening.fileno(),),
                            stderr=open(tmp_path / "log", "wb"))
    try:
        ready = notes.wait("READY=1")
        assert f"on {path}" in ready
        _answers_now(path)
        PluginClient(path).ok("GraphDriver.Create", {"ID": "a" * 64})
        assert (tmp_path / "home" / "vfs" / "dir" / ("a" * 64)).is_dir()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0, (tmp_path / "log").read_text()
        assert path.is_socket()          # systemd's socket stays for the next start
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        listening.close()
        notes.close()


def test_snapshotter_is_ready_only_once_it_answers(tmp_path):
    notes = Notifications(tmp_path / "notify.sock")
    (tmp_path / "run").mkdir()
    server = SnapServer("vfs", tmp_path / "home", {}, tmp_path / "run" / "s.sock",
                        tmp_path / "snap.log")
    server.start(env={"NOTIFY_SOCKET": str(notes.path)}, wait=False)
    try:
        ready = notes.wait("READY=1")
        assert "STATUS=serving the vfs driver on" in ready
        from graphdrivers.servers.snapshotter import snapshots_pb2 as pb, snapshots_pb2_grpc
        with grpc.insecure_channel(f"unix:{server.socket}") as channel:
            stub = snapshots_pb2_grpc.SnapshotsStub(channel)
            with pytest.raises(grpc.RpcError) as info:   # answered at once, no wait_for_ready
                stub.Stat(pb.StatSnapshotRequest(key="nosuch"), timeout=5)
            assert info.value.code() == grpc.StatusCode.NOT_FOUND
        server.proc.send_signal(signal.SIGTERM)
        notes.wait("STOPPING=1")
    finally:
        server.stop()
        notes.close()


def test_notify_without_a_manager_is_a_no_op(monkeypatch):
    from graphdrivers.servers import notify
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert notify.notify("READY=1") is False
    assert notify.notify_when_ready(lambda: True, "x") is None
    monkeypatch.setenv("LISTEN_FDS", "1")
    monkeypatch.setenv("LISTEN_PID", str(os.getpid() + 1))    # meant for another process
    assert notify.listen_fds() == []
    assert "LISTEN_FDS" not in os.environ

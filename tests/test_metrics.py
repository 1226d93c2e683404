"""Prometheus metrics: scraped over HTTP (TCP and a unix socket) from running servers
and parsed with prometheus-client's own parser; the one-shot textfile output; the pool
figures' arithmetic. The devicemapper pool against ``pool status`` is in
tests/devmapper/test_metrics_pool.py (VM)."""
from __future__ import annotations

import os
import signal
import socket
import stat
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from graphdrivers.servers.metrics import headroom, pool_families
from plugin.plugin_client import Client as PluginClient, UnixHTTPConnection
from snapshotter.client import Client as SnapClient, Server as SnapServer

CLI = [sys.executable, "-m", "graphdrivers.cli"]


def samples(text: str) -> dict[tuple, float]:
    """{(name, sorted labels...): value} for every sample the parser reads."""
    found = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            found[(s.name, *sorted(s.labels.items()))] = s.value
    return found


def sample(found: dict, name: str, **labels) -> float:
    return found[(name, *sorted(labels.items()))]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scrape_unix(path: Path) -> str:
    conn = UnixHTTPConnection(path)
    conn.request("GET", "/metrics")
    response = conn.getresponse()
    assert response.status == 200
    assert response.getheader("Content-Type").startswith("text/plain")
    return response.read().decode()


def wait_until(predicate, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_plugin_metrics_over_tcp(tmp_path):
    port = free_port()
    sock = tmp_path / "run" / "p.sock"
    env = dict(os.environ, GRAPHDRIVERS_PLUGIN_STATE=str(tmp_path / "state"))
    proc = subprocess.Popen(CLI + ["serve", "--driver", "vfs", "--home", str(tmp_path / "home"),
                                   "--socket", str(sock), "--metrics-addr", f"127.0.0.1:{port}"],
                            stderr=open(tmp_path / "log", "wb"), env=env)
    try:
        wait_until(lambda: sock.exists() or proc.poll() is not None)
        client = PluginClient(sock)
        for layer in ("a" * 64, "b" * 64):
            client.ok("GraphDriver.Create", {"ID": layer})
        client.error("GraphDriver.Get", {"ID": "missing"})
        client.ok("GraphDriver.Exists", {"ID": "a" * 64})
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
            found = samples(r.read().decode())
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(20)
    common = {"server": "docker_plugin", "driver": "vfs"}
    assert sample(found, "graphdrivers_layers", driver="vfs") == 2
    assert sample(found, "graphdrivers_operations_total", operation="Create", **common) == 2
    assert sample(found, "graphdrivers_operations_total", operation="Get", **common) == 1
    assert sample(found, "graphdrivers_operation_errors_total", operation="Get", code="500",
                  **common) == 1
    assert ("graphdrivers_operation_errors_total", *sorted(
        {"operation": "Create", "code": "500", **common}.items())) not in found
    assert sample(found, "graphdrivers_operation_duration_seconds_count", operation="Create",
                  **common) == 2
    assert sample(found, "graphdrivers_operation_duration_seconds_bucket", operation="Create",
                  le="+Inf", **common) == 2
    assert sample(found, "graphdrivers_operation_duration_seconds_sum", operation="Create",
                  **common) > 0
    # no pool: no pool figures
    assert not any(key[0].startswith("graphdrivers_pool") for key in found)
    # nothing listens after the stop
    with socket.socket() as s, pytest.raises(ConnectionRefusedError):
        s.connect(("127.0.0.1", port))


def test_snapshotter_metrics_on_a_unix_socket(tmp_path):
    (tmp_path / "run").mkdir()
    metrics_sock = tmp_path / "run" / "metrics.sock"
    server = SnapServer("vfs", tmp_path / "home", {}, tmp_path / "run" / "s.sock",
                        tmp_path / "snap.log")
    server.args += ["--metrics-addr", f"unix:{metrics_sock}"]
    server.start()
    try:
        assert stat.S_IMODE(metrics_sock.stat().st_mode) == 0o660
        client = SnapClient(server.socket)
        client.prepare("a")
        client.commit("base", "a")
        with pytest.raises(Exception):
            client.stat("nosuch")
        client.close()
        found = samples(scrape_unix(metrics_sock))
    finally:
        server.stop()
    common = {"server": "snapshotter", "driver": "vfs"}
    assert sample(found, "graphdrivers_operations_total", operation="Prepare", **common) == 1
    assert sample(found, "graphdrivers_operations_total", operation="Commit", **common) == 1
    assert sample(found, "graphdrivers_operation_errors_total", operation="Stat",
                  code="NOT_FOUND", **common) == 1
    assert sample(found, "graphdrivers_layers", driver="vfs") == 1
    assert not metrics_sock.exists()        # removed at stop


def test_one_shot_textfile(tmp_path):
    home = tmp_path / "home"
    base = CLI + ["--home", str(home), "--driver", "vfs"]
    subprocess.run(base + ["layer", "create", "x"], check=True, capture_output=True)
    out = tmp_path / "textfile" / "graphdrivers.prom"
    out.parent.mkdir()
    result = subprocess.run(base + ["metrics", "-o", str(out)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert sample(samples(out.read_text()), "graphdrivers_layers", driver="vfs") == 1
    assert stat.S_IMODE(out.stat().st_mode) == 0o644     # node_exporter runs as its own user
    assert os.listdir(out.parent) == ["graphdrivers.prom"]  # no temporary left
    printed = subprocess.run(base + ["metrics"], capture_output=True, text=True, check=True)
    assert printed.stdout == out.read_text()


def test_bad_metrics_address_is_a_usage_error(tmp_path):
    result = subprocess.run(CLI + ["serve", "--metrics-addr", "nowhere"], capture_output=True,
                            text=True)
    assert result.returncode == 2
    assert "HOST:PORT" in result.stderr


def test_pool_figures():
    status = {"mode": "out_of_data_space", "needs_check": False, "data_used": 95 << 20,
              "data_total": 100 << 20, "metadata_used": 1 << 20, "metadata_total": 16 << 20,
              "min_free_space_percent": 10}
    found = {}
    for family in pool_families("devicemapper", status):
        for s in family.samples:
            found[(s.name, *sorted(s.labels.items()))] = s.value
    d = {"driver": "devicemapper"}
    assert sample(found, "graphdrivers_pool_data_headroom_bytes", **d) == -(5 << 20)
    assert sample(found, "graphdrivers_pool_metadata_headroom_bytes", **d) == \
        (16 << 20) - (1 << 20) - (16 << 20) // 10
    assert sample(found, "graphdrivers_pool_mode", mode="out_of_data_space", **d) == 1
    assert sample(found, "graphdrivers_pool_mode", mode="rw", **d) == 0
    assert sample(found, "graphdrivers_pool_min_free_space_ratio", **d) == 0.1
    assert headroom(0, 1000, 0) == 1000


def test_metrics_address_from_the_config_file(tmp_path):
    """[snapshotter] metrics-addr in the file reaches the running server."""
    (tmp_path / "run").mkdir()
    metrics_sock = tmp_path / "run" / "m.sock"
    conf = tmp_path / "config.toml"
    conf.write_text(f'log-format = "json"\n[snapshotter]\nmetrics-addr = "unix:{metrics_sock}"\n')
    server = SnapServer("vfs", tmp_path / "home", {}, tmp_path / "run" / "s.sock",
                        tmp_path / "snap.log")
    server.start(env={"GRAPHDRIVERS_CONFIG": str(conf)})
    try:
        found = samples(scrape_unix(metrics_sock))
    finally:
        server.stop()
    assert sample(found, "graphdrivers_layers", driver="vfs") == 0
    first = (tmp_path / "snap.log").read_text().splitlines()[0]
    assert first.startswith('{"time": '), first       # the file's log-format too

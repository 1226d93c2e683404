"""The pool's figures as Prometheus sees them (scraped over HTTP from a running plugin
server) equal ``graphdrivers pool status`` (VM only)."""
from __future__ import annotations

import json
import subprocess
import sys
import threading

import pytest
from prometheus_client.parser import text_string_to_metric_families

import graphdrivers
from graphdrivers.devmapper.testing import backend
from graphdrivers.servers.docker_plugin import PluginServer
from plugin.plugin_client import Client, UnixHTTPConnection

pytestmark = pytest.mark.devicemapper


def test_scraped_pool_figures_match_pool_status(tmp_path):
    with backend(tmp_path) as (home, options):
        metrics_sock = tmp_path / "metrics.sock"
        server = PluginServer("devicemapper", home, options, tmp_path / "p.sock",
                              state_dir=tmp_path / "state", metrics_addr=f"unix:{metrics_sock}")
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            Client(server.socket_path).ok("GraphDriver.Create", {"ID": "a" * 64})
            conn = UnixHTTPConnection(metrics_sock)
            conn.request("GET", "/metrics")
            text = conn.getresponse().read().decode()
            opts = [f"--storage-opt={k}={v}" for k, v in options.items()]
            status = json.loads(subprocess.run(
                [sys.executable, "-m", "graphdrivers.cli", "--home", str(home), "--driver",
                 "devicemapper", *opts, "pool", "status", "--json"],
                check=True, capture_output=True).stdout)
        finally:
            server.shutdown()
            thread.join(30)
            server.close()
            graphdrivers.load("devicemapper", home, options).cleanup()
    found = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.labels.get("driver") == "devicemapper":
                found[(s.name, s.labels.get("mode"))] = s.value
    for part in ("data", "metadata"):
        assert found[(f"graphdrivers_pool_{part}_used_bytes", None)] == status[f"{part}_used"]
        assert found[(f"graphdrivers_pool_{part}_total_bytes", None)] == status[f"{part}_total"]
        pct = status["min_free_space_percent"]
        total, used = status[f"{part}_total"], status[f"{part}_used"]
        assert found[(f"graphdrivers_pool_{part}_headroom_bytes", None)] == \
            total - used - total * pct // 100
    assert found[("graphdrivers_pool_mode", status["mode"])] == 1
    assert status["mode"] == "rw"
    assert found[("graphdrivers_layers", None)] == 1
    assert found[("graphdrivers_operations_total", None)] >= 1

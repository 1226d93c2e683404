"""Prometheus metrics: what a dashboard needs to see a pool filling up before it fails.

``Metrics`` is one server's registry: operation counts, errors and latency histograms
per operation (the servers call ``observe`` after each request), and, read at each
scrape, the layers of the driver and, for a driver with a pool (``PoolAdmin``), the
pool's data and metadata bytes, the headroom left above ``dm.min_free_space`` and the
pool mode. ``serve_metrics`` exposes a registry over HTTP on ``HOST:PORT`` or a unix
socket; ``graphdrivers metrics`` prints the same scrape-time figures once, in the text
format node_exporter's textfile collector reads.

Names follow Prometheus' conventions: ``graphdrivers_`` prefix, base units (bytes,
seconds), ``_total`` for counters.
"""
from __future__ import annotations

import logging
import os
import socket
import socketserver
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST

log = logging.getLogger("graphdrivers.metrics")

# how dm-thin names its modes (devmapper's PoolStatus.mode), and what a dashboard shows
POOL_MODES = ("rw", "out_of_data_space", "ro", "fail")
# storage calls take from a millisecond (Exists) to minutes (ApplyDiff of a big layer)
BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, float("inf"))


class DriverCollector:
    """Figures read from the driver at each scrape (never cached: a scrape is the truth)."""

    def __init__(self, driver: Callable[[], Any]):
        self._driver = driver     # a callable: the plugin loads its driver only at Init

    def describe(self) -> list:
        return []                 # collected lazily; nothing to check at registration

    def collect(self) -> Iterator[GaugeMetricFamily]:
        driver = self._driver()
        if driver is None:
            return
        layers = GaugeMetricFamily("graphdrivers_layers", "Layers in the driver's store",
                                   labels=["driver"])
        layers.add_metric([driver.name], len(driver.layers()))
        yield layers
        from graphdrivers.capabilities import PoolAdmin
        if isinstance(driver, PoolAdmin):
            try:
                status = driver.pool_status()
            except Exception as exc:  # noqa: BLE001 - a scrape reports, it does not fail
                log.warning("metrics: reading the pool status: %s", exc)
                yield _gauge("graphdrivers_pool_up", "1 when the pool status could be read",
                             driver.name, 0)
                return
            yield from pool_families(driver.name, status)


def _gauge(name: str, doc: str, driver: str, value: float) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, doc, labels=["driver"])
    family.add_metric([driver], value)
    return family


def headroom(used: int, total: int, min_free_percent: int) -> int:
    """Bytes that can still be written before free space falls under ``min_free_percent``
    of the total (where new layers start being refused); negative once under it."""
    return total - used - (total * min_free_percent) // 100


def pool_families(driver: str, status: dict[str, Any]) -> Iterator[GaugeMetricFamily]:
    pct = int(status.get("min_free_space_percent") or 0)
    yield _gauge("graphdrivers_pool_up", "1 when the pool status could be read", driver, 1)
    for part, doc in (("data", "data"), ("metadata", "metadata")):
        used, total = int(status[f"{part}_used"]), int(status[f"{part}_total"])
        yield _gauge(f"graphdrivers_pool_{part}_used_bytes", f"Pool {doc} space in use",
                     driver, used)
        yield _gauge(f"graphdrivers_pool_{part}_total_bytes", f"Pool {doc} space in all",
                     driver, total)
        yield _gauge(f"graphdrivers_pool_{part}_headroom_bytes",
                     f"Pool {doc} bytes left before free space falls under dm.min_free_space "
                     "(negative: under it; new layers are refused)", driver,
                     headroom(used, total, pct))
    yield _gauge("graphdrivers_pool_min_free_space_ratio",
                 "dm.min_free_space as a ratio of the pool", driver, pct / 100)
    mode = GaugeMetricFamily("graphdrivers_pool_mode",
                             "1 for the pool's current mode (rw, out_of_data_space, ro, fail)",
                             labels=["driver", "mode"])
    current = str(status.get("mode"))
    for name in POOL_MODES + ((current,) if current not in POOL_MODES else ()):
        mode.add_metric([driver, name], 1 if name == current else 0)
    yield mode
    yield _gauge("graphdrivers_pool_needs_check", "1 when the pool's metadata needs thin_check",
                 driver, 1 if status.get("needs_check") else 0)


class Metrics:
    """One server's registry: its operations, and the driver's figures at scrape time."""

    def __init__(self, server: str, driver: Callable[[], Any]):
        self.server = server
        self._driver = driver
        self.registry = CollectorRegistry()
        labels = ["server", "driver", "operation"]
        self.operations = Counter("graphdrivers_operations_total", "Requests served, by operation",
                                  labels, registry=self.registry)
        self.errors = Counter("graphdrivers_operation_errors_total",
                              "Requests answered with an error, by operation and code",
                              labels + ["code"], registry=self.registry)
        self.latency = Histogram("graphdrivers_operation_duration_seconds",
                                 "Time to answer a request, by operation", labels,
                                 buckets=BUCKETS, registry=self.registry)
        self.registry.register(DriverCollector(driver))

    def observe(self, operation: str, error_code: str | None, seconds: float) -> None:
        driver = self._driver()
        labels = (self.server, driver.name if driver is not None else "", operation)
        self.operations.labels(*labels).inc()
        self.latency.labels(*labels).observe(seconds)
        if error_code is not None:
            self.errors.labels(*labels, error_code).inc()


def one_shot(driver: Any) -> bytes:
    """The scrape-time figures of ``driver`` in the text exposition format."""
    registry = CollectorRegistry()
    registry.register(DriverCollector(lambda: driver))
    return generate_latest(registry)


# -- the HTTP endpoint ---------------------------------------------------------

class _Handler(BaseHTTPRequestHandler):
    server: Any

    def do_GET(self) -> None:
        if self.path.split("?")[0] not in ("/", "/metrics"):
            self.send_error(404, "metrics are at /metrics")
            return
        try:
            body = generate_latest(self.server.registry)
        except Exception as exc:  # noqa: BLE001
            log.warning("metrics scrape failed: %s", exc)
            self.send_error(500, str(exc))
            return
        self.send_response(200)
        self.send_header("Content-Type", CONTENT_TYPE_LATEST)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args) -> None:
        log.debug("metrics: " + format, *args)


class _TCPServer(ThreadingHTTPServer):
    daemon_threads = True

    def server_bind(self) -> None:   # no reverse DNS of the address (getfqdn can hang)
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = str(self.server_address[0]), self.server_address[1]


class _TCP6Server(_TCPServer):
    address_family = socket.AF_INET6


class _UnixServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


class MetricsEndpoint:
    """A registry served on ``address`` in a daemon thread until ``close``."""

    def __init__(self, address: str, registry: CollectorRegistry):
        self.address = address
        self._unix: Path | None = None
        if address.startswith("unix:") or address.startswith("/"):
            from graphdrivers.servers.http import _claim_socket_path
            self._unix = Path(address.removeprefix("unix:"))
            _claim_socket_path(self._unix)
            self._http = _UnixServer(str(self._unix), _Handler)
            os.chmod(self._unix, 0o660)
        else:
            host, _, port = address.rpartition(":")
            six = host.startswith("[")
            cls = _TCP6Server if six else _TCPServer
            self._http = cls((host.strip("[]"), int(port)), _Handler)
        self._http.registry = registry
        self._thread = threading.Thread(target=self._http.serve_forever, name="metrics",
                                        kwargs={"poll_interval": 0.5}, daemon=True)
        self._thread.start()
        log.info("metrics on %s", self.url)

    @property
    def url(self) -> str:
        if self._unix is not None:
            return f"unix:{self._unix}"
        host, port = self._http.server_address[:2]
        return f"http://{'[' + host + ']' if ':' in host else host}:{port}/metrics"

    def close(self) -> None:
        self._http.shutdown()
        self._http.server_close()
        if self._unix is not None:
            self._unix.unlink(missing_ok=True)

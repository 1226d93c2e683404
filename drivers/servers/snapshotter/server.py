"""`graphdrivers snapshotter`: serve containerd's snapshots API on a unix socket.

containerd names the socket in its config (``[proxy_plugins.<name>] type = "snapshot"``,
``address = <socket>``). One server per driver home: it holds an flock on
``<driver home>/_snapshotter.lock`` while it runs (a second one is refused with the
holder's pid), which is what lets it remove, at start, the snapshot layers a killed
predecessor left without a record. SIGTERM or SIGINT: stop taking calls, let running
ones finish (a few seconds), remove the socket. Mounts made by containerd are
containerd's; nothing is unmounted here.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import signal
import socket
import threading
import time
from concurrent import futures
from pathlib import Path
from typing import Mapping

import grpc

from graphdrivers import registry
from graphdrivers.errors import DriverError
from graphdrivers.servers.snapshotter import snapshots_pb2_grpc
from graphdrivers.servers.snapshotter.model import Snapshotter
from graphdrivers.servers.snapshotter.service import SnapshotsService

log = logging.getLogger("graphdrivers.servers.snapshotter")

SOCKET_DIR = Path("/run/graphdrivers")
LOCK = "_snapshotter.lock"
WORKERS = 32            # containerd unpacks layers in parallel; calls mostly wait on disk


def default_socket(driver_name: str) -> Path:
    return SOCKET_DIR / f"snapshotter-{driver_name}.sock"


class HomeTaken(DriverError):
    """Another snapshotter serves this driver home."""


def _hold_home(home: Path) -> int:
    fd = os.open(home / LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise HomeTaken(f"another snapshotter (pid {holder}) serves {home}; stop it first, "
                        "or give this one another --home") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def _clear_stale_socket(path: Path) -> None:
    """A socket file nobody listens on (a killed server's) is removed; a live one refused."""
    if not path.exists() and not path.is_symlink():
        return
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
    except OSError as exc:
        if exc.errno not in (errno.ECONNREFUSED, errno.ENOENT):
            raise
        path.unlink(missing_ok=True)
        return
    finally:
        probe.close()
    raise DriverError(f"{path} is in use by a running server; stop it or choose another "
                      "--socket")


class SnapshotterServer:
    def __init__(self, driver_name: str | None, home: str | os.PathLike,
                 options: Mapping[str, str] | None, socket_path: str | os.PathLike | None,
                 metrics_addr: str | None = None):
        self.driver = registry.load(driver_name, home, options)
        self.metrics = None
        self._home_fd = _hold_home(self.driver.home)
        try:
            self.model = Snapshotter(self.driver)
            removed = self.model.cleanup()
            if removed:
                log.info("removed %d snapshot layer(s) an interrupted call left", removed)
            self.socket_path = Path(socket_path) if socket_path else default_socket(self.driver.name)
            self.socket_path.parent.mkdir(parents=True, exist_ok=True, mode=0o711)
            _clear_stale_socket(self.socket_path)
            self.grpc = grpc.server(futures.ThreadPoolExecutor(max_workers=WORKERS,
                                                               thread_name_prefix="snapshots"))
            service = SnapshotsService(self.model)
            snapshots_pb2_grpc.add_SnapshotsServicer_to_server(service, self.grpc)
            if metrics_addr:
                from graphdrivers.servers.metrics import Metrics, MetricsEndpoint
                metrics = Metrics("snapshotter", lambda: self.driver)
                service.observe = lambda method, outcome, seconds: metrics.observe(
                    method, None if outcome == "OK" else outcome, seconds)
                self.metrics = MetricsEndpoint(metrics_addr, metrics.registry)
            if not self.grpc.add_insecure_port(f"unix:{self.socket_path}"):
                raise DriverError(f"cannot listen on {self.socket_path}")
        except BaseException:
            if self.metrics is not None:
                self.metrics.close()
            os.close(self._home_fd)
            raise

    def start(self) -> None:
        self.grpc.start()
        os.chmod(self.socket_path, 0o660)

    def stop(self, grace: float = 5.0) -> None:
        self.grpc.stop(grace).wait()
        if self.metrics is not None:
            self.metrics.close()
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()
        self.driver.release()       # mounts stay; the next server adopts
        os.close(self._home_fd)


def _setup_logging() -> None:
    """Run as a library call (not from the CLI): stderr, info, debug with GRAPHDRIVERS_DEBUG=1."""
    from graphdrivers import logs
    if not logs.configured():
        debug = os.environ.get("GRAPHDRIVERS_DEBUG", "") not in ("", "0")
        logs.configure("debug" if debug else "info")


def serve(driver_name: str | None, home: str | os.PathLike, options: Mapping[str, str] | None,
          socket_path: str | os.PathLike | None, *, metrics_addr: str | None = None) -> int:
    """Serve until SIGTERM or SIGINT; READY=1 to systemd once a call is answered.
    (No socket activation: grpcio cannot take a listening socket it did not bind.)"""
    from graphdrivers.servers.notify import notify, notify_when_ready
    _setup_logging()
    server = SnapshotterServer(driver_name, home, options, socket_path, metrics_addr)
    stopping = threading.Event()

    def on_signal(signum, frame):
        log.info("signal %d: stopping", signum)
        notify("STOPPING=1")
        stopping.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    server.start()
    log.info("serving containerd snapshots API for the %s driver (%s) on unix://%s",
             server.driver.name, server.driver.home, server.socket_path)
    started = time.monotonic()
    notify_when_ready(lambda: answers(server.socket_path),
                      f"serving the {server.driver.name} driver on {server.socket_path}")
    try:
        while not stopping.wait(1.0):
            pass
    finally:
        server.stop()
        log.info("snapshotter stopped after %.0f s", time.monotonic() - started)
    return 0


def answers(path: str | os.PathLike, timeout: float = 5.0) -> bool:
    """Whether the server answers a Stat on ``path`` (the readiness probe): any reply
    counts, NOT_FOUND for the probe's key included."""
    from graphdrivers.servers.snapshotter import snapshots_pb2 as pb
    with grpc.insecure_channel(f"unix:{os.fspath(path)}") as channel:
        stub = snapshots_pb2_grpc.SnapshotsStub(channel)
        try:
            stub.Stat(pb.StatSnapshotRequest(key="graphdrivers-readiness-probe"), timeout=timeout)
        except grpc.RpcError as exc:
            return exc.code() == grpc.StatusCode.NOT_FOUND
    return True

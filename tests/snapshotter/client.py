"""The snapshotter as a real process on a unix socket, and a small client for it."""
from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc

from graphdrivers.servers.snapshotter import snapshots_pb2 as pb, snapshots_pb2_grpc

pb = pb
# TCG emulation in the device-mapper VM: a server there brings up a thin pool first
SLOW = 5 if os.environ.get("GRAPHDRIVERS_IN_VM") == "1" else 1


class Server:
    def __init__(self, driver: str, home: Path, options: dict, socket: Path, log: Path):
        self.args = [sys.executable, "-m", "graphdrivers.cli", "snapshotter", "--driver", driver,
                     "--home", str(home), "--socket", str(socket)]
        for k, v in options.items():
            self.args += ["--storage-opt", f"{k}={v}"]
        self.socket, self.log = socket, log
        self.proc: subprocess.Popen | None = None

    def start(self, env: dict | None = None, wait: bool = True) -> "Server":
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(self.args, stdout=log, stderr=log,
                                         env={**os.environ, **(env or {})})
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout * SLOW
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"snapshotter exited {self.proc.returncode}: "
                                     f"{self.log.read_text()[-2000:]}")
            if self.socket.exists():
                try:
                    grpc.channel_ready_future(grpc.insecure_channel(
                        f"unix:{self.socket}")).result(timeout=1)
                    return
                except grpc.FutureTimeoutError:
                    pass
            time.sleep(0.05)
        raise AssertionError("the snapshotter socket never accepted a connection")

    def stop(self) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=30 * SLOW)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait()


class Client:
    def __init__(self, socket: Path):
        self.channel = grpc.insecure_channel(f"unix:{socket}")
        self.stub = snapshots_pb2_grpc.SnapshotsStub(self.channel)

    def close(self) -> None:
        self.channel.close()

    def prepare(self, key, parent="", labels=None):
        return list(self.stub.Prepare(pb.PrepareSnapshotRequest(
            key=key, parent=parent, labels=labels or {})).mounts)

    def view(self, key, parent="", labels=None):
        return list(self.stub.View(pb.ViewSnapshotRequest(
            key=key, parent=parent, labels=labels or {})).mounts)

    def mounts(self, key):
        return list(self.stub.Mounts(pb.MountsRequest(key=key)).mounts)

    def commit(self, name, key, labels=None):
        self.stub.Commit(pb.CommitSnapshotRequest(name=name, key=key, labels=labels or {}))

    def remove(self, key):
        self.stub.Remove(pb.RemoveSnapshotRequest(key=key))

    def stat(self, key):
        return self.stub.Stat(pb.StatSnapshotRequest(key=key)).info

    def update(self, info, *paths):
        request = pb.UpdateSnapshotRequest(info=info)
        if paths:
            request.update_mask.paths.extend(paths)
        return self.stub.Update(request).info

    def list(self, *filters):
        return [i for r in self.stub.List(pb.ListSnapshotsRequest(filters=list(filters)))
                for i in r.info]

    def usage(self, key):
        return self.stub.Usage(pb.UsageRequest(key=key))

    def cleanup(self):
        self.stub.Cleanup(pb.CleanupRequest())


@contextlib.contextmanager
def refused(code):
    """The call inside fails with gRPC status ``code`` (and the server stays up)."""
    try:
        yield
    except grpc.RpcError as exc:
        assert exc.code() == code, f"{exc.code()}: {exc.details()}"
        assert exc.details(), "an error without a message"
        return
    raise AssertionError(f"expected {code}, the call succeeded")

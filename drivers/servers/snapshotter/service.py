"""The gRPC servicer of containerd.services.snapshots.v1.Snapshots over the model."""
from __future__ import annotations

import functools
import logging
import time
from typing import Callable, Iterator

import grpc
from google.protobuf import empty_pb2

from graphdrivers.capabilities import MountSpec
from graphdrivers.errors import DriverError
from graphdrivers.store.snapshots import Snapshot
from graphdrivers.servers.snapshotter import mount_pb2, snapshots_pb2 as pb, snapshots_pb2_grpc
from graphdrivers.servers.snapshotter.errors import code_of
from graphdrivers.servers.snapshotter.filters import matcher
from graphdrivers.servers.snapshotter.model import Snapshotter

log = logging.getLogger("graphdrivers.servers.snapshotter")

KIND = {"view": pb.VIEW, "active": pb.ACTIVE, "committed": pb.COMMITTED}
LIST_BATCH = 100        # infos per streamed message (containerd batches likewise)


def _mounts(specs: list[MountSpec]) -> list[mount_pb2.Mount]:
    return [mount_pb2.Mount(type=m.type, source=m.source, options=list(m.options)) for m in specs]


def _info(snap: Snapshot) -> pb.Info:
    info = pb.Info(name=snap.key, parent=snap.parent or "", kind=KIND[snap.kind],
                   labels=dict(snap.labels))
    info.created_at.FromNanoseconds(snap.created)
    info.updated_at.FromNanoseconds(snap.updated)
    return info


def _fields(snap: Snapshot) -> dict[str, str]:
    fields = {"name": snap.key, "parent": snap.parent or "", "kind": snap.kind}
    fields.update({f"labels.{k}": v for k, v in snap.labels.items()})
    return fields


def rpc(method: Callable) -> Callable:
    """Errors to status codes: a DriverError with its message, anything else INTERNAL
    with the exception logged (never a dead server)."""
    @functools.wraps(method)
    def call(self, request, context: grpc.ServicerContext):
        started = time.monotonic()
        outcome = "OK"
        try:
            return method(self, request, context)
        except DriverError as exc:
            outcome = code_of(exc).name
            # "no such key" and "exists already" are answers containerd asks for
            # (Stat before Prepare, unpack races); every other refusal is a warning
            level = logging.INFO if outcome in _ANSWERS else logging.WARNING
            log.log(level, "%s: %s: %s", method.__name__, type(exc).__name__, exc)
            context.abort(code_of(exc), str(exc) or type(exc).__name__)
        except grpc.RpcError:
            outcome = "RPC_ERROR"
            raise
        except Exception as exc:  # noqa: BLE001 - a bug must not take the server down
            if type(exc).__name__ == "_AbortError":   # context.abort's own exception
                raise
            outcome = "INTERNAL"
            log.exception("%s failed", method.__name__)
            context.abort(grpc.StatusCode.INTERNAL, f"{type(exc).__name__}: {exc}")
        finally:
            seconds = time.monotonic() - started
            log.debug("%s %s -> %s in %.1f ms", method.__name__, _key_of(request), outcome,
                      seconds * 1000)
            self.observe(method.__name__, outcome, seconds)
    return call


_ANSWERS = ("NOT_FOUND", "ALREADY_EXISTS")


def _key_of(request) -> str:
    return getattr(request, "key", "") or getattr(request, "name", "") or ""


class SnapshotsService(snapshots_pb2_grpc.SnapshotsServicer):
    def __init__(self, model: Snapshotter):
        self.model = model

    def observe(self, method: str, outcome: str, seconds: float) -> None:
        """Called after every call (metrics hook); nothing by default."""

    @rpc
    def Prepare(self, request, context):
        return pb.PrepareSnapshotResponse(mounts=_mounts(self.model.create(
            "active", request.key, request.parent, request.labels)))

    @rpc
    def View(self, request, context):
        return pb.ViewSnapshotResponse(mounts=_mounts(self.model.create(
            "view", request.key, request.parent, request.labels)))

    @rpc
    def Mounts(self, request, context):
        return pb.MountsResponse(mounts=_mounts(self.model.mounts(request.key)))

    @rpc
    def Commit(self, request, context):
        self.model.commit(request.name, request.key, request.labels)
        return empty_pb2.Empty()

    @rpc
    def Remove(self, request, context):
        self.model.remove(request.key)
        return empty_pb2.Empty()

    @rpc
    def Stat(self, request, context):
        return pb.StatSnapshotResponse(info=_info(self.model.stat(request.key)))

    @rpc
    def Update(self, request, context):
        paths = list(request.update_mask.paths) if request.HasField("update_mask") else []
        snap = self.model.update(request.info.name, request.info.labels, paths)
        return pb.UpdateSnapshotResponse(info=_info(snap))

    def List(self, request, context) -> Iterator[pb.ListSnapshotsResponse]:
        try:
            wanted = matcher(list(request.filters))
            snaps = [s for s in self.model.list() if wanted(_fields(s))]
        except DriverError as exc:
            context.abort(code_of(exc), str(exc))
        for start in range(0, len(snaps), LIST_BATCH):
            yield pb.ListSnapshotsResponse(info=[_info(s) for s in snaps[start:start + LIST_BATCH]])

    @rpc
    def Usage(self, request, context):
        usage = self.model.usage(request.key)
        return pb.UsageResponse(size=usage.size, inodes=usage.inodes)

    @rpc
    def Cleanup(self, request, context):
        removed = self.model.cleanup()
        if removed:
            log.info("cleanup removed %d snapshot layer(s) without a record", removed)
        return empty_pb2.Empty()

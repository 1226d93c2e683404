"""containerd 1.6 storing its snapshots through `graphdrivers snapshotter`, for
every driver that can run here (devicemapper in the VM: scripts/test), compared
with containerd's built-in snapshotter of the same storage model on the same
image, in the same containerd."""
from __future__ import annotations

import signal

import grpc

from containerd import cycle, tree
from containerd.engine import snapshot_list
from graphdrivers.servers.snapshotter import snapshots_pb2 as pb
from graphdrivers.servers.snapshotter import snapshots_pb2_grpc


def backend_names(sock) -> set[str]:
    """The snapshot keys the snapshotter itself holds, as ctr shows them:
    containerd names them ``<namespace>/<n>/<key>``."""
    with grpc.insecure_channel(f"unix:{sock}") as channel:
        stub = snapshots_pb2_grpc.SnapshotsStub(channel)
        return {info.name.split("/", 2)[2] for reply in stub.List(pb.ListSnapshotsRequest())
                for info in reply.info}


def test_cycle_matches_builtin_across_restarts(gd_stack, driver_name, e2e_image):
    """The whole cycle on the built-in reference, then on graphdrivers with
    containerd and the snapshotter both restarted after the commit: every
    observation equal, and the snapshotter's own records equal containerd's."""
    engine, snap = gd_stack.containerd, gd_stack.snapshotter
    reference = cycle.run_cycle(engine, cycle.REFERENCE[driver_name], e2e_image)
    engine.ctr("image", "rm", e2e_image.ref)
    got = cycle.run_cycle(engine, snap.name, e2e_image, restart=gd_stack.restart)
    assert cycle.fixed_answer_problems(got) == []
    assert got.errors == cycle.REFUSALS
    assert cycle.compare(reference, got) == []
    # containerd removes a snapshot from its backend in a collection after the rm,
    # not at it: run one to its end, then the two lists must be equal
    engine.collect_garbage()
    listed = {row[0] for row in snapshot_list(engine, snap.name)}
    assert backend_names(snap.sock) == listed


def test_killed_engine_and_snapshotter_lose_nothing(gd_stack, e2e_image):
    """SIGKILL to containerd and to the snapshotter after a commit: afterwards
    ls, the committed layer's files and a container's view are as before, and
    the cycle goes on (label, usage, rm)."""
    engine, snap = gd_stack.containerd, gd_stack.snapshotter
    before = cycle.Observation()
    cycle.import_and_check(engine, snap.name, e2e_image, before)
    cycle.change_and_commit(engine, snap.name, e2e_image, before)
    gd_stack.restart(sig=signal.SIGKILL)
    assert snapshot_list(engine, snap.name) == before.ls["committed"]
    assert tree.snapshot_tree(engine, snap.name, "v5") == before.tree5
    cycle.view(engine, snap.name, "image-view", e2e_image.chain_ids[-1])
    assert tree.snapshot_tree(engine, snap.name, "image-view") == before.image_tree
    assert engine.run(snap.name, e2e_image.ref, "after-kill", cycle.image.CHECK) == \
        cycle.image.CHECK_OUT
    after = cycle.Observation()
    cycle.labels_and_info(engine, snap.name, after)
    cycle.usage_facts(engine, snap.name, after)
    assert all(after.usage.values()), after.usage
    cycle.ctr_snap(engine, snap.name, "rm", "image-view")
    cycle.refusals_and_removal(engine, snap.name, after)
    assert after.ls["removed"] == before.ls["imported"]


DEPTH = 128      # the snapshotter conformance suite's deep chain; overlay2 fits 144 (docs)


def test_deep_image_unpacks_and_runs(gd_stack, tmp_path):
    """A 128-layer image: containerd unpacks each layer on the one before
    (Prepare on a chain as deep as the image) and mounts all of them for a
    container, which sees the first layer's file and every later one's."""
    from containerd import image
    layers = [image.base_layer()] + [image.Layer().dir("deep").file(f"deep/{i:03d}", f"{i}\n")
                                     for i in range(1, DEPTH)]
    img = image.docker_save(tmp_path / "deep.tar", built=layers, ref="localhost/deep:1")
    engine, name = gd_stack.containerd, gd_stack.snapshotter.name
    engine.ctr("image", "import", "--snapshotter", name, str(img.path), timeout=600)
    out = engine.run(name, img.ref, "deep", "ls /deep | wc -l; cat /deep/001 /deep/127; "
                     "cat /etc/motd")
    assert out == f"{DEPTH - 1}\n1\n127\nmotd v1\n"
    assert len(snapshot_list(engine, name)) == DEPTH

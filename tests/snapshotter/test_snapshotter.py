"""Conformance of `graphdrivers snapshotter` over containerd's gRPC API, every driver.

Modelled on what containerd's snapshotter test suite checks (snapshots/testsuite):
the server runs as a real process on a unix socket, and every mount it returns is
performed here with mount(2) as containerd performs it (mounter.py).
"""
from __future__ import annotations

import concurrent.futures
import contextlib
import errno
import os
import time
from pathlib import Path

import grpc
import pytest

import graphdrivers
from graphdrivers.store.snapshots import SnapshotStore

from snapshotter.client import Client, pb, refused
from snapshotter.mounter import mount_all, unmount

Code = grpc.StatusCode


@contextlib.contextmanager
def mounted(env, mounts, name="m"):
    target = env["mnt"] / name
    target.mkdir(exist_ok=True)
    mount_all(mounts, str(target))
    try:
        yield target
    finally:
        unmount(str(target))


def tree(root: Path) -> dict[str, str]:
    """Path -> content (files) or "dir"/"link:<target>", for comparing snapshots."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            rel = str(path.relative_to(root))
            if rel == "lost+found":
                continue
            if path.is_symlink():
                out[rel] = "link:" + os.readlink(path)
            elif path.is_dir():
                out[rel] = "dir"
            else:
                out[rel] = path.read_text()
    return out


def leftovers(env) -> tuple[set[str], set[str]]:
    """(snapshot layers without a record, records without a layer)."""
    driver = graphdrivers.load(env["driver"], env["home"], env["options"])
    try:
        layers = {l for l in driver.layers() if l.startswith("snap-")}
        owned = SnapshotStore(driver.home).layers()
        return layers - owned, owned - layers
    finally:
        driver.release()


def prepare_write(client, env, key, parent, files: dict[str, str], remove=()):
    with mounted(env, client.prepare(key, parent), key.replace("/", "_")) as root:
        for name in remove:
            path = root / name
            if path.is_dir() and not path.is_symlink():
                import shutil
                shutil.rmtree(path)
            else:
                path.unlink()
        for name, text in files.items():
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            (root / name).write_text(text)


def test_basic_lifecycle(client, snap_env):
    prepare_write(client, snap_env, "ns/1/a", "", {"foo": "foo\n", "a/b/c/keep": "x"})
    info = client.stat("ns/1/a")
    assert (info.kind, info.parent) == (pb.ACTIVE, "")
    client.commit("base", "ns/1/a")
    with refused(Code.NOT_FOUND):
        client.stat("ns/1/a")
    assert client.stat("base").kind == pb.COMMITTED
    prepare_write(client, snap_env, "ns/2/b", "base", {"bar": "bar\n", "foo": "bar\n"},
                  remove=["a/b"])
    assert client.stat("ns/2/b").parent == "base"
    client.commit("next", "ns/2/b")
    assert client.stat("next").parent == "base"
    with mounted(snap_env, client.view("v", "next")) as root:
        assert tree(root) == {"foo": "bar\n", "bar": "bar\n", "a": "dir"}
        assert oct(root.stat().st_mode & 0o777) == "0o755"
    with mounted(snap_env, client.view("v0", "base"), "m0") as root:
        assert tree(root) == {"foo": "foo\n", "a": "dir", "a/b": "dir", "a/b/c": "dir",
                              "a/b/c/keep": "x"}
    names = {i.name: i for i in client.list()}
    assert set(names) == {"base", "next", "v", "v0"}
    assert names["next"] == client.stat("next")
    client.remove("v")
    client.remove("v0")
    with refused(Code.FAILED_PRECONDITION):
        client.remove("base")
    client.remove("next")
    client.remove("base")
    assert client.list() == []
    assert leftovers(snap_env) == (set(), set())


def test_root_of_a_new_snapshot_is_0755(client, snap_env):
    with mounted(snap_env, client.prepare("p")) as root:
        assert root.stat().st_mode & 0o777 == 0o755


def test_prepare_or_view_of_a_taken_key(client):
    client.prepare("tmp")
    client.commit("A", "tmp")
    client.prepare("new", "A")
    with refused(Code.ALREADY_EXISTS):
        client.view("new", "A")
    with refused(Code.ALREADY_EXISTS):
        client.prepare("new", "A")
    client.view("v", "A")
    with refused(Code.ALREADY_EXISTS):
        client.view("v", "A")
    with refused(Code.ALREADY_EXISTS):
        client.prepare("x")
        client.commit("A", "x")       # a committed name is taken too
    assert client.stat("x").kind == pb.ACTIVE     # the refused commit changed nothing


def test_deleted_files_in_a_child(client, snap_env):
    prepare_write(client, snap_env, "l1", "", {"foo": "foo\n", "foobar": "foobar\n",
                                                "d/inner": "i"})
    client.commit("c1", "l1")
    prepare_write(client, snap_env, "l2", "c1", {}, remove=["foobar", "d"])
    client.commit("c2", "l2")
    prepare_write(client, snap_env, "l3", "c2", {})
    client.commit("c3", "l3")
    with mounted(snap_env, client.view("v", "c3")) as root:
        assert tree(root) == {"foo": "foo\n"}


def test_committed_views_stay_as_committed(client, snap_env):
    """A commit is a rename of the same data: a view shows exactly what was written,
    later children do not change it, and a view is read-only."""
    prepare_write(client, snap_env, "a", "", {"f": "1", "dir/g": "2"})
    client.commit("A", "a")
    prepare_write(client, snap_env, "b", "A", {"f": "changed", "h": "3"}, remove=["dir"])
    with mounted(snap_env, client.view("va", "A")) as root:
        assert tree(root) == {"f": "1", "dir": "dir", "dir/g": "2"}
        with pytest.raises(OSError) as err:
            (root / "new").write_text("x")
        assert err.value.errno == errno.EROFS
    mounts = client.mounts("va")
    assert mounts == client.mounts("va")           # Mounts repeats what View said
    with refused(Code.FAILED_PRECONDITION):
        client.mounts("A")                        # a committed snapshot is not mountable


def test_remove_with_children(client):
    client.prepare("t")
    client.commit("p", "t")
    client.prepare("child", "p")
    client.view("view", "p")
    with refused(Code.FAILED_PRECONDITION):
        client.remove("p")
    assert client.stat("p").kind == pb.COMMITTED
    client.remove("child")
    with refused(Code.FAILED_PRECONDITION):
        client.remove("p")
    client.remove("view")
    client.remove("p")
    with refused(Code.NOT_FOUND):
        client.remove("p")
    # containerd's checkRemove: keys and names can be reused
    client.prepare("t")
    client.commit("p", "t")
    client.prepare("reuse", "p")
    client.remove("reuse")
    client.view("reuse", "p")
    client.remove("reuse")


def test_update_labels(client):
    before = time.time_ns()
    client.prepare("a", labels={"l0": "v0"})
    info = client.stat("a")
    assert info.created_at == info.updated_at
    assert before <= info.created_at.ToNanoseconds() <= time.time_ns()
    info.labels.clear()
    info.labels.update({"l1": "v1", "l2": "v2", "l3": "v3"})
    info.parent = "doesnotexist"
    new = client.update(info)
    assert dict(new.labels) == {"l1": "v1", "l2": "v2", "l3": "v3"}
    assert new.parent == "" and new.created_at == info.created_at
    assert new.updated_at.ToNanoseconds() > new.created_at.ToNanoseconds()
    info.labels.clear()
    info.labels.update({"l1": "updated", "l4": "v4"})
    new = client.update(info, "labels.l1", "labels.l2")
    assert dict(new.labels) == {"l1": "updated", "l3": "v3"}
    info.labels.clear()
    info.labels.update({"l4": "v4"})
    assert dict(client.update(info, "labels").labels) == {"l4": "v4"}
    with refused(Code.INVALID_ARGUMENT):
        client.update(info, "parent")
    assert dict(client.stat("a").labels) == {"l4": "v4"}
    client.commit("c", "a", labels={"k": "v"})
    assert dict(client.stat("c").labels) == {"k": "v"}


def test_list_filters(client):
    root = {"containerd.io/gc.root": "check-walk"}
    client.prepare("a-np", labels=root)
    client.prepare("p-tmp", labels=root)
    client.commit("p", "p-tmp", labels=root)
    client.prepare("a", "p", labels=root)
    client.view("v", "p", labels=root)
    client.prepare("p-wl-tmp", labels=root)
    client.commit("p-wl", "p-wl-tmp", labels={"l": "1", **root})
    client.prepare("a-wl", "p-wl", labels={"l": "2", **root})
    client.view("v-wl", "p-wl", labels={"l": "3", **root})
    client.prepare("a-np-wl", labels={"l": "2", **root})
    cases = [
        (['labels."containerd.io/gc.root"==check-walk'],
         ["a-np", "p", "a", "v", "p-wl", "a-wl", "v-wl", "a-np-wl"]),
        (['kind==active,labels."containerd.io/gc.root"==check-walk'], ["a-np", "a", "a-wl", "a-np-wl"]),
        (['kind==view,labels."containerd.io/gc.root"==check-walk'], ["v", "v-wl"]),
        (['kind==committed,labels."containerd.io/gc.root"==check-walk'], ["p", "p-wl"]),
        (["name==p", "name==a-np-wl"], ["p", "a-np-wl"]),
        (["name==a-wl,labels.l"], ["a-wl"]),
        (["parent==p"], ["a", "v"]),
        (['parent!="",labels."containerd.io/gc.root"==check-walk'], ["a", "v", "a-wl", "v-wl"]),
        (["labels.l"], ["p-wl", "a-wl", "v-wl", "a-np-wl"]),
        (["labels.l==2"], ["a-wl", "a-np-wl"]),
    ]
    for filters, expected in cases:
        assert sorted(i.name for i in client.list(*filters)) == sorted(expected), filters


def test_usage_counts_the_snapshot_own_data(client, snap_env):
    big = 1 << 20
    with mounted(snap_env, client.prepare("a")) as root:
        (root / "big").write_bytes(os.urandom(big))
        (root / "d").mkdir()
        (root / "d" / "small").write_text("x")
        os.sync()
        usage = client.usage("a")
    assert usage.size >= big and usage.inodes >= 3
    client.commit("A", "a")
    assert client.usage("A").size >= big
    with mounted(snap_env, client.prepare("b", "A")) as root:
        (root / "other").write_bytes(os.urandom(4096))
        os.sync()
    child = client.usage("b")
    assert 4096 <= child.size < big or snap_env["driver"] == "vfs"   # vfs copies its parent
    assert child.inodes >= 1
    with refused(Code.NOT_FOUND):
        client.usage("nothing")


@pytest.mark.slow
def test_128_deep_chain_mounts_as_containerd_mounts_it(client, snap_env):
    flat: dict[str, str] = {}
    parent = ""
    for i in range(128):
        key = f"prepare-{i}"
        with mounted(snap_env, client.prepare(key, parent)) as root:
            assert tree(root) == flat, f"layer {i} does not start as its parent"
            (root / "overwriteme").write_text(f"{i} WAS HERE\n")
            (root / "ADDHERE").mkdir(exist_ok=True)
            (root / "ADDHERE" / f"file-{i}").write_text("same\n")
            if (root / "ONLYME").exists():
                import shutil
                shutil.rmtree(root / "ONLYME")
            (root / "ONLYME").mkdir()
            (root / "ONLYME" / f"file-{i}").write_text("only me\n")
            flat = tree(root)
        parent = f"committed-{i}"
        client.commit(parent, key)
    with mounted(snap_env, client.view("fullview", parent)) as root:
        assert tree(root) == flat
        assert len(os.listdir(root / "ADDHERE")) == 128
    with mounted(snap_env, client.prepare("top", parent), "top") as root:
        assert tree(root) == flat


def test_concurrent_prepare_commit_remove(client, snap_env):
    client.prepare("base-tmp")
    client.commit("base", "base-tmp")

    def cycle(i: int) -> str:
        c = Client(snap_env["server"].socket)
        try:
            c.prepare(f"active-{i}", "base")
            c.commit(f"done-{i}", f"active-{i}")
            if i % 2:
                c.remove(f"done-{i}")
            return "ok"
        finally:
            c.close()

    def contender(i: int) -> str:      # the same key from many callers: one wins
        c = Client(snap_env["server"].socket)
        try:
            c.prepare("contended", "base")
            return "won"
        except grpc.RpcError as exc:
            assert exc.code() == Code.ALREADY_EXISTS, exc.details()
            return "lost"
        finally:
            c.close()

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        results = list(pool.map(cycle, range(50)))
        contenders = list(pool.map(contender, range(10)))
    assert results == ["ok"] * 50
    assert contenders.count("won") == 1
    names = {i.name for i in client.list()}
    assert names == {"base", "contended"} | {f"done-{i}" for i in range(0, 50, 2)}
    assert leftovers(snap_env) == (set(), set())


def test_malformed_requests_are_invalid_argument(client, server):
    stub = client.stub
    with refused(Code.INVALID_ARGUMENT):
        stub.Prepare(pb.PrepareSnapshotRequest(key=""))
    with refused(Code.INVALID_ARGUMENT):
        stub.Commit(pb.CommitSnapshotRequest(name="", key="x"))
    with refused(Code.INVALID_ARGUMENT):
        stub.Stat(pb.StatSnapshotRequest())
    with refused(Code.INVALID_ARGUMENT):
        client.list("labels.==")
    with refused(Code.INVALID_ARGUMENT):
        client.list("bogus==1")
    with refused(Code.INVALID_ARGUMENT):
        client.prepare("k" * 5000)
    with refused(Code.INVALID_ARGUMENT):
        client.prepare("y", labels={"": "v"})
    with refused(Code.NOT_FOUND):
        client.prepare("z", "no-such-parent")
    client.prepare("act")
    with refused(Code.FAILED_PRECONDITION):
        client.prepare("z", "act")                 # a parent must be committed
    client.view("vw")
    with refused(Code.FAILED_PRECONDITION):
        client.commit("c", "vw")                   # only an active snapshot commits
    # garbage bytes on the wire: grpc refuses them, the server lives on
    raw = client.channel.unary_unary("/containerd.services.snapshots.v1.Snapshots/Prepare")
    with pytest.raises(grpc.RpcError):
        raw(b"\xff\xff\xff\xff")
    assert server.proc.poll() is None
    assert {i.name for i in client.list()} == {"act", "vw"}


def test_restart_keeps_everything(snap_env, server, client):
    prepare_write(client, snap_env, "a", "", {"f": "1"})
    client.commit("A", "a", labels={"k": "v"})
    prepare_write(client, snap_env, "b", "A", {"g": "2"})
    before = {i.name: i for i in client.list()}
    assert server.stop() == 0
    assert not server.socket.exists(), "SIGTERM must remove the socket"
    server.start()
    after = Client(server.socket)
    try:
        assert {i.name: i for i in after.list()} == before
        with mounted(snap_env, after.mounts("b")) as root:
            assert tree(root) == {"f": "1", "g": "2"}
    finally:
        after.close()


def test_second_server_on_a_home_is_refused(snap_env, server, tmp_path):
    from snapshotter.client import Server
    other = Server(snap_env["driver"], snap_env["home"], snap_env["options"],
                   tmp_path / "run" / "other.sock", tmp_path / "other.log")
    other.start(wait=False)
    assert other.proc.wait(timeout=60) == 1
    assert "another snapshotter" in (tmp_path / "other.log").read_text()


@pytest.mark.parametrize("fault", ["snapshotter.prepare.after_layer",
                                   "snapshotter.prepare.after_record",
                                   "snapshotter.commit.before_record",
                                   "snapshotter.commit.after_record",
                                   "snapshotter.remove.after_record"])
def test_sigkill_mid_call_leaves_complete_or_gone(snap_env, fault):
    server = snap_env["server"].start(env={"GRAPHDRIVERS_FAULT": fault})
    client = Client(server.socket)
    op = fault.split(".")[1]
    try:
        if op != "prepare":
            client.prepare("a")
            if op == "remove":
                client.commit("base", "a")
        with pytest.raises(grpc.RpcError) as err:
            if op == "prepare":
                client.prepare("a")
            elif op == "commit":
                client.commit("base", "a")
            else:
                client.remove("base")
        assert err.value.code() == Code.UNAVAILABLE
    finally:
        client.close()
    server.proc.wait(timeout=30)
    server.start(env={"GRAPHDRIVERS_FAULT": ""})
    client = Client(server.socket)
    try:
        names = {i.name: i.kind for i in client.list()}
        expected = {
            "snapshotter.prepare.after_layer": {},
            "snapshotter.prepare.after_record": {"a": pb.ACTIVE},
            "snapshotter.commit.before_record": {"a": pb.ACTIVE},
            "snapshotter.commit.after_record": {"base": pb.COMMITTED},
            "snapshotter.remove.after_record": {},
        }[fault]
        assert names == expected
        for name, kind in names.items():       # what is there works
            if kind == pb.COMMITTED:
                client.prepare("child", name)
            else:
                with mounted(snap_env, client.mounts(name)) as root:
                    (root / "file").write_text("ok")
        assert leftovers(snap_env) == (set(), set())
    finally:
        client.close()

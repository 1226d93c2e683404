"""Concurrency (issue 9, part 3): threads on one driver object, processes on one
home, and the plugin server under 100 concurrent requests.

What the drivers promise: a driver object is safe to share between threads
(per-id locks, a locked refcounter). Several processes (or driver instances) on
one home share the mount holds and id locks of graphdrivers.holds: a layer that
a live process holds mounted is neither removed nor unmounted by another, and a
dead process's holds are reclaimed. Tested here: disjoint layers over shared
parents from several processes, and removal against another holder.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import graphdrivers
from graphdrivers.kernel.mount import mounts_under, unmount_all_under

from . import workload

THREADS, PROCESSES = 8, 4
N_CI = 100
# the 1,000 operations per worker: GRAPHDRIVERS_CONCURRENCY_OPS=1000 (about 6 min
# for the three host drivers on 2 cores); the slow suite runs 300
N_SLOW = int(os.environ.get("GRAPHDRIVERS_CONCURRENCY_OPS", "300"))
TIMEOUT = 300
CHILD = str(Path(__file__).with_name("concurrent_child.py"))


def _threads(driver, home, n: int) -> None:
    workload.make_parents(driver)
    models: dict[int, dict] = {}
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            models[i] = workload.run(driver, f"t{i}", n, seed=i)
        except BaseException as exc:              # noqa: BLE001  (reported below)
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,), daemon=True) for i in range(THREADS)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + TIMEOUT
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    assert not any(t.is_alive() for t in threads), f"deadlock: threads still running after {TIMEOUT} s"
    if errors:
        raise errors[0]
    for model in models.values():
        workload.check(driver, model)
    # refcounts exact: nothing is held after every mount was paired with an unmount
    refs = getattr(driver, "_refs", None)
    if refs is not None:
        assert refs.paths() == [], f"references still held: {refs.paths()}"
    assert mounts_under(home) == [], "a mount leaked"
    expected = set(workload.PARENTS) | {layer for m in models.values() for layer in m}
    assert set(driver.layers()) == expected
    for model in models.values():
        for layer in model:
            driver.remove(layer)


def test_threads(driver, home_and_options):
    _threads(driver, home_and_options[0], N_CI)


@pytest.mark.slow
def test_threads_long(driver, home_and_options):
    _threads(driver, home_and_options[0], N_SLOW)


def _processes(driver_name, driver, home, options, n: int, tmp_path) -> None:
    import base64
    workload.make_parents(driver)
    sync = tmp_path / "sync"
    sync.mkdir()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(Path(__file__).parent)] + [p for p in [os.environ.get("PYTHONPATH")] if p]))
    tags = [f"proc{i}" for i in range(PROCESSES)]
    children: list[subprocess.Popen] = []
    try:
        def wait(suffix: str) -> None:
            deadline = time.monotonic() + TIMEOUT
            while not all((sync / f"{t}.{suffix}").exists() for t in tags):
                failed = [c for c in children if c.poll() is not None]
                assert not failed, "a worker process died:\n" + failed[0].stderr.read()
                assert time.monotonic() < deadline, f"deadlock: workers not {suffix} in {TIMEOUT} s"
                time.sleep(0.05)
        # all load() at once: a load recovers only dead processes' staging dirs
        for tag in tags:
            children.append(subprocess.Popen(
                [sys.executable, CHILD, driver_name, str(home), json.dumps(options), tag, str(n),
                 str(sync)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
        wait("ready")
        (sync / "go").touch()
        wait("done")
        (sync / "finish").touch()
        for child in children:
            _, err = child.communicate(timeout=TIMEOUT)
            assert child.returncode == 0, err
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
                child.wait()
    leaked = mounts_under(home)
    unmount_all_under(home)
    assert leaked == [], "a mount leaked"
    models = {}
    for tag in tags:
        raw = json.loads((sync / f"{tag}.json").read_text())
        models.update({layer: (parent, {k: base64.b64decode(v) for k, v in files.items()})
                       for layer, (parent, files) in raw.items()})
    # a fresh load sees exactly the layers the workers left, with their content
    fresh = graphdrivers.load(driver_name, home, options)
    try:
        assert set(fresh.layers()) == set(workload.PARENTS) | set(models)
        workload.check(fresh, models)
        for layer in models:
            fresh.remove(layer)
    finally:
        fresh.cleanup()
    assert mounts_under(home) == []


def test_processes(driver_name, driver, home_and_options, tmp_path):
    home, options = home_and_options
    _processes(driver_name, driver, home, options, N_CI, tmp_path)


@pytest.mark.slow
def test_processes_long(driver_name, driver, home_and_options, tmp_path):
    home, options = home_and_options
    _processes(driver_name, driver, home, options, N_SLOW, tmp_path)


# -- two driver objects on one home stand for two processes ------------------------

def test_cleanup_spares_another_holder_layer(driver_name, driver, home_and_options):
    home, options = home_and_options
    workload.make_parents(driver)
    other = graphdrivers.load(driver_name, home, options)
    root = Path(driver.mount("p2"))
    try:
        other.mount("p2")
        other.unmount("p2")
        other.cleanup()              # the other process ends
        assert workload.tree_files(root) == workload.parent_files("p2")
    finally:
        driver.unmount("p2")


def test_remove_refused_while_another_instance_holds_the_mount(driver_name, driver,
                                                               home_and_options):
    home, options = home_and_options
    driver.create("busy", rw=True)
    driver.mount("busy")
    other = graphdrivers.load(driver_name, home, options)
    try:
        with pytest.raises(graphdrivers.errors.LayerInUse, match="mounted by process"):
            other.remove("busy")
        other.mount("busy")
        driver.unmount("busy")          # the other instance still uses it: stays mounted
        assert (other.mount("busy") / ".").is_dir()
        other.unmount("busy")
    finally:
        other.cleanup()
    driver.remove("busy")
    assert not driver.exists("busy")


def test_children_made_or_removed_by_another_instance(driver_name, driver, home_and_options):
    """The children rule holds across processes: a child made by another instance pins
    its parent here, and one removed there no longer does."""
    home, options = home_and_options
    driver.create("parent")
    driver.create("known", "parent")
    other = graphdrivers.load(driver_name, home, options)
    try:
        other.create("child", "parent")
        other.remove("known")
        with pytest.raises(graphdrivers.errors.LayerInUse, match="child") as refused:
            driver.remove("parent")
        assert "known" not in str(refused.value)
        other.remove("child")
    finally:
        other.cleanup()
    driver.remove("parent")
    assert not driver.exists("parent")


HOLDER = r"""
import json, sys, time
import graphdrivers
home, options, name = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]
driver = graphdrivers.load(name, home, options)
root = driver.mount("busy")
(root / "from-holder").write_text("held")
print("mounted", flush=True)
time.sleep(600)
"""


def test_remove_refused_while_another_process_holds_the_mount(driver_name, driver,
                                                              home_and_options):
    """A live process's mount pins the layer; once it is killed, its hold is reclaimed."""
    home, options = home_and_options
    driver.create("busy", rw=True)
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(home), json.dumps(options),
                               driver_name], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "mounted"
        with pytest.raises(graphdrivers.errors.LayerInUse, match=str(holder.pid)):
            driver.remove("busy")
        assert driver.exists("busy")
        root = driver.mount("busy")     # shares the holder's mount, never stacks a second one
        assert (root / "from-holder").read_text() == "held"
        driver.unmount("busy")
        assert (root / "from-holder").read_text() == "held"   # still the holder's
    finally:
        holder.kill()
        holder.wait()
    driver.remove("busy")               # a dead process's hold does not pin the layer
    assert not driver.exists("busy")
    assert mounts_under(home) == []


# -- the plugin server -------------------------------------------------------------
REQUESTS = 100


def _connect_patiently(c) -> None:
    deadline = time.monotonic() + 30
    while True:
        try:
            c.conn.connect()
            return
        except BlockingIOError:              # the listen backlog is full: try again
            if time.monotonic() > deadline:
                raise
            time.sleep(0.01)


@pytest.mark.parametrize("connect", [
    "before",
    "at_once"])
def test_plugin_server_100_concurrent_clients(tmp_path, connect):
    """100 clients at once, each on its own connection, each a full layer cycle
    (CreateReadWrite, Get, ApplyDiff, Exists, Diff, Put, Remove) on one shared
    parent: every call answers 200 with the right result, nothing is left.
    ``before``: the connections are made (retrying while the backlog is full)
    before the 100 requests start together; ``at_once``: connects in the burst."""
    import io
    import tarfile

    from plugin.plugin_client import Client, running

    from graphdrivers.servers.docker_plugin import PluginServer

    sock, home = tmp_path / "run" / "gd.sock", tmp_path / "data" / "graphdrivers-vfs"
    server = PluginServer("vfs", None, {}, sock, state_dir=tmp_path / "state")
    with running(server):
        admin = Client(sock)
        admin.ok("Plugin.Activate")
        admin.ok("GraphDriver.Init", {"Home": str(home), "Opts": None, "UIDMaps": None,
                                      "GIDMaps": None})
        admin.ok("GraphDriver.Create", {"ID": "shared", "Parent": ""})
        start = threading.Barrier(REQUESTS, timeout=TIMEOUT)
        errors: list[str] = []

        def cycle(i: int) -> None:
            layer, data = f"c{i}", f"client {i}\n".encode()
            buf = io.BytesIO()
            with tarfile.open(fileobj=buf, mode="w") as tar:
                info = tarfile.TarInfo(f"file{i}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            c = Client(sock)
            try:
                if connect == "before":
                    _connect_patiently(c)
                start.wait()
                c.ok("GraphDriver.CreateReadWrite", {"ID": layer, "Parent": "shared"})
                root = Path(c.ok("GraphDriver.Get", {"ID": layer})["Dir"])
                status, reply = c.apply_diff(layer, "shared", [buf.getvalue()])
                assert status == 200 and reply.get("Size") == len(data), (status, reply)
                assert (root / f"file{i}").read_bytes() == data
                assert c.ok("GraphDriver.Exists", {"ID": layer})["Exists"] is True
                response = c.diff(layer, "shared")
                assert response.status == 200
                with tarfile.open(fileobj=io.BytesIO(response.read()), mode="r") as tar:
                    names = [m.name for m in tar if m.isfile()]
                assert names == [f"file{i}"], names
                c.ok("GraphDriver.Put", {"ID": layer})
                c.ok("GraphDriver.Remove", {"ID": layer})
                assert c.ok("GraphDriver.Exists", {"ID": layer})["Exists"] is False
            except BaseException as exc:          # noqa: BLE001  (collected below)
                errors.append(f"client {i}: {type(exc).__name__}: {exc}")
            finally:
                c.close()

        threads = [threading.Thread(target=cycle, args=(i,), daemon=True) for i in range(REQUESTS)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + TIMEOUT
        for t in threads:
            t.join(max(0.0, deadline - time.monotonic()))
        assert not any(t.is_alive() for t in threads), "the plugin server hung"
        assert not errors, "\n".join(errors[:5])
        admin.ok("GraphDriver.Remove", {"ID": "shared"})
        assert os.listdir(home / "vfs" / "dir") == []
        admin.ok("GraphDriver.Cleanup")
        admin.close()

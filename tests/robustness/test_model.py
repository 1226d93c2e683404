"""A model-checked mix of processes on one home (issue 17, part 4).

A hypothesis state machine drives three users of one driver home at once: the
library in this process, a plugin server in another process (`graphdrivers
serve`, spoken to over its socket the way dockerd does) and the command line
(a new process per command). Each step is a random create, apply, mount,
write, unmount, remove or diff by one of them; its answer is compared with a
small model of what the home must hold, and after every step the invariants
are checked from outside: the library lists exactly the model's layers, the
holds say who has each layer mounted (this process, the server's pid, nobody),
and the kernel has exactly the mounts the model says (nothing leaked).

CI runs GRAPHDRIVERS_MODEL_STEPS (default 200) steps per host driver; the
campaign of the issue (20,000 per driver) is GRAPHDRIVERS_MODEL_STEPS=20000.
"""
from __future__ import annotations

import io
import itertools
import json
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from graphdrivers.errors import DriverError
from graphdrivers.kernel.mount import mounts_under

from plugin.plugin_client import Client

STEPS = int(os.environ.get("GRAPHDRIVERS_MODEL_STEPS", "200"))
STEPS_PER_RUN = 50
MAX_LAYERS = 10
NAMES = [f"m/f{i}" for i in range(6)]
CLI = [sys.executable, "-m", "graphdrivers.cli"]
HOST_DRIVERS = ("vfs", "overlay2", "btrfs")


class Layer:
    def __init__(self, parent: str | None, rw: bool):
        self.parent, self.rw = parent, rw
        self.own: dict[str, bytes | None] = {}      # None: deleted here
        self.applied = False
        self.mounts = {"lib": 0, "srv": 0}


class Users:
    """The three users of the home, each answering (ok, value-or-error-text)."""

    def __init__(self, driver, home: Path, name: str, socket: Path):
        self.lib, self.home, self.name = driver, home, name
        self.server = subprocess.Popen(
            CLI + ["serve", "--driver", name, "--home", str(home), "--socket", str(socket)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 60
        while not socket.exists():
            assert self.server.poll() is None, self.server.stderr.read().decode()
            assert time.monotonic() < deadline, "the plugin server did not start"
            time.sleep(0.05)
        self.client = Client(socket)
        assert self.client.ok("Plugin.Activate") == {"Implements": ["GraphDriver"]}
        self.client.ok("GraphDriver.Init", {"Home": str(home), "Opts": None,
                                            "UIDMaps": None, "GIDMaps": None})

    def reset(self) -> None:
        """Start a run on an empty home with no holds, even after a failed run (whose
        state would make hypothesis's replay of it differ)."""
        if self.lib.layers():
            for user in ("srv", "lib"):
                for info in self.lib.infos():
                    while self.call(user, "unmount", id=info["id"])[0] and \
                            self.lib.info(info["id"])["mounted_by"]:
                        pass
            while layers := self.lib.layers():
                for id in layers:
                    self.call("lib", "remove", id=id)
                if self.lib.layers() == layers:
                    raise AssertionError(f"cannot empty the home: {self.lib.infos()}")

    def close(self) -> None:
        self.client.close()
        self.server.terminate()
        self.server.wait(30)

    # -- one call per user and operation -----------------------------------------
    def call(self, user: str, op: str, **kw):
        try:
            return True, getattr(self, f"_{user}_{op}")(**kw)
        except _Refused as exc:
            return False, str(exc)
        except DriverError as exc:
            return False, str(exc)

    def _lib_create(self, id, parent, rw):
        self.lib.create(id, parent, rw=rw)

    def _lib_remove(self, id):
        self.lib.remove(id)

    def _lib_mount(self, id):
        return str(self.lib.mount(id))

    def _lib_unmount(self, id):
        self.lib.unmount(id)

    def _lib_apply(self, id, parent, tar):
        self.lib.apply_diff(id, parent, io.BytesIO(tar))

    def _lib_diff(self, id, parent):
        stream = self.lib.diff(id, parent)
        try:
            return stream.read()
        finally:
            stream.close()

    def _srv(self, method: str, args: dict) -> dict:
        status, reply = self.client.call(method, args)
        if status != 200 or "Err" in reply:
            raise _Refused(reply.get("Err") or f"HTTP {status}")
        return reply

    def _srv_create(self, id, parent, rw):
        self._srv("GraphDriver.CreateReadWrite" if rw else "GraphDriver.Create",
                  {"ID": id, "Parent": parent or "", "MountLabel": "", "StorageOpt": {}})

    def _srv_remove(self, id):
        self._srv("GraphDriver.Remove", {"ID": id})

    def _srv_mount(self, id):
        return self._srv("GraphDriver.Get", {"ID": id, "MountLabel": ""})["Dir"]

    def _srv_unmount(self, id):
        self._srv("GraphDriver.Put", {"ID": id})

    def _srv_apply(self, id, parent, tar):
        status, reply = self.client.apply_diff(id, parent, [tar])
        if status != 200 or "Err" in reply:
            raise _Refused(reply.get("Err") or f"HTTP {status}")

    def _srv_diff(self, id, parent):
        response = self.client.diff(id, parent)
        data = response.read()
        if response.status != 200:
            raise _Refused(data.decode(errors="replace"))
        return data

    def _cli(self, *args: str, input: bytes | None = None) -> bytes:
        result = subprocess.run(CLI + list(args) + ["--home", str(self.home), "--driver",
                                                     self.name],
                                input=input, capture_output=True, timeout=120)
        if result.returncode != 0:
            raise _Refused(result.stderr.decode(errors="replace").strip()
                           or f"exit {result.returncode}")
        return result.stdout

    def _cli_create(self, id, parent, rw):
        self._cli("layer", "create", id, *(["--parent", parent] if parent else []),
                  *(["--rw"] if rw else []))

    def _cli_remove(self, id):
        self._cli("layer", "rm", id)

    def _cli_apply(self, id, parent, tar):
        self._cli("layer", "apply", id, "-", input=tar)

    def _cli_diff(self, id, parent):
        return self._cli("layer", "diff", id)

    def _cli_mount_unmount(self, id):
        """A mount and its unmount, each its own process: returns the files seen."""
        path = json.loads(self._cli("layer", "mount", id, "--json"))["path"]
        try:
            return read_tree(Path(path))
        finally:
            self._cli("layer", "unmount", id)


class _Refused(Exception):
    pass


def read_tree(root: Path) -> dict[str, bytes]:
    """The model's files (``m/*``) as the mounted layer shows them."""
    top = root / "m"
    if not top.is_dir():
        return {}
    return {f"m/{entry.name}": entry.read_bytes() for entry in top.iterdir()
            if entry.is_file() and not entry.name.startswith(".wh.")}


def new_content(data, old: bytes | None) -> bytes:
    """Bytes that differ from ``old``: a rewrite with the same bytes, size and mtime is
    no change to a naive diff, and the model would not know which answer is right."""
    content = data.draw(st.binary(min_size=1, max_size=64))
    return content + b"+" if content == old else content


def tar_of(changes: dict[str, bytes | None]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("m")
        info.type, info.mode = tarfile.DIRTYPE, 0o755
        tar.addfile(info)
        for name, data in sorted(changes.items()):
            if data is None:
                head, _, tail = name.rpartition("/")
                info = tarfile.TarInfo(f"{head}/.wh.{tail}")
                tar.addfile(info, io.BytesIO(b""))
            else:
                info = tarfile.TarInfo(name)
                info.size, info.mode, info.mtime = len(data), 0o644, int(time.time())
                tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def changes_of(tar_bytes: bytes) -> dict[str, bytes | None]:
    """The ``m/*`` files and whiteouts a diff holds."""
    found: dict[str, bytes | None] = {}
    with tarfile.open(fileobj=io.BytesIO(tar_bytes)) as tar:
        for member in tar:
            name = member.name.lstrip("./")
            head, _, tail = name.rpartition("/")
            if head != "m":
                continue
            if tail.startswith(".wh."):
                found[f"m/{tail[4:]}"] = None
            elif member.isfile():
                found[name] = tar.extractfile(member).read()
    return found


class Mix(RuleBasedStateMachine):
    users: Users        # set per driver by the test

    def __init__(self):
        super().__init__()
        self.model: dict[str, Layer] = {}
        self.ids = itertools.count()      # per run: replays draw the same ids
        self.users.reset()

    # -- the model's views ----------------------------------------------------------
    def files(self, id: str | None) -> dict[str, bytes]:
        chain = []
        while id is not None:
            chain.append(self.model[id])
            id = self.model[id].parent
        files: dict[str, bytes] = {}
        for layer in reversed(chain):
            for name, data in layer.own.items():
                if data is None:
                    files.pop(name, None)
                else:
                    files[name] = data
        return files

    def children(self, id: str) -> list[str]:
        return [k for k, v in self.model.items() if v.parent == id]

    def mounted(self, id: str) -> bool:
        return any(self.model[id].mounts.values())

    def pick(self, data, ids: list[str]) -> str:
        return data.draw(st.sampled_from(sorted(ids)))

    # -- rules --------------------------------------------------------------------
    @precondition(lambda self: len(self.model) < MAX_LAYERS)
    @rule(data=st.data(), user=st.sampled_from(["lib", "lib", "srv", "srv", "cli"]),
          rw=st.booleans())
    def create(self, data, user, rw):
        parent = data.draw(st.sampled_from([None] + sorted(self.model)))
        id = f"L{next(self.ids)}"
        ok, err = self.users.call(user, "create", id=id, parent=parent, rw=rw)
        assert ok, f"{user} create {id} on {parent}: {err}"
        self.model[id] = Layer(parent, rw)

    @precondition(lambda self: any(not v.applied and not v.own and not any(v.mounts.values())
                                   and not self.children(k) for k, v in self.model.items()))
    @rule(data=st.data(), user=st.sampled_from(["lib", "srv", "cli"]))
    def apply(self, data, user):
        id = self.pick(data, [k for k, v in self.model.items() if not v.applied and not v.own
                              and not self.mounted(k) and not self.children(k)])
        layer = self.model[id]
        inherited = self.files(layer.parent)
        changes: dict[str, bytes | None] = {}
        for name in data.draw(st.lists(st.sampled_from(NAMES), unique=True, max_size=4)):
            delete = name in inherited and data.draw(st.booleans())
            changes[name] = None if delete else new_content(data, inherited.get(name))
        ok, err = self.users.call(user, "apply", id=id, parent=layer.parent, tar=tar_of(changes))
        assert ok, f"{user} apply to {id}: {err}"
        layer.own, layer.applied = changes, True

    @rule(data=st.data(), user=st.sampled_from(["lib", "srv"]))
    @precondition(lambda self: self.model)
    def mount(self, data, user):
        id = self.pick(data, list(self.model))
        ok, path = self.users.call(user, "mount", id=id)
        assert ok, f"{user} mount {id}: {path}"
        self.model[id].mounts[user] += 1
        assert read_tree(Path(path)) == self.files(id), f"{user} mount of {id} shows other files"

    @rule(data=st.data())
    @precondition(lambda self: self.model)
    def cli_mount_unmount(self, data):
        id = self.pick(data, list(self.model))
        ok, seen = self.users.call("cli", "mount_unmount", id=id)
        assert ok, f"cli mount/unmount {id}: {seen}"
        assert seen == self.files(id), f"the command line's mount of {id} shows other files"

    @rule(data=st.data(), user=st.sampled_from(["lib", "srv"]))
    @precondition(lambda self: any(v.mounts["lib"] or v.mounts["srv"]
                                   for v in self.model.values()))
    def unmount(self, data, user):
        held = [k for k, v in self.model.items() if v.mounts[user]]
        if not held:
            return
        id = self.pick(data, held)
        ok, err = self.users.call(user, "unmount", id=id)
        assert ok, f"{user} unmount {id}: {err}"
        self.model[id].mounts[user] -= 1

    @rule(data=st.data(), user=st.sampled_from(["lib", "srv"]))
    @precondition(lambda self: any(v.rw and v.mounts["lib"] + v.mounts["srv"]
                                   for v in self.model.values()))
    def write(self, data, user):
        """Write or delete a file through a mount this user holds (a container's writes)."""
        held = [k for k, v in self.model.items() if v.rw and v.mounts[user]
                and not self.children(k)]
        if not held:
            return
        id = self.pick(data, held)
        ok, path = self.users.call(user, "mount", id=id)      # the same path, one more count
        assert ok, path
        try:
            name = data.draw(st.sampled_from(NAMES))
            target = Path(path) / name
            if name in self.files(id) and data.draw(st.booleans()):
                target.unlink()
                self.model[id].own[name] = None
            else:
                target.parent.mkdir(exist_ok=True)
                content = new_content(data, self.files(id).get(name))
                target.write_bytes(content)
                self.model[id].own[name] = content
        finally:
            ok, err = self.users.call(user, "unmount", id=id)
            assert ok, err

    @rule(data=st.data(), user=st.sampled_from(["lib", "lib", "srv", "srv", "cli"]))
    @precondition(lambda self: self.model)
    def remove(self, data, user):
        id = self.pick(data, list(self.model))
        layer = self.model[id]
        ok, err = self.users.call(user, "remove", id=id)
        refuse = bool(self.children(id)) or self.mounted(id)
        assert ok != refuse, (f"{user} remove {id} (children {self.children(id)}, mounts "
                              f"{layer.mounts}): {'removed' if ok else err}")
        if ok:
            del self.model[id]
        else:
            assert err.strip(), "a refusal without a message"

    @rule(data=st.data(), user=st.sampled_from(["lib", "srv", "cli"]))
    @precondition(lambda self: self.model)
    def diff(self, data, user):
        id = self.pick(data, list(self.model))
        parent = self.model[id].parent
        ok, tar = self.users.call(user, "diff", id=id, parent=parent)
        assert ok, f"{user} diff {id}: {tar}"
        inherited = self.files(parent)
        want = {name: data for name, data in self.model[id].own.items()
                if data is not None or name in inherited}
        assert changes_of(tar) == want, f"{user} diff of {id}"

    # -- invariants ---------------------------------------------------------------
    @invariant()
    def same_layers(self):
        assert sorted(self.users.lib.layers()) == sorted(self.model), "a layer lost or leaked"

    @invariant()
    def holds_name_the_holders(self):
        server_pid = str(self.users.server.pid)
        for info in self.users.lib.infos():
            mounts = self.model[info["id"]].mounts
            by = info["mounted_by"] or ""
            assert ("this process" in by) == bool(mounts["lib"]), (info, mounts)
            assert (server_pid in by) == bool(mounts["srv"]), (info, mounts)

    @invariant()
    def no_mount_leaked(self):
        home = self.users.lib.home
        kernel = {Path(m).parent.name for m in mounts_under(home)}
        if self.users.name == "overlay2":
            want = {f"{id}" for id, v in self.model.items()
                    if v.parent is not None and self.mounted(id)}
            assert kernel == want, f"mounts {kernel}, the model says {want}"
        else:
            assert not kernel, f"{self.users.name} mounted {kernel}"

    def teardown(self):
        for id, layer in self.model.items():
            for user in ("lib", "srv"):
                for _ in range(layer.mounts[user]):
                    ok, err = self.users.call(user, "unmount", id=id)
                    assert ok, err
        while self.model:
            for id in [k for k in self.model if not self.children(k)]:
                ok, err = self.users.call("lib", "remove", id=id)
                assert ok, err
                del self.model[id]
        assert self.users.lib.layers() == []


@pytest.fixture
def users(driver_name, driver, home_and_options, tmp_path):
    if driver_name not in HOST_DRIVERS:
        pytest.skip(f"the model mix runs on the host drivers ({driver_name} runs in the VM "
                    "suites of its own)")
    socket = tmp_path / "run" / "gd.sock"
    u = Users(driver, Path(home_and_options[0]), driver_name, socket)
    try:
        yield u
    finally:
        u.close()


def test_model_checked_mix(users):
    Mix.users = users
    runs = max(1, STEPS // STEPS_PER_RUN)
    test = Mix.TestCase
    test.settings = settings(max_examples=runs, stateful_step_count=STEPS_PER_RUN,
                             deadline=None, database=None,
                             derandomize="GRAPHDRIVERS_MODEL_STEPS" not in os.environ,
                             suppress_health_check=list(HealthCheck), print_blob=True)
    test().runTest()

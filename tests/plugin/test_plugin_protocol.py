"""Every endpoint of the graph driver plugin protocol, over the real unix socket,
on the vfs driver, the way dockerd 20.10 calls them."""
from __future__ import annotations

import http.client
import io
import json
import logging
import os
import socket
import tarfile
import threading
import time
from pathlib import Path

import pytest

from graphdrivers.store.atomicfile import read_json
from graphdrivers.servers.docker_plugin import PluginServer, plugin_name

from plugin.plugin_client import Client, running

L1 = "a" * 64
L2 = "b" * 64
C1 = "c" * 64


def tar_bytes(files: dict[str, bytes | None], dirs: tuple[str, ...] = ()) -> bytes:
    """A layer tar: regular files (None = a whiteout for that path) and directories."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name in dirs:
            info = tarfile.TarInfo(name)
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, 1_600_000_000
            tar.addfile(info)
        for name, data in files.items():
            if data is None:
                head, _, tail = name.rpartition("/")
                name, data = (f"{head}/" if head else "") + ".wh." + tail, b""
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, 1_600_000_000
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def chunks(data: bytes, size: int = 32768):
    for pos in range(0, len(data), size):
        yield data[pos:pos + size]


def read_tar_stream(response) -> dict[str, bytes]:
    """Parse a streamed Diff without buffering it first (tarfile stream mode)."""
    assert response.status == 200, response.read()
    assert response.getheader("Transfer-Encoding") == "chunked"
    found = {}
    with tarfile.open(fileobj=response, mode="r|") as tar:
        for member in tar:
            data = tar.extractfile(member).read() if member.isfile() else b""
            found[member.name.rstrip("/")] = data
    return found


def test_activate_init_capabilities_status(client, plugin_env):
    assert client.ok("GraphDriver.Capabilities", {}) == {
        "Capabilities": {"ReproducesExactDiffs": False}}
    status = client.ok("GraphDriver.Status", {})["Status"]
    assert status and all(isinstance(p, list) and len(p) == 2 for p in status)
    state = read_json(plugin_env["state"] / f"{plugin_name('vfs')}.json")
    assert state == {"home": str(plugin_env["home"]), "options": {}, "driver": "vfs"}
    assert (plugin_env["home"] / "vfs").is_dir()   # layers live under dockerd's data root
    assert plugin_name("vfs") == "graphdrivers-vfs" and plugin_name(None) == "graphdrivers"


def test_layer_lifecycle(client):
    client.ok("GraphDriver.Create", {"ID": L1})                      # base: no Parent at all
    client.ok("GraphDriver.CreateReadWrite", {"ID": C1, "Parent": L1})
    assert client.ok("GraphDriver.Exists", {"ID": L1}) == {"Exists": True}
    assert client.ok("GraphDriver.Exists", {"ID": "nope"}) == {"Exists": False}
    assert client.ok("GraphDriver.Exists", {"ID": "../x"}) == {"Exists": False}
    root = Path(client.ok("GraphDriver.Get", {"ID": C1})["Dir"])
    assert root.is_dir() and root.is_absolute()
    (root / "hello").write_text("hi")
    client.ok("GraphDriver.Put", {"ID": C1})
    metadata = client.ok("GraphDriver.GetMetadata", {"ID": C1})
    assert set(metadata) <= {"Metadata"}
    assert all(isinstance(v, str) for v in metadata.get("Metadata", {}).values())
    assert client.ok("GraphDriver.Changes", {"ID": C1, "Parent": L1}) == {
        "Changes": [{"Path": "/hello", "Kind": 1}]}
    assert client.ok("GraphDriver.DiffSize", {"ID": C1, "Parent": L1}) == {"Size": 2}
    client.ok("GraphDriver.Remove", {"ID": C1})
    client.ok("GraphDriver.Remove", {"ID": L1})
    assert client.ok("GraphDriver.Exists", {"ID": L1}) == {"Exists": False}
    client.ok("GraphDriver.Cleanup", {})


def test_chunked_apply_diff_of_multi_mb_tar_and_streamed_diff(client):
    big = os.urandom(6 << 20)
    layer_tar = tar_bytes({"bin/big": big, "etc/hostname": b"box\n", "etc/gone": b"x"},
                          dirs=("bin", "etc"))
    client.ok("GraphDriver.Create", {"ID": L1})
    status, reply = client.apply_diff(L1, None, chunks(layer_tar))
    assert status == 200 and reply == {"Size": len(big) + 5}
    root = Path(client.ok("GraphDriver.Get", {"ID": L1})["Dir"])
    assert (root / "bin/big").read_bytes() == big
    client.ok("GraphDriver.Put", {"ID": L1})

    # a container layer changes things, then "commit": Diff it and apply onto a new layer
    client.ok("GraphDriver.CreateReadWrite", {"ID": C1, "Parent": L1})
    croot = Path(client.ok("GraphDriver.Get", {"ID": C1})["Dir"])
    (croot / "etc/hostname").write_text("changed\n")
    (croot / "etc/gone").unlink()
    (croot / "new").mkdir()
    (croot / "new/file").write_bytes(b"n" * 3000)
    client.ok("GraphDriver.Put", {"ID": C1})
    assert client.ok("GraphDriver.Changes", {"ID": C1, "Parent": L1})["Changes"] == [
        {"Path": "/etc", "Kind": 0}, {"Path": "/etc/gone", "Kind": 2},
        {"Path": "/etc/hostname", "Kind": 0}, {"Path": "/new", "Kind": 1},
        {"Path": "/new/file", "Kind": 1}]
    entries = read_tar_stream(client.diff(C1, L1))
    assert entries["etc/hostname"] == b"changed\n"
    assert entries["etc/.wh.gone"] == b""
    assert entries["new/file"] == b"n" * 3000
    assert "bin/big" not in entries

    diff_tar = b"".join(_diff_bytes(client, C1, L1))
    client.ok("GraphDriver.Create", {"ID": L2, "Parent": L1})
    status, reply = client.apply_diff(L2, L1, chunks(diff_tar, 4096))
    assert status == 200 and reply == {"Size": 8 + 3000}
    root2 = Path(client.ok("GraphDriver.Get", {"ID": L2})["Dir"])
    assert (root2 / "etc/hostname").read_text() == "changed\n"
    assert not (root2 / "etc/gone").exists()
    assert (root2 / "bin/big").read_bytes() == big
    client.ok("GraphDriver.Put", {"ID": L2})
    # the whole base layer as a stream (no parent): every byte arrives
    whole = read_tar_stream(client.diff(L1))
    assert whole["bin/big"] == big


def test_a_layer_is_free_once_its_diff_has_been_read(client, plugin_env):
    """dockerd may remove a layer right after reading its Diff, on another of its
    pooled connections: by the time the body's end arrives, the diff's mount is
    released (it once was released only after the final chunk had gone out)."""
    other = Client(plugin_env["socket"])
    try:
        for i in range(100):
            layer = f"free{i}"
            client.ok("GraphDriver.Create", {"ID": layer})
            status, _ = client.apply_diff(layer, None, chunks(tar_bytes({"f": b"x" * 100})))
            assert status == 200
            assert client.diff(layer).read()
            other.ok("GraphDriver.Remove", {"ID": layer})
    finally:
        other.close()


def _diff_bytes(client: Client, layer: str, parent: str | None):
    response = client.diff(layer, parent)
    assert response.status == 200
    while data := response.read(65536):
        yield data


def test_errors_are_500_with_err_and_keep_the_connection(client):
    assert "not" in client.error("GraphDriver.Get", {"ID": "missing"}).lower()
    assert client.error("GraphDriver.Create", {"ID": L1, "Parent": "missing"})
    assert "invalid" in client.error("GraphDriver.Create", {"ID": "../evil"})
    client.ok("GraphDriver.Create", {"ID": L1})
    assert client.error("GraphDriver.Create", {"ID": L1})               # exists
    assert client.error("GraphDriver.Remove", {"ID": "missing"})
    assert client.error("GraphDriver.Changes", {"ID": "missing"})
    assert client.error("GraphDriver.DiffSize", {"ID": "missing"})
    assert client.error("GraphDriver.GetMetadata", {"ID": "missing"})
    assert "invalid" in client.error("GraphDriver.Create", None)        # empty body = {}
    status, body = client.raw("GraphDriver.Create", b"{not json")
    assert status == 500 and "malformed JSON" in json.loads(body)["Err"]
    status, body = client.raw("GraphDriver.Create", b"[1]")
    assert status == 500 and "JSON object" in json.loads(body)["Err"]
    status, body = client.raw("GraphDriver.Frobnicate", b"{}")
    assert status == 404 and "not implemented" in json.loads(body)["Err"]
    response = client.diff("missing")                 # an error before streaming is JSON
    assert response.status == 500 and json.loads(response.read())["Err"]
    # ApplyDiff onto a missing layer: the error comes back, the body is drained,
    # and the same connection serves the next call
    status, reply = client.apply_diff("missing", None, chunks(tar_bytes({"f": b"x" * 200000})))
    assert status == 500 and reply["Err"]
    status, reply = client.apply_diff(L1, None, [b"this is not a tar archive" * 100])
    assert status == 500 and reply["Err"]
    assert client.ok("GraphDriver.Exists", {"ID": L1}) == {"Exists": True}


def test_truncated_chunked_body_fails_the_call(client, plugin_env):
    client.ok("GraphDriver.Create", {"ID": L1})
    data = tar_bytes({"f": os.urandom(300000)})
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(30)
        s.connect(str(plugin_env["socket"]))
        s.sendall(f"POST /GraphDriver.ApplyDiff?id={L1}&parent= HTTP/1.1\r\nHost: x\r\n"
                  "Transfer-Encoding: chunked\r\n\r\n".encode())
        s.sendall(b"%x\r\n" % 200000 + data[:200000] + b"\r\n")
        s.shutdown(socket.SHUT_WR)          # the client dies mid-body
        reply = b""
        while chunk := s.recv(65536):
            reply += chunk
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.split()[1] in (b"400", b"500") and json.loads(body)["Err"]


def test_calls_before_init_say_why(plugin_driver, plugin_env):
    server = PluginServer(plugin_driver, None, {}, plugin_env["socket"],
                          state_dir=plugin_env["state"])
    with running(server):
        c = Client(plugin_env["socket"])
        assert c.ok("Plugin.Activate") == {"Implements": ["GraphDriver"]}
        assert "GraphDriver.Init" in c.error("GraphDriver.Create", {"ID": L1})
        c.ok("GraphDriver.Cleanup", {})           # dockerd may stop before using us
        c.close()


def test_init_refuses_userns_and_bad_options(client, plugin_env):
    home = str(plugin_env["home"])
    client.ok("GraphDriver.Create", {"ID": L1})
    maps = [{"container_id": 0, "host_id": 100000, "size": 65536}]
    assert "userns-remap" in client.error("GraphDriver.Init", {"Home": home, "UIDMaps": maps})
    assert "key=value" in client.error("GraphDriver.Init", {"Home": home, "Opts": ["bogus"]})
    assert client.error("GraphDriver.Init", {"Home": home, "Opts": ["nosuch.option=1"]})
    assert client.error("GraphDriver.Init", {})
    # the driver from the good Init keeps serving, and a repeated Init changes nothing
    client.ok("GraphDriver.Init", {"Home": home})
    assert client.ok("GraphDriver.Exists", {"ID": L1}) == {"Exists": True}


def test_requests_are_served_concurrently(client, plugin_env):
    """An ApplyDiff whose body is still arriving does not hold up other calls."""
    client.ok("GraphDriver.Create", {"ID": L1})
    data = tar_bytes({"slow": os.urandom(200000)})
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(30)
        s.connect(str(plugin_env["socket"]))
        s.sendall(f"POST /GraphDriver.ApplyDiff?id={L1}&parent= HTTP/1.1\r\nHost: x\r\n"
                  "Transfer-Encoding: chunked\r\n\r\n".encode())
        s.sendall(b"%x\r\n" % 100000 + data[:100000] + b"\r\n")
        other = Client(plugin_env["socket"])        # meanwhile, on a second connection:
        other.ok("GraphDriver.Status", {})
        other.ok("GraphDriver.Create", {"ID": L2})
        assert other.ok("GraphDriver.Exists", {"ID": L2}) == {"Exists": True}
        other.close()
        rest = data[100000:]
        s.sendall(b"%x\r\n" % len(rest) + rest + b"\r\n0\r\n\r\n")
        response = http.client.HTTPResponse(s)
        response.begin()
        assert response.status == 200 and json.loads(response.read()) == {"Size": 200000}


def test_parallel_clients_keep_layers_consistent(client, plugin_env):
    errors = []

    def worker(n: int):
        try:
            c = Client(plugin_env["socket"])
            base, top = f"base{n}", f"top{n}"
            payload = os.urandom(100000 + n)
            c.ok("GraphDriver.Create", {"ID": base})
            status, reply = c.apply_diff(base, None, chunks(tar_bytes({f"f{n}": payload})))
            assert status == 200 and reply == {"Size": len(payload)}
            c.ok("GraphDriver.CreateReadWrite", {"ID": top, "Parent": base})
            root = Path(c.ok("GraphDriver.Get", {"ID": top})["Dir"])
            assert (root / f"f{n}").read_bytes() == payload
            (root / "mine").write_text(str(n))
            c.ok("GraphDriver.Put", {"ID": top})
            assert read_tar_stream(c.diff(top, base)) == {"mine": str(n).encode()}
            c.close()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors


def test_restart_without_new_init_serves_the_same_layers(plugin_driver, plugin_env, client):
    client.ok("GraphDriver.Create", {"ID": L1})
    status, _ = client.apply_diff(L1, None, chunks(tar_bytes({"keep": b"kept"})))
    assert status == 200
    client.ok("GraphDriver.CreateReadWrite", {"ID": C1, "Parent": L1})
    dir_before = client.ok("GraphDriver.Get", {"ID": C1})["Dir"]     # left mounted
    client.close()
    # a second plugin process on the same state: no Activate, no Init (dockerd sends neither)
    other_socket = plugin_env["socket"].with_name("gd2.sock")
    again = PluginServer(plugin_driver, None, {}, other_socket, state_dir=plugin_env["state"])
    with running(again):
        c = Client(other_socket)
        assert c.ok("GraphDriver.Exists", {"ID": L1}) == {"Exists": True}
        root = Path(c.ok("GraphDriver.Get", {"ID": C1})["Dir"])
        assert str(root) == dir_before and (root / "keep").read_bytes() == b"kept"
        c.ok("GraphDriver.Put", {"ID": C1})
        c.ok("GraphDriver.Create", {"ID": L2, "Parent": L1})
        c.close()


def test_explicit_home_wins_over_init_home(plugin_driver, plugin_env, tmp_path):
    home = tmp_path / "operator-home"
    server = PluginServer(plugin_driver, home, {}, plugin_env["socket"],
                          state_dir=plugin_env["state"])
    with running(server):
        c = Client(plugin_env["socket"])
        c.ok("GraphDriver.Create", {"ID": L1})          # usable before Init: home is known
        c.ok("GraphDriver.Init", {"Home": str(plugin_env["home"])})
        root = Path(c.ok("GraphDriver.Get", {"ID": L1})["Dir"])
        assert root.is_relative_to(home)
        c.close()


def test_every_request_is_logged_at_debug(client, caplog):
    caplog.set_level(logging.DEBUG, logger="graphdrivers.servers.docker_plugin")
    client.ok("GraphDriver.Create", {"ID": L1})
    client.error("GraphDriver.Get", {"ID": "missing"})
    def logged() -> tuple[list[str], bool, bool]:
        lines = [r.getMessage() for r in caplog.records
                 if r.name == "graphdrivers.servers.docker_plugin"]
        return (lines,
                any(l.startswith("POST /GraphDriver.Create -> 200") and L1 in l for l in lines),
                any(l.startswith("POST /GraphDriver.Get -> 500") and "LayerNotFound" in l
                    for l in lines))
    # each line is written just after its reply: wait for both (the Init line counts
    # as a POST too, so counting POST lines stopped the wait one line early)
    deadline = time.monotonic() + 5
    lines, created, refused = logged()
    while not (created and refused) and time.monotonic() < deadline:
        time.sleep(0.01)
        lines, created, refused = logged()
    assert created, lines
    assert refused, lines


def _backend(name: str, tmp_path: Path):
    """(home, options) for a driver, from its registered home maker when it has one."""
    from graphdrivers.testing.homes import driver_home
    return driver_home(name, tmp_path)


@pytest.mark.parametrize("name", ["vfs", "overlay2", "btrfs"])
def test_plugin_restart_with_a_mounted_layer_loses_nothing(name, tmp_path):
    """Stopping the plugin never unmounts; the next process takes the mount over."""
    import graphdrivers
    from graphdrivers.kernel import mount as gd_mount
    from graphdrivers.registry import driver_class
    sock, state = tmp_path / "gd.sock", tmp_path / "state"
    with _backend(name, tmp_path) as (home, options):
        try:
            driver_class(name).probe(Path(home) / name)
        except graphdrivers.NotSupported as exc:
            pytest.skip(f"{name}: {exc}")
        first = PluginServer(name, home, options, sock, state_dir=state)
        with running(first):
            c = Client(sock)
            c.ok("GraphDriver.Init", {"Home": str(tmp_path / "data" / plugin_name(name))})
            c.ok("GraphDriver.Create", {"ID": L1})
            status, _ = c.apply_diff(L1, None, chunks(tar_bytes({"etc/base": b"base"})))
            assert status == 200
            c.ok("GraphDriver.CreateReadWrite", {"ID": C1, "Parent": L1})
            root = Path(c.ok("GraphDriver.Get", {"ID": C1})["Dir"])
            (root / "etc/new").write_text("written while mounted")
            c.close()
        was_mountpoint = gd_mount.is_mountpoint(root)
        second = PluginServer(name, home, options, sock, state_dir=state)
        try:
            with running(second):
                # still mounted and readable in between: running containers keep their root
                assert gd_mount.is_mountpoint(root) == was_mountpoint
                assert (root / "etc/base").read_text() == "base"
                c = Client(sock)
                assert Path(c.ok("GraphDriver.Get", {"ID": C1})["Dir"]) == root
                assert (root / "etc/new").read_text() == "written while mounted"
                c.ok("GraphDriver.Put", {"ID": C1})       # the new Get
                c.ok("GraphDriver.Put", {"ID": C1})       # the Get made before the restart
                assert c.ok("GraphDriver.Changes", {"ID": C1, "Parent": L1}) == {
                    "Changes": [{"Path": "/etc", "Kind": 0}, {"Path": "/etc/new", "Kind": 1}]}
                c.ok("GraphDriver.Remove", {"ID": C1})
                c.ok("GraphDriver.Remove", {"ID": L1})
                c.ok("GraphDriver.Cleanup", {})
                c.close()
        finally:
            second.plugin._driver and second.plugin._driver.cleanup()
        assert not gd_mount.mounts_under(home)


def test_oversized_json_body_is_refused_and_connection_survives(client):
    status, body = client.raw("GraphDriver.Create", b" " * (2 << 20) + b"{}")
    assert status == 500 and "larger than" in json.loads(body)["Err"]
    assert client.ok("GraphDriver.Exists", {"ID": L1}) == {"Exists": False}


def test_init_keeps_the_loaded_driver_unless_its_config_changes(plugin_driver, plugin_env, tmp_path):
    server = PluginServer(plugin_driver, tmp_path / "h", {}, plugin_env["socket"],
                          state_dir=plugin_env["state"])
    with running(server):
        first = server.plugin._driver
        c = Client(plugin_env["socket"])
        c.ok("GraphDriver.Init", {"Home": str(plugin_env["home"])})   # --home wins: same driver
        assert server.plugin._driver is first
        c.ok("GraphDriver.Init", {"Home": str(plugin_env["home"])})   # dockerd restarted
        assert server.plugin._driver is first
        c.close()
    moved = PluginServer(plugin_driver, None, {}, plugin_env["socket"],
                         state_dir=plugin_env["state"])        # Home from Init: a new one reloads
    with running(moved):
        first = moved.plugin._driver
        c = Client(plugin_env["socket"])
        c.ok("GraphDriver.Init", {"Home": str(tmp_path / "elsewhere")})
        assert moved.plugin._driver is not first
        assert moved.plugin._driver.home == tmp_path / "elsewhere" / plugin_driver
        c.close()

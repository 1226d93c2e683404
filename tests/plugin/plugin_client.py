"""A plugin server on a temporary unix socket, and a client that talks to it the
way dockerd 20.10 does (POST, no Content-Type, empty fields omitted, chunked
ApplyDiff bodies, keep-alive connections)."""
from __future__ import annotations

import contextlib
import http.client
import json
import socket
import threading
from pathlib import Path
from typing import Iterable, Iterator

from graphdrivers.servers.docker_plugin import PluginServer

ACCEPT = "application/vnd.docker.plugins.v1.2+json"   # what dockerd 20.10 sends


class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str | Path, timeout: float = 60):
        super().__init__("localhost", timeout=timeout)
        self.unix_path = str(path)

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.unix_path)


class Client:
    """One keep-alive connection; ``call`` returns (status, decoded JSON)."""

    def __init__(self, path: str | Path):
        self.path = path
        self.conn = UnixHTTPConnection(path)

    def raw(self, method: str, body: bytes | None = None, headers: dict | None = None,
            verb: str = "POST") -> tuple[int, bytes]:
        self.conn.request(verb, "/" + method, body=body,
                          headers={"Accept": ACCEPT, **(headers or {})})
        response = self.conn.getresponse()
        return response.status, response.read()

    def call(self, method: str, args: dict | None = None) -> tuple[int, dict]:
        body = b"" if args is None else json.dumps(args).encode()
        status, data = self.raw(method, body)
        return status, json.loads(data) if data else {}

    def ok(self, method: str, args: dict | None = None) -> dict:
        status, reply = self.call(method, args)
        assert status == 200, (method, status, reply)
        assert "Err" not in reply
        return reply

    def error(self, method: str, args: dict | None = None) -> str:
        status, reply = self.call(method, args)
        assert status == 500, (method, status, reply)
        assert set(reply) == {"Err"} and reply["Err"], reply
        return reply["Err"]

    def apply_diff(self, layer: str, parent: str | None, chunks: Iterable[bytes]) -> tuple[int, dict]:
        """ApplyDiff as dockerd sends it: ids in the query, the tar as a chunked body."""
        self.conn.request("POST", f"/GraphDriver.ApplyDiff?id={layer}&parent={parent or ''}",
                          body=iter(chunks), encode_chunked=True,
                          headers={"Accept": ACCEPT, "Transfer-Encoding": "chunked"})
        response = self.conn.getresponse()
        data = response.read()
        return response.status, json.loads(data) if data else {}

    def diff(self, layer: str, parent: str | None = None) -> http.client.HTTPResponse:
        """Diff's response: the raw tar, to be read as a stream."""
        args = {"ID": layer}
        if parent:
            args["Parent"] = parent
        self.conn.request("POST", "/GraphDriver.Diff", body=json.dumps(args).encode(),
                          headers={"Accept": ACCEPT})
        return self.conn.getresponse()

    def close(self) -> None:
        self.conn.close()


@contextlib.contextmanager
def running(server: PluginServer) -> Iterator[PluginServer]:
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        thread.join(10)
        server.close(grace=10)

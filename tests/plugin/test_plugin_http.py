"""The transport on its own: chunked decoding, keep-alive framing, socket claiming."""
from __future__ import annotations

import io
import json
import os
import socket
import threading

import pytest

from graphdrivers.errors import DriverError
from graphdrivers.servers.http import BodyError, ChunkedReader, LengthReader, UnixHTTPServer

from plugin.plugin_client import Client, UnixHTTPConnection  # noqa: F401  (tests/plugin/conftest.py)


def decode(raw: bytes, read_size: int = 7) -> tuple[bytes, bytes]:
    """Decode a chunked body; return (data, what is left in the stream after it)."""
    stream = io.BufferedReader(io.BytesIO(raw))
    reader = ChunkedReader(stream)
    out = bytearray()
    while True:
        data = reader.read(read_size)
        if not data:
            break
        out += data
    assert reader.finished
    return bytes(out), stream.read()


def test_chunked_decodes_chunks_extensions_and_trailers():
    raw = (b"5\r\nhello\r\n1;name=value\r\n \r\nA\r\n0123456789\r\n"
           b"0\r\nX-Trailer: yes\r\n\r\nNEXT")
    data, rest = decode(raw)
    assert data == b"hello 0123456789"
    assert rest == b"NEXT"     # never reads into the next request


def test_chunked_large_random_body_any_read_size():
    payload = os.urandom(300_000)
    raw = bytearray()
    pos = 0
    for size in (1, 4095, 65536, 100_000, 1 << 20):
        piece = payload[pos:pos + size]
        pos += len(piece)
        raw += b"%x\r\n" % len(piece) + piece + b"\r\n"
    raw += b"0\r\n\r\n"
    for read_size in (1, 1000, 1 << 20):
        data, rest = decode(bytes(raw), read_size)
        assert data == payload and rest == b""


@pytest.mark.parametrize("raw, message", [
    (b"zz\r\nabc\r\n0\r\n\r\n", "bad chunk size"),
    (b"\r\n", "bad chunk size"),
    (b"-1\r\n", "bad chunk size"),
    (b"5\r\nhel", "in the middle of a chunk"),
    (b"3\r\nabcXX0\r\n\r\n", "not followed by CRLF"),
    (b"3\r\nabc\r\n", "ended before the chunk size"),
    (b"0\r\nTrailer: x\r\n", "ended before the trailer"),
    (b"1" * 5000 + b"\r\n", "longer than"),
])
def test_chunked_rejects_malformed(raw, message):
    reader = ChunkedReader(io.BufferedReader(io.BytesIO(raw)))
    with pytest.raises(BodyError, match=message):
        while reader.read(1024):
            pass
    assert reader.failed


def test_length_reader_exact_and_short():
    stream = io.BufferedReader(io.BytesIO(b"abcdefNEXT"))
    reader = LengthReader(stream, 6)
    assert reader.read(100) == b"abcdef" and reader.read(100) == b"" and reader.finished
    assert stream.read() == b"NEXT"
    short = LengthReader(io.BufferedReader(io.BytesIO(b"abc")), 6)
    assert short.read(10) == b"abc"
    with pytest.raises(BodyError, match="3 bytes early"):
        short.read(10)


# -- the server with a toy route -------------------------------------------

def echo_route(request):
    """Reply with how many body bytes arrived, and the method and query."""
    total = 0
    while True:
        data = request.body.read(65536)
        if not data:
            break
        total += len(data)
    request.send_json(200, json.dumps({"method": request.method, "query": request.query,
                                       "size": total}).encode())


@pytest.fixture
def echo_server(tmp_path):
    srv = UnixHTTPServer(tmp_path / "echo.sock", echo_route)
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    thread.join(5)
    srv.close(grace=5)


def test_keep_alive_with_json_and_chunked_bodies(echo_server):
    conn = UnixHTTPConnection(echo_server.socket_path)
    for i in range(3):
        conn.request("POST", "/A.B?x=1", body=b'{"ID":"a"}')
        reply = json.loads(conn.getresponse().read())
        assert reply == {"method": "A.B", "query": "x=1", "size": 10}
        conn.request("POST", "/C", body=iter([b"x" * 70000, b"y" * 5]), encode_chunked=True)
        assert json.loads(conn.getresponse().read())["size"] == 70005
    conn.close()
    assert os.stat(echo_server.socket_path).st_mode & 0o777 == 0o660


def test_bad_chunked_body_gets_400_and_closed_connection(echo_server):
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(str(echo_server.socket_path))
        s.sendall(b"POST /X HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                  b"zz\r\n")
        s.settimeout(5)
        data = b""
        while chunk := s.recv(4096):
            data += chunk
    assert data.startswith(b"HTTP/1.1 400") or b"500" in data.split(b"\r\n")[0]
    assert b"bad chunk size" in data


def test_unsupported_transfer_encoding_is_refused(echo_server):
    conn = UnixHTTPConnection(echo_server.socket_path)
    conn.request("POST", "/X", body=b"abc", headers={"Transfer-Encoding": "gzip"})
    response = conn.getresponse()
    assert response.status == 400
    assert "Transfer-Encoding" in json.loads(response.read())["Err"]


def test_get_is_refused(echo_server):
    conn = UnixHTTPConnection(echo_server.socket_path)
    conn.request("GET", "/Plugin.Activate")
    response = conn.getresponse()
    assert response.status == 405 and "POST" in json.loads(response.read())["Err"]


def test_stale_socket_is_replaced_and_busy_socket_refused(tmp_path, echo_server):
    stale = tmp_path / "stale.sock"
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(stale))
    s.close()                               # a socket file nobody listens on
    srv = UnixHTTPServer(stale, echo_route)
    srv.close(grace=1)
    assert not stale.exists()
    with pytest.raises(DriverError, match="already serving"):
        UnixHTTPServer(echo_server.socket_path, echo_route)
    regular = tmp_path / "file.sock"
    regular.write_text("x")
    with pytest.raises(DriverError, match="not a socket"):
        UnixHTTPServer(regular, echo_route)
    assert regular.read_text() == "x"

"""HTTP/1.1 on a unix socket for the Docker plugin server.

The standard library's ``http.server`` parses request lines and headers but
leaves request bodies to the handler, and it has no decoder for
``Transfer-Encoding: chunked`` (which dockerd uses for ApplyDiff). The body
readers below are the one place that decodes request framing; everything else
is ``socketserver`` + ``BaseHTTPRequestHandler``. Chunked responses (Diff) are
written by ``ChunkedWriter``.
"""
from __future__ import annotations

import io
import json
import logging
import os
import socket
import socketserver
import stat
import threading
import time
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import BinaryIO, Callable

from graphdrivers.errors import DriverError

log = logging.getLogger("graphdrivers.servers.docker_plugin")

MAX_LINE = 4096            # longest chunk-size or trailer line we accept
COPY_BUFFER = 1 << 20      # 1 MiB: large enough for throughput, small enough for constant memory


class BodyError(OSError):
    """The request body is malformed or ended early (the connection cannot be reused)."""


class ChunkedReader(io.RawIOBase):
    """Decode a ``Transfer-Encoding: chunked`` body from ``rfile`` (RFC 9112 §7.1).

    Reads never cross the final zero-size chunk, so the connection stays usable
    for the next request once the body is consumed. Chunk extensions and trailer
    fields are read and ignored.
    """

    def __init__(self, rfile: BinaryIO):
        super().__init__()
        self._rfile = rfile
        self._left = 0          # bytes left in the current chunk
        self._done = False
        self.failed = False
        self.bytes_read = 0

    def readable(self) -> bool:
        return True

    def _line(self, what: str) -> bytes:
        line = self._rfile.readline(MAX_LINE + 1)
        if not line:
            raise self._fail(f"request body ended before the {what}")
        if len(line) > MAX_LINE or not line.endswith(b"\n"):
            raise self._fail(f"{what} line longer than {MAX_LINE} bytes")
        return line.rstrip(b"\r\n")

    def _fail(self, message: str) -> BodyError:
        self.failed = True
        return BodyError(f"malformed chunked request body: {message}")

    def _next_chunk(self) -> None:
        line = self._line("chunk size")
        size_text = line.split(b";", 1)[0].strip()
        if not size_text or any(c not in b"0123456789abcdefABCDEF" for c in size_text) \
                or len(size_text) > 16:
            raise self._fail(f"bad chunk size {line[:40]!r}")
        self._left = int(size_text, 16)
        if self._left == 0:
            while self._line("trailer"):  # trailer fields end with an empty line
                pass
            self._done = True

    def readinto(self, buffer) -> int:
        if self._done:
            return 0
        if self._left == 0:
            self._next_chunk()
            if self._done:
                return 0
        view = memoryview(buffer)[:min(len(buffer), self._left)]
        got = self._rfile.readinto(view)
        if not got:
            raise self._fail("connection closed in the middle of a chunk")
        self._left -= got
        self.bytes_read += got
        if self._left == 0 and self._rfile.read(2) != b"\r\n":
            raise self._fail("chunk data not followed by CRLF")
        return got

    @property
    def finished(self) -> bool:
        return self._done


class LengthReader(io.RawIOBase):
    """A ``Content-Length`` body: exactly ``length`` bytes, never more."""

    def __init__(self, rfile: BinaryIO, length: int):
        super().__init__()
        self._rfile = rfile
        self._left = length
        self.failed = False
        self.bytes_read = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        if self._left == 0:
            return 0
        view = memoryview(buffer)[:min(len(buffer), self._left)]
        got = self._rfile.readinto(view)
        if not got:
            self.failed = True
            raise BodyError(f"request body ended {self._left} bytes early")
        self._left -= got
        self.bytes_read += got
        return got

    @property
    def finished(self) -> bool:
        return self._left == 0


class ChunkedWriter:
    """Write a chunked response body; ``close`` sends the terminating chunk."""

    def __init__(self, wfile: BinaryIO):
        self._wfile = wfile
        self.bytes_written = 0

    def write(self, data: bytes) -> None:
        if data:
            self._wfile.write(b"%x\r\n" % len(data))
            self._wfile.write(data)
            self._wfile.write(b"\r\n")
            self.bytes_written += len(data)

    def close(self) -> None:
        self._wfile.write(b"0\r\n\r\n")
        self._wfile.flush()


class Request:
    """What a route sees: method name, query, a body stream, and the ways to answer."""

    def __init__(self, handler: "PluginRequestHandler", method: str, query: str):
        self._handler = handler
        self.method = method
        self.query = query
        self.body = handler.open_body()
        self.note = ""          # extra text for the per-request debug log line
        self.status = 0

    def send_json(self, status: int, payload: bytes) -> None:
        self.status = status
        h = self._handler
        h.send_response(status)
        h.send_header("Content-Type", "application/vnd.docker.plugins.v1+json")
        h.send_header("Content-Length", str(len(payload)))
        h.end_headers()
        h.wfile.write(payload)

    def send_stream(self, stream: BinaryIO, content_type: str = "application/x-tar") -> int:
        """Send ``stream`` as a chunked body. A failure midway aborts the connection
        without the final chunk, so the client sees a truncated transfer, never a
        short but well-formed body. The stream is closed before the final chunk: what it
        holds (a diff's mounts) is released by the time the client has read the end, so
        a Remove sent right after the body finds the layer free."""
        self.status = 200
        h = self._handler
        h.send_response(200)
        h.send_header("Content-Type", content_type)
        h.send_header("Transfer-Encoding", "chunked")
        h.end_headers()
        writer = ChunkedWriter(h.wfile)
        try:
            while True:
                data = stream.read(COPY_BUFFER)
                if not data:
                    break
                writer.write(data)
            stream.close()
        except BaseException:
            h.close_connection = True
            raise
        writer.close()
        return writer.bytes_written


Route = Callable[[Request], None]


class PluginRequestHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"   # keep-alive: dockerd reuses connections
    server: "UnixHTTPServer"

    def open_body(self):
        """The request body as a buffered binary stream (empty when there is none)."""
        encoding = self.headers.get("Transfer-Encoding", "").lower()
        if encoding:
            if [c.strip() for c in encoding.split(",")] != ["chunked"]:
                raise BodyError(f"unsupported Transfer-Encoding {encoding!r}")
            self._raw_body = ChunkedReader(self.rfile)
        else:
            text = self.headers.get("Content-Length", "0").strip()
            if not text.isdigit():
                raise BodyError(f"bad Content-Length {text!r}")
            self._raw_body = LengthReader(self.rfile, int(text))
        return io.BufferedReader(self._raw_body, COPY_BUFFER)

    def do_POST(self) -> None:
        started = time.monotonic()
        self._raw_body = None
        path, _, query = self.path.partition("?")
        request = None
        self.server.request_started()
        try:
            try:
                request = Request(self, path.lstrip("/"), query)
            except BodyError as exc:
                self.close_connection = True
                self._error(400, str(exc))
                return
            self.server.route(request)
            self._finish_body()
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        except BodyError as exc:   # a route let a body error through: answer it if we still can
            self.close_connection = True
            if request.status == 0:
                request.status = 400
                self._error(400, str(exc))
        except Exception:  # the route answers its own errors; this is a broken connection
            log.exception("POST %s failed after the response started", self.path)
            self.close_connection = True
        finally:
            self.server.request_finished()
            status = request.status if request else 400
            note = f" {request.note}" if request and request.note else ""
            # every call at debug, with its time; a refused or failed one at warning
            level = logging.WARNING if status >= 400 else logging.DEBUG
            log.log(level, "POST %s -> %s in %.1f ms%s", self.path, status,
                    (time.monotonic() - started) * 1000, note)
            self.server.observe(path.lstrip("/"), status, time.monotonic() - started)

    def _finish_body(self) -> None:
        """Consume what the route left of the body so the next request parses cleanly;
        a body that failed to decode poisons the connection instead."""
        raw = self._raw_body
        if raw is None or raw.finished:
            return
        if raw.failed:
            self.close_connection = True
            return
        try:
            while raw.read(COPY_BUFFER):
                pass
        except OSError:
            self.close_connection = True

    def _error(self, status: int, message: str) -> None:
        payload = json.dumps({"Err": message}).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/vnd.docker.plugins.v1+json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def do_GET(self) -> None:
        self._error(405, "the Docker plugin protocol uses POST for every call")
        self.close_connection = True

    do_PUT = do_DELETE = do_HEAD = do_GET

    def log_request(self, code="-", size="-") -> None:
        pass   # do_POST logs one line per request, with timing

    def log_message(self, format: str, *args) -> None:
        # client_address is empty on a unix socket; errors reach the log through do_POST
        log.debug("http: " + format, *args)


class UnixHTTPServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    """A thread per connection: dockerd issues calls in parallel for parallel containers."""

    daemon_threads = True          # idle keep-alive connections must not block exit
    block_on_close = False
    # socketserver's default backlog of 5 makes a burst of connects fail with EAGAIN
    # (Go's net.Dial does not retry that); the kernel caps it at somaxconn anyway
    request_queue_size = 1024

    def __init__(self, socket_path: str | os.PathLike, route: Callable[[Request], None],
                 mode: int = 0o660, *, listen_fd: int | None = None):
        self.socket_path = Path(socket_path)
        self.route = route
        self._active = 0
        self._idle = threading.Condition()
        self._activated = listen_fd is not None
        if listen_fd is not None:   # socket activation: systemd bound it and keeps it
            super().__init__(str(self.socket_path), PluginRequestHandler,
                             bind_and_activate=False)
            self.socket.close()
            self.socket = socket.socket(fileno=listen_fd)
            return
        _claim_socket_path(self.socket_path)
        super().__init__(str(self.socket_path), PluginRequestHandler, bind_and_activate=False)
        try:
            old = os.umask(0o177)  # the socket appears with no world access, then gets mode
            try:
                self.server_bind()
            finally:
                os.umask(old)
            os.chmod(self.socket_path, mode)
            self.server_activate()
        except BaseException:
            self.server_close()
            raise

    def observe(self, method: str, status: int, seconds: float) -> None:
        """Called after every request (metrics hook); nothing by default."""

    def request_started(self) -> None:
        with self._idle:
            self._active += 1

    def request_finished(self) -> None:
        with self._idle:
            self._active -= 1
            self._idle.notify_all()

    def wait_idle(self, timeout: float) -> bool:
        """Wait until no request is in flight (idle keep-alive connections don't count)."""
        with self._idle:
            return self._idle.wait_for(lambda: self._active == 0, timeout)

    def close(self, grace: float = 30.0) -> None:
        """Stop listening, let in-flight requests finish (up to ``grace`` s), remove the socket."""
        self.socket.close()
        try:
            if self.socket_path.is_socket() and not self._activated:
                self.socket_path.unlink()
        except FileNotFoundError:
            pass
        if not self.wait_idle(grace):
            log.warning("stopping with requests still in flight after %.0f s", grace)


def _claim_socket_path(path: Path) -> None:
    """Create the socket's directory, and remove a stale socket nobody listens on."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        st = path.lstat()
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise DriverError(f"{path} exists and is not a socket; remove it or choose another --socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
    except (ConnectionRefusedError, FileNotFoundError):
        path.unlink(missing_ok=True)   # left by a process that died
        return
    finally:
        probe.close()
    raise DriverError(f"another process is already serving on {path}; stop it first "
                      "or choose another --socket")

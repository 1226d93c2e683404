"""`graphdrivers serve`: Docker's graph driver plugin protocol over a unix socket.

dockerd (started with ``--experimental --storage-driver <name>``) finds the
plugin through ``/run/docker/plugins/<name>.sock`` (or a spec file) and calls
``/Plugin.Activate`` and ``/GraphDriver.*`` as JSON POSTs. Each call maps onto
one method of a loaded ``graphdrivers`` driver; the transport lives in
``plugin_http``. dockerd never re-sends Init when the plugin restarts, so what
Init said is persisted (``<state_dir>/<name>.json``) and restored at start.
"""
from __future__ import annotations

import json
import logging
import os
import signal
import socket
import threading
import time
from pathlib import Path
from typing import Any, Callable, Mapping
from urllib.parse import parse_qs

from graphdrivers import registry
from graphdrivers.store.atomicfile import read_json, write_json
from graphdrivers.driver import Driver
from graphdrivers.errors import DriverError, InvalidLayerId, InvalidOption
from graphdrivers.servers.http import BodyError, Request, UnixHTTPServer

log = logging.getLogger("graphdrivers.servers.docker_plugin")

SOCKET_DIR = Path("/run/docker/plugins")
STATE_DIR = Path("/run/graphdrivers/plugins")
NAME_PREFIX = "graphdrivers"
MAX_JSON = 1 << 20     # a JSON call is a few hundred bytes; refuse to buffer more


def plugin_name(driver_name: str | None) -> str:
    """The name dockerd knows the plugin by (``--storage-driver``).

    It must differ from dockerd's built-in driver names, or dockerd would use its
    own driver instead: ``graphdrivers-vfs``, ``graphdrivers-overlay2``, ...; plain
    ``graphdrivers`` when the driver is auto-selected at Init.
    """
    return f"{NAME_PREFIX}-{driver_name}" if driver_name else NAME_PREFIX


def default_socket(name: str) -> Path:
    return SOCKET_DIR / f"{name}.sock"


class NotInitialized(DriverError):
    """A call arrived before Init (and no earlier Init was persisted)."""


class GraphDriverPlugin:
    """The protocol: one method per endpoint, on top of one loaded driver."""

    def __init__(self, driver_name: str | None, home: str | os.PathLike | None,
                 options: Mapping[str, str] | None, state_file: str | os.PathLike):
        self.driver_name = driver_name
        self.home = Path(home) if home is not None else None  # None: use Init's Home
        self.options = dict(options or {})
        self.state_file = Path(state_file)
        self.init_home: str | None = None
        self.init_options: dict[str, str] = {}
        self._driver: Driver | None = None
        self._loaded: tuple[Path, dict[str, str]] | None = None
        self._why_not = "the plugin has not received GraphDriver.Init from dockerd yet"
        self._lock = threading.Lock()     # guards Init (driver swap + state file)
        self.routes: dict[str, Callable[[Request, dict], Any]] = {
            "Plugin.Activate": self.activate,
            "GraphDriver.Init": self.init,
            "GraphDriver.Capabilities": self.capabilities,
            "GraphDriver.Create": lambda r, a: self.create(a, rw=False),
            "GraphDriver.CreateReadWrite": lambda r, a: self.create(a, rw=True),
            "GraphDriver.Remove": lambda r, a: self.driver.remove(_id(a)),
            "GraphDriver.Get": self.get,
            "GraphDriver.Put": lambda r, a: self.driver.unmount(_id(a)),
            "GraphDriver.Exists": self.exists,
            "GraphDriver.Status": self.status,
            "GraphDriver.GetMetadata": self.get_metadata,
            "GraphDriver.Cleanup": self.cleanup,
            "GraphDriver.Diff": self.diff,
            "GraphDriver.Changes": self.changes,
            "GraphDriver.ApplyDiff": self.apply_diff,
            "GraphDriver.DiffSize": self.diff_size,
        }
        self._restore()

    # -- state ----------------------------------------------------------
    def _restore(self) -> None:
        """Load the driver from the persisted Init, or right away when --home was given."""
        try:
            saved = read_json(self.state_file)
        except FileNotFoundError:
            saved = None
        except (OSError, ValueError) as exc:
            log.warning("ignoring unreadable plugin state %s: %s", self.state_file, exc)
            saved = None
        if saved is not None:
            self.init_home = saved.get("home")
            self.init_options = dict(saved.get("options") or {})
            self.driver_name = self.driver_name or saved.get("driver")
            log.info("restored Init from %s: home %s", self.state_file, self.init_home)
        if self.home is None and self.init_home is None:
            return
        try:
            self._driver = self._load()
        except DriverError as exc:
            # serve anyway: the next Init can fix it, and every call says why it fails
            self._why_not = f"the storage driver could not be loaded: {exc}"
            log.error("%s", self._why_not)

    def _config(self) -> tuple[Path, dict[str, str]]:
        """Where and how the driver runs: --home wins over Init's Home; Init's Opts
        override the plugin's own options."""
        home = self.home if self.home is not None else Path(self.init_home)
        return home, {**self.options, **self.init_options}

    def _load(self) -> Driver:
        home, options = self._config()
        driver = registry.load(self.driver_name, home, options)
        self._loaded = (home, options)
        log.info("driver %s ready at %s", driver.name, driver.home)
        return driver

    @property
    def driver(self) -> Driver:
        driver = self._driver
        if driver is None:
            raise NotInitialized(self._why_not)
        return driver

    # -- endpoints ------------------------------------------------------
    def activate(self, request: Request, args: dict) -> dict:
        return {"Implements": ["GraphDriver"]}

    def init(self, request: Request, args: dict) -> dict:
        home = args.get("Home")
        if not isinstance(home, str) or not home:
            raise DriverError("GraphDriver.Init without a Home directory")
        for key in ("UIDMaps", "GIDMaps"):
            if args.get(key):
                raise DriverError("user namespace remapping (dockerd --userns-remap) is not "
                                  "supported by graphdrivers; start dockerd without it")
        options = _parse_opts(args.get("Opts"))
        with self._lock:
            previous = (self.init_home, self.init_options)
            self.init_home, self.init_options = home, options
            # keep a loaded driver (and its mount counts) when Init changes nothing for it
            if self._driver is None or self._config() != self._loaded:
                try:
                    self._driver = self._load()
                except BaseException:
                    self.init_home, self.init_options = previous
                    raise
            self.driver_name = self._driver.name  # an auto-selected driver stays selected
            self.state_file.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            write_json(self.state_file, {"home": home, "options": options,
                                         "driver": self._driver.name})
        return {}

    def capabilities(self, request: Request, args: dict) -> dict:
        # Our diffs are regenerated from the files, not byte-identical to the applied tar.
        return {"Capabilities": {"ReproducesExactDiffs": False}}

    def create(self, args: dict, *, rw: bool) -> dict:
        storage_opt = args.get("StorageOpt") or None
        if storage_opt is not None and not isinstance(storage_opt, dict):
            raise InvalidOption("StorageOpt must be a JSON object of strings")
        self.driver.create(_id(args), _parent(args), rw=rw,
                           mount_label=args.get("MountLabel") or "", storage_opt=storage_opt)
        return {}

    def get(self, request: Request, args: dict) -> dict:
        return {"Dir": str(self.driver.mount(_id(args), args.get("MountLabel") or ""))}

    def exists(self, request: Request, args: dict) -> dict:
        try:
            return {"Exists": bool(self.driver.exists(_id(args)))}
        except InvalidLayerId:
            return {"Exists": False}

    def status(self, request: Request, args: dict) -> dict:
        return {"Status": [[str(k), str(v)] for k, v in self.driver.status()]}

    def get_metadata(self, request: Request, args: dict) -> dict:
        metadata = self.driver.metadata(_id(args))
        return {"Metadata": {str(k): str(v) for k, v in metadata.items()}} if metadata else {}

    def cleanup(self, request: Request, args: dict) -> dict:
        if self._driver is not None:   # nothing to clean before Init
            self._driver.cleanup()
        return {}

    def diff(self, request: Request, args: dict) -> None:
        stream = self.driver.diff(_id(args), _parent(args))
        try:
            sent = request.send_stream(stream)
        finally:
            stream.close()
        request.note = f"sent {sent} bytes"

    def changes(self, request: Request, args: dict) -> dict:
        found = self.driver.changes(_id(args), _parent(args))
        return {"Changes": [{"Path": c.path, "Kind": int(c.kind)} for c in found]} if found else {}

    def apply_diff(self, request: Request, args: dict) -> dict:
        query = parse_qs(request.query, keep_blank_values=True)
        layer = query.get("id", [""])[0]
        parent = query.get("parent", [""])[0] or None
        size = self.driver.apply_diff(layer, parent, request.body)
        request.note = f"applied {size} bytes"
        return {"Size": size}

    def diff_size(self, request: Request, args: dict) -> dict:
        return {"Size": self.driver.diff_size(_id(args), _parent(args))}

    # -- dispatch -------------------------------------------------------
    def dispatch(self, request: Request) -> None:
        route = self.routes.get(request.method)
        if route is None:
            request.send_json(404, _encode({"Err": f"{request.method} is not implemented "
                                                   "by this plugin"}))
            return
        try:
            args = {} if request.method == "GraphDriver.ApplyDiff" else _read_args(request)
            if args:
                request.note = json.dumps(args, sort_keys=True)[:300]
            reply = route(request, args)
        except BodyError as exc:
            request.note = str(exc)
            request.send_json(500, _encode({"Err": str(exc)}))
            return
        except DriverError as exc:
            if request.status:      # the stream already started; the connection is aborted
                log.error("%s failed while streaming: %s", request.method, exc)
                return
            message = str(exc) or type(exc).__name__
            request.note = f"{request.note} {type(exc).__name__}: {message}".lstrip()
            request.send_json(500, _encode({"Err": message}))
            return
        except Exception as exc:  # a bug or an OS error: answer it, keep the details in the log
            if request.status:
                raise
            log.exception("%s failed", request.method)
            request.send_json(500, _encode({"Err": f"{type(exc).__name__}: {exc}"}))
            return
        if not request.status:   # streaming routes answered already
            request.send_json(200, _encode(reply or {}))


def _encode(payload: dict) -> bytes:
    return json.dumps(payload, separators=(",", ":")).encode()


def _read_args(request: Request) -> dict:
    """The JSON request body; dockerd sends no Content-Type and omits empty fields."""
    raw = request.body.read(MAX_JSON + 1)
    if len(raw) > MAX_JSON:
        raise DriverError(f"request body larger than {MAX_JSON} bytes; "
                          "only ApplyDiff carries data")
    if not raw.strip():
        return {}
    try:
        args = json.loads(raw)
    except ValueError as exc:
        raise DriverError(f"malformed JSON request body: {exc}") from None
    if not isinstance(args, dict):
        raise DriverError("the request body must be a JSON object")
    return args


def _id(args: dict) -> str:
    layer = args.get("ID", "")
    if not isinstance(layer, str):
        raise InvalidLayerId(f"invalid layer id {layer!r}: not a string")
    return layer


def _parent(args: dict) -> str | None:
    parent = args.get("Parent") or None
    if parent is not None and not isinstance(parent, str):
        raise InvalidLayerId(f"invalid parent id {parent!r}: not a string")
    return parent


def _parse_opts(opts: Any) -> dict[str, str]:
    """Init's ``Opts``: dockerd's ``--storage-opt`` values as ``["k=v", ...]``."""
    result: dict[str, str] = {}
    for item in opts or []:
        if not isinstance(item, str) or "=" not in item:
            raise InvalidOption(f"storage option {item!r} is not of the form key=value")
        key, value = item.split("=", 1)
        result[key.strip().lower()] = value.strip()
    return result


# -- running it ----------------------------------------------------------
class PluginServer:
    """The plugin bound to its socket; ``serve_forever`` in any thread, ``close`` to stop."""

    def __init__(self, driver_name: str | None, home: str | os.PathLike | None,
                 options: Mapping[str, str] | None, socket_path: str | os.PathLike | None = None,
                 *, name: str | None = None, state_dir: str | os.PathLike | None = None,
                 metrics_addr: str | None = None):
        from graphdrivers.servers.notify import listen_fds
        self.name = name or plugin_name(driver_name)
        activated = listen_fds()
        if activated:   # systemd's socket unit listens; the path is its ListenStream=
            with socket.socket(fileno=os.dup(activated[0])) as listening:
                self.socket_path = Path(listening.getsockname())
        else:
            self.socket_path = Path(socket_path) if socket_path else default_socket(self.name)
        state = Path(state_dir or os.environ.get("GRAPHDRIVERS_PLUGIN_STATE") or STATE_DIR)
        self.plugin = GraphDriverPlugin(driver_name, home, options, state / f"{self.name}.json")
        self.http = UnixHTTPServer(self.socket_path, self.plugin.dispatch,
                                   listen_fd=activated[0] if activated else None)
        self.metrics = None
        if metrics_addr:
            self.start_metrics(metrics_addr)

    def start_metrics(self, address: str) -> None:
        """Count every request and serve the registry on ``address`` (HOST:PORT or unix:)."""
        from graphdrivers.servers.metrics import Metrics, MetricsEndpoint
        metrics = Metrics("docker_plugin", lambda: self.plugin._driver)
        self.http.observe = lambda method, status, seconds: metrics.observe(
            method.removeprefix("GraphDriver."), str(status) if status >= 400 else None, seconds)
        self.metrics = MetricsEndpoint(address, metrics.registry)

    def serve_forever(self) -> None:
        self.http.serve_forever(poll_interval=0.2)

    def shutdown(self) -> None:
        """Stop serve_forever (from another thread or a signal handler's helper thread)."""
        self.http.shutdown()

    def close(self, grace: float = 30.0) -> None:
        # Mounted layers stay mounted: running containers use them, and the next plugin
        # process (or dockerd's Cleanup) takes over. Only Cleanup unmounts.
        self.http.close(grace)
        if self.metrics is not None:
            self.metrics.close()
        if self.plugin._driver is not None:
            self.plugin._driver.release()   # the next server adopts the mounts


def _setup_logging() -> None:
    """Run as a library call (not from the CLI): stderr, info, debug with GRAPHDRIVERS_DEBUG=1."""
    from graphdrivers import logs
    if not logs.configured():
        debug = os.environ.get("GRAPHDRIVERS_DEBUG", "") not in ("", "0")
        logs.configure("debug" if debug else "info")


def serve(driver_name: str | None, home: str | os.PathLike | None,
          options: Mapping[str, str] | None, socket_path: str | os.PathLike | None,
          *, name: str | None = None, state_dir: str | os.PathLike | None = None,
          metrics_addr: str | None = None) -> None:
    """Serve the plugin until SIGTERM or SIGINT.

    ``home`` None keeps the layers where dockerd's Init says (``<data-root>/<name>``);
    a home given here wins over Init's. ``options`` are merged under Init's Opts.
    """
    from graphdrivers.servers.notify import notify, notify_when_ready
    _setup_logging()
    server = PluginServer(driver_name, home, options, socket_path, name=name,
                          state_dir=state_dir, metrics_addr=metrics_addr)
    stopping = threading.Event()

    def on_signal(signum, frame):
        if not stopping.is_set():
            stopping.set()
            log.info("signal %d: stopping", signum)
            notify("STOPPING=1")
            threading.Thread(target=server.shutdown, daemon=True).start()

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
    log.info("serving Docker graph driver plugin %r on unix://%s (dockerd --experimental "
             "--storage-driver %s)", server.name, server.socket_path, server.name)
    started = time.monotonic()
    notify_when_ready(lambda: answers(server.socket_path),
                      f"serving {server.name} on {server.socket_path}")
    try:
        server.serve_forever()
    finally:
        server.close()
        log.info("plugin %r stopped after %.0f s", server.name, time.monotonic() - started)


def answers(path: str | os.PathLike, timeout: float = 5.0) -> bool:
    """Whether the plugin answers /Plugin.Activate on ``path`` (the readiness probe)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(os.fspath(path))
        sock.sendall(b"POST /Plugin.Activate HTTP/1.1\r\nHost: plugin\r\n"
                     b"Content-Length: 0\r\nConnection: close\r\n\r\n")
        return sock.recv(64).startswith(b"HTTP/1.1 200 ")

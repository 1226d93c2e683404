"""systemd's service protocol, both halves, without libsystemd: readiness notification
(``Type=notify``: a datagram to ``$NOTIFY_SOCKET``) and socket activation (listening
sockets passed as fds 3.. with ``$LISTEN_FDS`` / ``$LISTEN_PID``), as sd_notify(3) and
sd_listen_fds(3) define them. Outside systemd both are no-ops.

READY=1 is sent only once the server has answered a real request on its own socket
(``notify_when_ready``), so a unit ordered before docker.service or containerd.service
really is serving when they start.
"""
from __future__ import annotations

import logging
import os
import socket
import threading
import time
from typing import Callable

log = logging.getLogger("graphdrivers.servers.notify")

LISTEN_FDS_START = 3


def notify(state: str) -> bool:
    """Send ``state`` ("READY=1", "STOPPING=1", "STATUS=...") to the service manager;
    False when not run by one (no $NOTIFY_SOCKET)."""
    address = os.environ.get("NOTIFY_SOCKET", "")
    if not address:
        return False
    if address.startswith("@"):          # an abstract socket address
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        try:
            sock.sendto(state.encode(), address)
        except OSError as exc:
            log.warning("sd_notify %s to %s: %s", state.split("\n")[0], address, exc)
            return False
    return True


def listen_fds() -> list[int]:
    """The sockets systemd passed to this process (socket activation), or []; the
    variables are removed so children do not take the fds for theirs."""
    pid, count = os.environ.get("LISTEN_PID", ""), os.environ.get("LISTEN_FDS", "")
    for name in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        os.environ.pop(name, None)
    if not pid.isdigit() or int(pid) != os.getpid() or not count.isdigit():
        return []
    fds = list(range(LISTEN_FDS_START, LISTEN_FDS_START + int(count)))
    for fd in fds:
        os.set_inheritable(fd, False)
    return fds


def notify_when_ready(answers: Callable[[], bool], status: str, *, timeout: float = 60.0,
                      interval: float = 0.05) -> threading.Thread | None:
    """In a thread: call ``answers`` (one real request to the server's socket) until it
    returns True, then send READY=1 with ``status``. Nothing without $NOTIFY_SOCKET.
    After ``timeout`` it gives up and logs; systemd's own start timeout then fails the
    unit."""
    if not os.environ.get("NOTIFY_SOCKET"):
        return None

    def wait() -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if answers():
                    notify(f"READY=1\nSTATUS={status}")
                    return
            except OSError:
                pass
            time.sleep(interval)
        log.error("the server did not answer on its own socket within %.0f s; "
                  "not reporting readiness", timeout)

    thread = threading.Thread(target=wait, name="sd-notify", daemon=True)
    thread.start()
    return thread

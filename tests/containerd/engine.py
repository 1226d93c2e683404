"""Debian's containerd 1.6 run by the tests, with everything of its own under a work dir.

Layout under ``work`` (sockets stay short: unix paths are limited to 108 bytes)::

    config.toml      version 2; CRI and the /opt plugin disabled; proxy snapshotters named
    root/ state/     containerd's --root and --state (built-in snapshotters live in root/)
    root.ext4        root/'s filesystem where ``work`` has no user.* xattrs (tmpfs before
                     Linux 6.6, the VM's TMPDIR), mounted in the namespace
    c.sock           the GRPC API that ctr talks to (--address), c.sock.ttrpc beside it
    fifo/ tmp/       ctr's I/O fifos, containerd's temporary mounts
    containerd.log

What containerd would still write outside (the shims' sockets are hard-coded
to /run/containerd/s, research/engine.md §4) and every mount it makes stay in
a private mount namespace with its own /run (``MountNamespace``), shared with
the graphdrivers snapshotter so that both see the same mounts, as on a host.
ctr runs there too: it mounts snapshots itself (``ctr run`` reads the image's
/etc/passwd and /etc/group through a temporary mount of the new snapshot), and a
snapshotter's mount sources may exist only in that namespace (devicemapper's
bind of a thin device's filesystem, which the snapshotter mounted there).
When the namespace's last process ends, its mounts go with it: nothing is left
mounted on the host whatever state a test dies in.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

CONTAINERD = shutil.which("containerd") or "/usr/bin/containerd"
CTR = shutil.which("ctr") or "/usr/bin/ctr"
NAMESPACE = "gde2e"
IN_VM = os.environ.get("GRAPHDRIVERS_IN_VM") == "1"
SLOW = 5 if IN_VM else 1          # TCG emulation in the device-mapper VM
SOCKET_MAX = 107


class EngineError(RuntimeError):
    pass


def missing_tools() -> str | None:
    """Why containerd cannot run here, or None."""
    if os.geteuid() != 0:
        return "needs root"
    for tool in ("containerd", "ctr", "runc", "containerd-shim-runc-v2", "unshare", "nsenter"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (apt-get install containerd runc)"
    if not os.path.exists("/bin/busybox"):
        return "busybox is not installed (apt-get install busybox-static)"
    return None


def short_path(path: Path) -> Path:
    if len(os.fsencode(path)) > SOCKET_MAX:
        raise EngineError(f"socket path longer than {SOCKET_MAX} bytes: {path}")
    return path


class MountNamespace:
    """A process holding a private mount namespace with a tmpfs on /run.

    Processes started through ``popen`` join it (nsenter execs, so the PID is the
    program's own); ``host_path`` reaches a path as the namespace sees it."""

    def __init__(self) -> None:
        script = "mount -t tmpfs -o mode=0755 gde2e-run /run && echo ready && exec sleep infinity"
        self.holder = subprocess.Popen(
            ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", script],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = self.holder.stdout.readline()
        if line.strip() != "ready":
            self.holder.kill()
            raise EngineError(f"no mount namespace: {self.holder.stderr.read()}")

    @property
    def pid(self) -> int:
        return self.holder.pid

    def command(self, argv: list[str]) -> list[str]:
        return ["nsenter", f"--target={self.pid}", "--mount", "--", *argv]

    def popen(self, argv: list[str], **kwargs) -> subprocess.Popen:
        return subprocess.Popen(self.command(argv), **kwargs)

    def run(self, argv: list[str], **kwargs) -> subprocess.CompletedProcess:
        kwargs.setdefault("capture_output", True)
        kwargs.setdefault("text", True)
        return subprocess.run(self.command(argv), **kwargs)

    def host_path(self, path: str | Path) -> Path:
        return Path(f"/proc/{self.pid}/root{os.fspath(path)}")

    def close(self) -> None:
        if self.holder.poll() is None:
            self.holder.kill()
        self.holder.wait()
        self.holder.stdout.close()
        self.holder.stderr.close()


@dataclass
class Containerd:
    """One containerd in ``work`` whose proxy snapshotters are ``proxies`` (name -> socket)."""
    work: Path
    mountns: MountNamespace
    proxies: dict[str, Path] = field(default_factory=dict)
    process: subprocess.Popen | None = None

    @property
    def address(self) -> Path:
        return short_path(self.work / "c.sock")

    @property
    def log(self) -> Path:
        return self.work / "containerd.log"

    def config(self) -> str:
        lines = [
            "version = 2",
            f'root = "{self.work / "root"}"',
            f'state = "{self.work / "state"}"',
            # CRI wants /var/lib/cni and friends; opt installs into /opt/containerd
            'disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.internal.v1.opt",'
            ' "io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.zfs",'
            ' "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.btrfs"]',
            "[grpc]", f'  address = "{self.address}"',
            "[ttrpc]", f'  address = "{self.address}.ttrpc"',
            "[debug]", '  address = ""', '  level = "debug"',
            "[metrics]", '  address = ""',
            "[proxy_plugins]",
        ]
        for name, sock in sorted(self.proxies.items()):
            lines += [f'  [proxy_plugins."{name}"]', '    type = "snapshot"',
                      f'    address = "{short_path(sock)}"']
        return "\n".join(lines) + "\n"

    def start(self) -> None:
        for sub in ("root", "state", "fifo", "tmp"):
            (self.work / sub).mkdir(parents=True, exist_ok=True)
        self._root_with_xattrs()
        config = self.work / "config.toml"
        config.write_text(self.config())
        env = dict(os.environ, TMPDIR=str(self.work / "tmp"))
        with open(self.log, "ab") as out:
            self.process = self.mountns.popen([CONTAINERD, "--config", str(config)],
                                              stdout=out, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + 30 * SLOW
        while self.ctr_result("version").returncode != 0:
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise EngineError(f"containerd did not start:\n{self.log.read_text()[-3000:]}")
            time.sleep(0.05)

    def _root_with_xattrs(self) -> None:
        """The built-in reference snapshotters keep their layers in root/: on a filesystem
        without user.* xattrs containerd drops the image's xattrs there without a word, and
        the reference would differ from graphdrivers. Such a root gets an ext4 of its own,
        mounted in the namespace (so it goes with it); a restart finds it mounted."""
        root = self.work / "root"
        if user_xattrs(self.mountns.host_path(root)):
            return
        image = self.work / "root.ext4"
        with open(image, "wb") as f:
            f.truncate(1 << 30)
        for argv in (["mkfs.ext4", "-q", "-F", "-E", "nodiscard", str(image)],
                     ["mount", "-o", "loop", str(image), str(root)]):
            done = self.mountns.run(argv)
            if done.returncode != 0:
                raise EngineError(f"{' '.join(argv)} failed: {done.stderr.strip()}")

    def ctr_argv(self, *args: str) -> list[str]:
        return [CTR, "--address", str(self.address), "--namespace", NAMESPACE, *args]

    def ctr_result(self, *args: str, input: bytes | None = None,
                   timeout: float = 120) -> subprocess.CompletedProcess:
        """ctr in the engine's mount namespace (see the module docstring)."""
        return self.mountns.run(self.ctr_argv(*args), input=input, text=False,
                                timeout=timeout * SLOW, env=self.ctr_env())

    def ctr_env(self) -> dict[str, str]:
        """ctr's temporary mounts go to $XDG_RUNTIME_DIR if set (the VM sets /run/user/0,
        which the namespace's own /run lacks), else to $TMPDIR: the work dir's tmp/."""
        env = dict(os.environ, TMPDIR=str(self.work / "tmp"))
        env.pop("XDG_RUNTIME_DIR", None)
        return env

    def ctr(self, *args: str, timeout: float = 120) -> str:
        """Run ctr; its stdout as text, or EngineError with its stderr."""
        done = self.ctr_result(*args, timeout=timeout)
        if done.returncode != 0:
            raise EngineError(f"ctr {' '.join(args)} failed ({done.returncode}): "
                              f"{done.stderr.decode(errors='replace').strip()}")
        return done.stdout.decode(errors="replace")

    def ctr_bytes(self, *args: str, timeout: float = 120) -> bytes:
        done = self.ctr_result(*args, timeout=timeout)
        if done.returncode != 0:
            raise EngineError(f"ctr {' '.join(args)} failed ({done.returncode}): "
                              f"{done.stderr.decode(errors='replace').strip()}")
        return done.stdout

    def run(self, snapshotter: str, ref: str, cid: str, script: str, *, keep: bool = False) -> str:
        """``ctr run`` a container (removed afterwards unless ``keep``); its output."""
        # ctr makes the I/O fifos itself (kept in the work dir with the rest); runc's
        # state goes to /run/containerd/runc, which is the namespace's own tmpfs
        args = ["run", "--snapshotter", snapshotter, "--fifo-dir", str(self.work / "fifo"),
                "--cgroup", f"/gde2e-{os.getpid()}-{cid}"]
        if not keep:
            args.append("--rm")
        return self.ctr(*args, ref, cid, "sh", "-c", script)

    def collect_garbage(self) -> None:
        """One whole garbage collection, started now, snapshotter backends included;
        returns when it has ended (ctr 1.6 has no gc command: deleting a lease with
        --sync runs the collector and waits for it, services/leases/local.go).

        Needed before comparing a backend with ``ctr snapshots ls``: a snapshot
        removed while a collection is cleaning its snapshotter stays in the backend
        until the next removal there. That collection listed the backend before the
        removal (metadata/snapshot.go: Remove waits on the lock the walk holds and
        commits once it is released, before the collection's Cleanup call), and the
        scheduler drops the removal's event as older than the collection's end
        (gc/scheduler: ``last`` is taken after GarbageCollect returns, and events
        before the last collection are skipped). Seen as layer5 left in the
        snapshotter after the cycle's last rm."""
        lease = self.ctr("leases", "create", "--expires", "0").strip()
        self.ctr("leases", "delete", "--sync", lease)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Stop containerd by its PID; then any shim that still names its socket."""
        if self.process is not None and self.process.poll() is None:
            if sig == signal.SIGTERM:
                self._remove_tasks()
            self.process.send_signal(sig)
            try:
                self.process.wait(30 * SLOW)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        for pid in own_shims(self.address):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.process = None

    def _remove_tasks(self) -> None:
        """Kill what still runs in our namespace so that its shims exit."""
        done = self.ctr_result("tasks", "ls", "-q", timeout=30)
        for task in done.stdout.decode().split():
            self.ctr_result("tasks", "kill", "-s", "SIGKILL", task, timeout=30)
            self.ctr_result("tasks", "rm", "-f", task, timeout=30)


def user_xattrs(path: Path) -> bool:
    """Whether the filesystem of directory ``path`` stores user.* xattrs."""
    try:
        os.setxattr(path, "user.gde2e-probe", b"1")
        os.removexattr(path, "user.gde2e-probe")
    except OSError:
        return False
    return True


def own_shims(address: Path) -> list[int]:
    """PIDs of the shims started by the containerd on ``address`` (their -address names it)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv and argv[0].endswith(b"containerd-shim-runc-v2") and os.fsencode(address) in argv:
            found.append(int(entry.name))
    return found


def snapshot_list(engine: Containerd, snapshotter: str) -> list[tuple[str, str, str]]:
    """``ctr snapshots ls`` as sorted (key, parent, kind) rows."""
    rows = []
    for line in engine.ctr("snapshots", "--snapshotter", snapshotter, "ls").splitlines()[1:]:
        fields = line.split()          # KEY [PARENT] KIND: a snapshot without parent has two
        rows.append((fields[0], fields[1] if len(fields) == 3 else "", fields[-1]))
    return sorted(rows)


def snapshot_info(engine: Containerd, snapshotter: str, key: str) -> dict:
    return json.loads(engine.ctr("snapshots", "--snapshotter", snapshotter, "info", key))

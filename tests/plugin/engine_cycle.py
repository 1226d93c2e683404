"""The real-engine cycle: dockerd 20.10 storing its layers through `graphdrivers serve`.

Used by test_plugin_engine.py and scripts/docker-e2e. One ``Engine`` is one
dockerd with its own data root, exec root and API socket under a work
directory; ``run_cycle`` drives it through import, run, diff, commit, save,
rmi, load and a final run, and returns what it saw so that a plugin run and a
built-in run can be compared. ``HostTraces`` removes what dockerd writes
outside its roots (research/engine.md §1) if it was not there before.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

DOCKERD = shutil.which("dockerd")
DOCKER = "/usr/bin/docker" if os.path.exists("/usr/bin/docker") else shutil.which("docker")
BUSYBOX = "/bin/busybox"
PLUGIN_DIR = Path("/run/docker/plugins")
# In the device-mapper VM (scripts/vm-test, qemu without KVM) everything is ~10x
# slower and dockerd's own containerd start times out: start containerd first.
IN_VM = os.environ.get("GRAPHDRIVERS_IN_VM") == "1"
OWN_CONTAINERD = IN_VM
SLOW = 5 if IN_VM else 1

# run 1 adds, changes and deletes; run 2 changes what run 1 added
RUN1 = ("echo layer2 > /root/f2; mkdir /data; echo x > /data/x; rm /bin/vi; "
        "echo 'guest:x:1000:1000::/tmp:/bin/sh' >> /etc/passwd; mkdir -p /opt/deep/er; "
        "echo d > /opt/deep/er/file; chmod 4755 /opt/deep/er/file")
DIFF1 = sorted(["C /bin", "D /bin/vi", "A /data", "A /data/x", "C /etc", "C /etc/passwd",
         "A /opt", "A /opt/deep", "A /opt/deep/er", "A /opt/deep/er/file", "C /root", "A /root/f2"])
RUN2 = ("echo layer3 > /root/f3; rm /data/x; ln -s f3 /root/l3; echo v2 > /root/f2; "
        "rm -r /opt/deep")
DIFF2 = sorted(["C /data", "D /data/x", "C /opt", "D /opt/deep", "C /root", "C /root/f2",
         "A /root/f3", "A /root/l3"])
CHECK = ("cat /root/f2 /root/f3; readlink /root/l3; ls /data | wc -l; "
         "test -e /bin/vi || echo vi-gone; tail -1 /etc/passwd; ls /opt | wc -l; "
         "test -e /opt/deep || echo deep-gone; /bin/ls / >/dev/null && echo ls-ok")
CHECK_OUT = "v2\nlayer3\nf3\n0\nvi-gone\nguest:x:1000:1000::/tmp:/bin/sh\n0\ndeep-gone\nls-ok\n"
# per-container files dockerd writes itself: their content differs between any two runs
VOLATILE = {"etc/hostname", "etc/hosts", "etc/resolv.conf", ".dockerenv"}


class EngineError(RuntimeError):
    pass


# Progress lines for long runs (the VM): appended to this file when its directory
# exists, e.g. scripts/vm-test --vm-rwdir /tmp/gd-e2e-progress ...
PROGRESS = Path(os.environ.get("GRAPHDRIVERS_E2E_PROGRESS", "/tmp/gd-e2e-progress/log"))


def progress(line: str) -> None:
    if PROGRESS.parent.is_dir():
        with open(PROGRESS, "a") as f:
            f.write(f"{time.strftime('%H:%M:%S')} {line}\n")


def missing_tools() -> str | None:
    """Why the cycle cannot run here, or None."""
    if os.geteuid() != 0:
        return "needs root"
    if DOCKERD is None:
        return "dockerd is not installed (apt-get install docker.io)"
    if DOCKER is None:
        return "the docker CLI is not installed (apt-get install docker.io)"
    if not os.path.exists(BUSYBOX):
        return "busybox is not installed (apt-get install busybox-static)"
    return None


def busybox_tar(work: Path) -> Path:
    """A tiny root filesystem image from the static busybox: no network needed."""
    root = work / "rootfs"
    for d in ("bin", "etc", "tmp", "proc", "sys", "dev", "root"):
        (root / d).mkdir(parents=True, exist_ok=True)
    shutil.copy2(BUSYBOX, root / "bin" / "busybox")
    applets = subprocess.run([BUSYBOX, "--list"], capture_output=True, text=True,
                             check=True).stdout.split()
    for applet in applets:
        if applet != "busybox" and not (root / "bin" / applet).exists():
            os.symlink("busybox", root / "bin" / applet)
    (root / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    (root / "etc" / "group").write_text("root:x:0:\n")
    out = work / "busybox-rootfs.tar"
    with tarfile.open(out, "w") as tar:
        for entry in sorted(os.listdir(root)):
            tar.add(root / entry, arcname=entry)
    return out


class HostTraces:
    """Record which host paths exist before dockerd starts; remove the new ones after."""

    FILES = [Path("/etc/docker/key.json")]
    DIRS = [Path("/run/docker"), Path("/run/containerd"), Path("/etc/docker/plugins"),
            Path("/run/graphdrivers")]

    def __init__(self):
        self.had = {p: p.exists() for p in self.FILES + self.DIRS}
        self.cgroups = set(self._cgroup_dirs())

    @staticmethod
    def _cgroup_dirs() -> list[Path]:
        found = list(Path("/sys/fs/cgroup").glob("*/docker")) + [Path("/sys/fs/cgroup/docker")]
        return [p for p in found if p.is_dir()]

    def clean(self) -> list[str]:
        removed = []
        for path in self.FILES:
            if not self.had[path] and path.exists():
                path.unlink()
                removed.append(str(path))
        for path in self.DIRS:
            if not self.had[path] and path.exists():
                shutil.rmtree(path, ignore_errors=True)
                removed.append(str(path))
        for cg in self._cgroup_dirs():
            if cg in self.cgroups:
                continue
            for sub in sorted(cg.rglob("*"), key=lambda p: -len(p.parts)):  # deepest first
                if sub.is_dir():
                    with contextlib.suppress(OSError):
                        sub.rmdir()
            with contextlib.suppress(OSError):
                cg.rmdir()
                removed.append(str(cg))
        return removed


def unmount_under(path: Path) -> None:
    """Undo mounts dockerd (or a driver) left below ``path``, deepest first."""
    from graphdrivers.kernel import mount
    mount.unmount_all_under(path)


@dataclass
class Plugin:
    process: subprocess.Popen
    name: str
    socket: Path
    log: Path

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()


def start_plugin(driver: str, work: Path, *, home: Path, spec_file: bool) -> Plugin:
    """`graphdrivers serve` as dockerd's plugin: at the default socket under
    /run/docker/plugins, or (``spec_file``) on a socket in ``work`` announced by
    /etc/docker/plugins/<name>.spec."""
    name = f"graphdrivers-{driver}"
    sock = (work / "gd.sock") if spec_file else PLUGIN_DIR / f"{name}.sock"
    log = work / "plugin.log"
    env = dict(os.environ, GRAPHDRIVERS_DEBUG="1", GRAPHDRIVERS_PLUGIN_STATE=str(work / "state"))
    cmd = [sys.executable, "-c", "import sys; from graphdrivers.cli import main; "
           "sys.exit(main(sys.argv[1:]))", "serve", "--driver", driver, "--home", str(home)]
    if spec_file:
        cmd += ["--socket", str(sock)]
    with open(log, "ab") as out:
        process = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
    plugin = Plugin(process, name, sock, log)
    deadline = time.monotonic() + 30 * SLOW
    while not sock.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            plugin.stop()
            raise EngineError(f"the plugin did not start:\n{log.read_text()[-3000:]}")
        time.sleep(0.02)
    if spec_file:
        Path("/etc/docker/plugins").mkdir(parents=True, exist_ok=True)
        (Path("/etc/docker/plugins") / f"{name}.spec").write_text(f"unix://{sock}\n")
    return plugin


class Engine:
    """One dockerd with everything of its own under ``work``."""

    def __init__(self, work: Path, storage_driver: str, *, experimental: bool,
                 storage_opts: tuple[str, ...] = ()):
        self.work = work
        self.data = work / "data"
        self.exec_root = work / "exec"
        self.sock = work / "docker.sock"
        self.log = work / "dockerd.log"
        self.storage_driver = storage_driver
        self.experimental = experimental
        self.storage_opts = storage_opts
        self.process: subprocess.Popen | None = None
        self.containerd: subprocess.Popen | None = None

    def _start_containerd(self) -> str:
        """containerd of our own, for dockerd --containerd (research/engine.md §3)."""
        root = self.work / "ctrd"
        root.mkdir(parents=True, exist_ok=True)
        sock = root / "ctrd.sock"
        (root / "config.toml").write_text(
            f'version = 2\nroot = "{root}/root"\nstate = "{root}/state"\n'
            'disabled_plugins = ["io.containerd.grpc.v1.cri"]\n'
            f'[grpc]\n  address = "{sock}"\n[ttrpc]\n  address = "{sock}.ttrpc"\n')
        with open(self.work / "containerd.log", "ab") as out:
            self.containerd = subprocess.Popen(
                [shutil.which("containerd"), "--config", str(root / "config.toml")],
                stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + SLOW * 60
        while subprocess.run(["ctr", "--address", str(sock), "version"],
                             capture_output=True).returncode != 0:
            if self.containerd.poll() is not None or time.monotonic() > deadline:
                raise EngineError("containerd did not start:\n"
                                  + (self.work / "containerd.log").read_text()[-3000:])
            time.sleep(0.2)
        return str(sock)

    def start(self) -> None:
        progress(f"starting dockerd --storage-driver {self.storage_driver}")
        self.work.mkdir(parents=True, exist_ok=True)
        (self.work / "daemon.json").write_text("{}\n")   # never read /etc/docker/daemon.json
        extra = ["--containerd", self._start_containerd()] if OWN_CONTAINERD else []
        cmd = [DOCKERD, *extra, "--config-file", str(self.work / "daemon.json"),
               "--data-root", str(self.data), "--exec-root", str(self.exec_root),
               "-H", f"unix://{self.sock}", "--pidfile", str(self.work / "dockerd.pid"),
               "--storage-driver", self.storage_driver,
               "--bridge", "none", "--iptables=false", "--ip6tables=false",
               "--ip-masq=false", "--userland-proxy=false"]
        cmd += ["--experimental"] if self.experimental else []
        for opt in self.storage_opts:
            cmd += ["--storage-opt", opt]
        with open(self.log, "ab") as out:
            self.process = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60 * SLOW
        while True:
            if self.process.poll() is not None:
                raise EngineError(f"dockerd exited with {self.process.returncode}:\n"
                                  f"{self.log.read_text()[-3000:]}")
            ok = subprocess.run([DOCKER, "-H", f"unix://{self.sock}", "version"],
                                capture_output=True).returncode == 0
            if ok:
                progress(f"dockerd ready ({self.storage_driver})")
                return
            if time.monotonic() > deadline:
                raise EngineError(f"dockerd not ready after {60 * SLOW} s:\n{self.log.read_text()[-3000:]}")
            time.sleep(0.1)

    def stop(self) -> None:
        for attr in ("process", "containerd"):      # dockerd first, then its containerd
            proc = getattr(self, attr)
            if proc is None:
                continue
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(60 * SLOW)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            setattr(self, attr, None)

    def docker(self, *args: str, check: bool = True) -> str:
        result = subprocess.run([DOCKER, "-H", f"unix://{self.sock}", *args],
                                capture_output=True, text=True, timeout=300 * SLOW)
        if check and result.returncode != 0:
            raise EngineError(f"docker {' '.join(args)} failed ({result.returncode}): "
                              f"{result.stderr.strip()}")
        return result.stdout


@dataclass
class CycleResult:
    storage_driver: str
    diff1: list[str] = field(default_factory=list)
    diff2: list[str] = field(default_factory=list)
    check: str = ""
    files: dict[str, tuple] = field(default_factory=dict)   # final image, as docker export shows it
    info: dict[str, str] = field(default_factory=dict)
    steps: dict[str, float] = field(default_factory=dict)
    cycle_seconds: float = 0.0
    total_seconds: float = 0.0


def export_listing(engine: Engine, image: str) -> dict[str, tuple]:
    """Every file of an image, from `docker export` of a container made from it."""
    cid = engine.docker("create", "--pull", "never", "--network", "none", image).strip()
    try:
        out = subprocess.run([DOCKER, "-H", f"unix://{engine.sock}", "export", cid],
                             capture_output=True, check=True, timeout=120 * SLOW).stdout
    finally:
        engine.docker("rm", cid)
    files = {}
    with tarfile.open(fileobj=io.BytesIO(out)) as tar:
        for m in tar:
            name = m.name.rstrip("/")
            digest = ""
            if m.isfile() and name not in VOLATILE:
                digest = hashlib.sha256(tar.extractfile(m).read()).hexdigest()[:16]
            files[name] = (m.type.decode(), oct(m.mode), m.uid, m.gid, m.linkname, digest)
    return files


def run_cycle(engine: Engine, rootfs_tar: Path,
              restart: "Callable[[], None] | None" = None) -> CycleResult:
    """import → run (A/C/D) → diff → commit → run → diff → commit → save → rm/rmi →
    load → final run checking every layer's files → listing → rmi. A container
    stays up across ``restart`` (a plugin restart) between the two runs."""
    result = CycleResult(engine.storage_driver)
    d = engine.docker
    run = ("run", "--pull", "never", "--network", "none")

    def step(label: str, *args: str) -> str:
        t = time.monotonic()
        out = d(*args)
        result.steps[label] = round(time.monotonic() - t, 3)
        progress(f"{engine.storage_driver} {label} {result.steps[label]} s")
        return out

    start = time.monotonic()
    step("import", "import", str(rootfs_tar), "bb:1")
    step("run1", *run, "--name", "c1", "bb:1", "sh", "-c", RUN1)
    result.diff1 = sorted(step("diff1", "diff", "c1").splitlines())   # docker prints map order
    step("commit1", "commit", "c1", "bb:2")
    # a container that stays up (its layer mounted) across a plugin restart
    step("run-bg", *run, "-d", "--name", "bg", "bb:2", "sh", "-c",
         "echo bg > /root/bg; exec sleep 600")
    if restart is not None:
        t = time.monotonic()
        restart()
        result.steps["plugin-restart"] = round(time.monotonic() - t, 3)
    deadline = time.monotonic() + 20 * SLOW
    while d("exec", "bg", "cat", "/root/bg", check=False).strip() != "bg":
        if time.monotonic() > deadline:
            raise EngineError("the running container lost its file across the plugin restart")
        time.sleep(0.1)
    if "A /root/bg" not in step("diff-bg", "diff", "bg").splitlines():
        raise EngineError("docker diff of the running container misses /root/bg")
    step("stop-bg", "rm", "-f", "bg")
    step("run2", *run, "--name", "c2", "bb:2", "sh", "-c", RUN2)
    result.diff2 = sorted(step("diff2", "diff", "c2").splitlines())
    step("commit2", "commit", "-c", 'CMD ["cat","/root/f3"]', "c2", "bb:3")
    saved = engine.work / "bb3.tar"
    step("save", "save", "-o", str(saved), "bb:3")
    step("rm", "rm", "c1", "c2")
    step("rmi", "rmi", "bb:3", "bb:2", "bb:1")
    step("load", "load", "-i", str(saved))
    result.check = step("final-run", *run, "--rm", "bb:3", "sh", "-c", CHECK)
    assert d(*run, "--rm", "bb:3").strip() == "layer3"          # the committed CMD
    result.files = export_listing(engine, "bb:3")
    step("final-rmi", "rmi", "bb:3")
    result.cycle_seconds = round(time.monotonic() - start, 2)
    info = json.loads(d("info", "--format", "{{json .}}"))
    result.info = {"Driver": info.get("Driver"),
                   **{k: v for k, v in info.get("DriverStatus") or []}}
    leftovers = d("ps", "-aq").split() + d("images", "-q").split()
    if leftovers:
        raise EngineError(f"containers or images left after the cycle: {leftovers}")
    return result


@contextlib.contextmanager
def workspace(base: Path | None = None) -> Iterator[Path]:
    """A short work directory (unix socket paths must stay under 108 bytes)."""
    import tempfile
    work = Path(tempfile.mkdtemp(prefix="gde2e-", dir=base))   # $TMPDIR, else /tmp
    try:
        yield work
    finally:
        unmount_under(work)
        shutil.rmtree(work, ignore_errors=True)


def cycle_builtin(driver: str, work: Path, rootfs_tar: Path) -> CycleResult:
    """The reference: dockerd's own driver of the same name."""
    traces = HostTraces()
    engine = Engine(work / "builtin", driver, experimental=False)
    started = time.monotonic()
    try:
        engine.start()
        result = run_cycle(engine, rootfs_tar)
    finally:
        engine.stop()
        unmount_under(engine.work)
        traces.clean()
    result.total_seconds = round(time.monotonic() - started, 2)
    return result


def cycle_plugin(driver: str, work: Path, rootfs_tar: Path, *, spec_file: bool = False,
                 storage_opts: tuple[str, ...] = ()) -> CycleResult:
    """dockerd --experimental with `graphdrivers serve --driver <driver>` as its storage."""
    traces = HostTraces()
    plugin_work = work / "plugin"
    plugin_work.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    plugins = [start_plugin(driver, plugin_work, home=plugin_work / "gdhome", spec_file=spec_file)]
    engine = Engine(plugin_work, plugins[0].name, experimental=True, storage_opts=storage_opts)

    def restart() -> None:
        """dockerd keeps running and sends no Activate/Init to the new process."""
        if plugins[-1].stop() != 0:
            raise EngineError(f"the plugin exited badly:\n{plugins[-1].log.read_text()[-3000:]}")
        plugins.append(start_plugin(driver, plugin_work, home=plugin_work / "gdhome",
                                    spec_file=spec_file))

    try:
        engine.start()
        result = run_cycle(engine, rootfs_tar, restart)
    finally:
        engine.stop()
        code = plugins[-1].stop()
        plugin = plugins[-1]
        unmount_under(engine.work)
        if spec_file:
            (Path("/etc/docker/plugins") / f"{plugin.name}.spec").unlink(missing_ok=True)
        traces.clean()
    if code != 0:
        raise EngineError(f"the plugin exited with {code}:\n{plugin.log.read_text()[-3000:]}")
    result.total_seconds = round(time.monotonic() - started, 2)
    return result


def compare(builtin: CycleResult, plugin: CycleResult) -> list[str]:
    """Differences a user could see between the two runs (empty when none)."""
    problems = []
    for label in ("diff1", "diff2", "check"):
        if getattr(builtin, label) != getattr(plugin, label):
            problems.append(f"{label}: built-in {getattr(builtin, label)!r} "
                            f"!= plugin {getattr(plugin, label)!r}")
    for name in sorted(set(builtin.files) | set(plugin.files)):
        if builtin.files.get(name) != plugin.files.get(name):
            problems.append(f"file {name}: built-in {builtin.files.get(name)} "
                            f"!= plugin {plugin.files.get(name)}")
    return problems


def main(argv: list[str]) -> int:
    import argparse
    parser = argparse.ArgumentParser(description="dockerd 20.10 on graphdrivers vs built-in")
    parser.add_argument("drivers", nargs="*", default=["vfs", "overlay2"])
    args = parser.parse_args(argv)
    why = missing_tools()
    if why:
        print(f"docker-e2e: cannot run: {why}", file=sys.stderr)
        return 2
    failed = False
    with workspace() as work:
        tar = busybox_tar(work)
        for driver in args.drivers:
            with contextlib.ExitStack() as stack:
                base = work / driver
                if driver == "btrfs":   # both data roots on a btrfs loop filesystem
                    from graphdrivers.btrfs.testing import filesystem
                    base = stack.enter_context(filesystem(work))
                ref = cycle_builtin(driver, base / "ref", tar)
                got = cycle_plugin(driver, base / "gd", tar, spec_file=(driver != "vfs"))
            problems = compare(ref, got)
            problems += [f"plugin diff1 {got.diff1} != expected"] if got.diff1 != DIFF1 else []
            problems += [f"plugin diff2 {got.diff2} != expected"] if got.diff2 != DIFF2 else []
            problems += [f"final run printed {got.check!r}"] if got.check != CHECK_OUT else []
            print(f"{driver}: built-in cycle {ref.cycle_seconds} s (total {ref.total_seconds} s); "
                  f"plugin {got.storage_driver} cycle {got.cycle_seconds} s "
                  f"(total {got.total_seconds} s); {len(got.files)} files compared; "
                  + ("OK" if not problems else "DIFFERENT"))
            print(f"  built-in steps: {ref.steps}\n  plugin steps:   {got.steps}")
            print(f"  docker info (plugin): {got.info}")
            for p in problems:
                print("  " + p)
            failed = failed or bool(problems)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

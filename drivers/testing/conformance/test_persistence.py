"""State survives the process: reload in a new process, and recovery after SIGKILL in apply_diff."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import graphdrivers
from graphdrivers.kernel.mount import MNT_DETACH, mounts_under, umount

from .helpers import TarBuilder, build_rich_tree, content, mounted, snapshot, write, xattrs_supported

READER = textwrap.dedent("""
    import json, sys
    import graphdrivers
    from graphdrivers.testing.conformance.helpers import snapshot
    name, home, options = json.loads(sys.argv[1])
    with graphdrivers.load(name, home, options) as d:
        out = {}
        for layer in sorted(d.layers()):
            root = d.mount(layer)
            try:
                tree = {p: repr(e) for p, e in snapshot(root).items()}
            finally:
                d.unmount(layer)
            out[layer] = {"parent": d.parent(layer), "exists": d.exists(layer), "tree": tree}
    print(json.dumps(out))
""")


def _run(script: str, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", script, *args], capture_output=True,
                          text=True, timeout=timeout)


def test_reload_in_new_process(driver_name, home_and_options):
    home, options = home_and_options
    expected = {}
    with graphdrivers.load(driver_name, home, options) as d:
        d.create("base")
        with mounted(d, "base") as root:
            build_rich_tree(root, xattrs=xattrs_supported(root) is None)
        d.create("child", "base")
        with mounted(d, "child") as root:
            write(root, "etc/hosts", "changed in child")
            os.unlink(root / "empty")
        d.create("grandchild", "child", rw=True)
        with mounted(d, "grandchild") as root:
            write(root, "only-in-grandchild", content(9, 1234))
        for layer in ("base", "child", "grandchild"):
            with mounted(d, layer) as root:
                expected[layer] = {p: repr(e) for p, e in snapshot(root).items()}
    result = _run(READER, json.dumps([driver_name, str(home), options]))
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout)
    assert sorted(seen) == ["base", "child", "grandchild"]
    assert [seen[x]["parent"] for x in ("base", "child", "grandchild")] == [None, "base", "child"]
    for layer, tree in expected.items():
        assert seen[layer]["exists"]
        assert seen[layer]["tree"] == tree, f"{layer} reads differently after a reload"
    # and this process can load it again after the other one is gone
    with graphdrivers.load(driver_name, home, options) as d:
        d.remove("grandchild")
        assert sorted(d.layers()) == ["base", "child"]


KILLED = textwrap.dedent("""
    import io, json, sys, time
    import graphdrivers
    name, home, options, small, big, ready, limit = json.loads(sys.argv[1])

    class Stall(io.RawIOBase):
        # hands out the tar up to `limit` bytes, then blocks forever
        def __init__(self, path):
            self.f = open(path, "rb")
            self.pos = 0
        def readable(self):
            return True
        def readinto(self, buf):
            if self.pos >= limit:
                open(ready, "w").close()
                time.sleep(3600)
            view = memoryview(buf)[:limit - self.pos]
            n = self.f.readinto(view)
            self.pos += n
            return n

    d = graphdrivers.load(name, home, options)
    d.create("done")
    with open(small, "rb") as f:
        d.apply_diff("done", None, f)
    d.create("big", "done")
    d.apply_diff("big", "done", io.BufferedReader(Stall(big)))
    print("apply_diff returned although its stream never ended")
""")

BIG_FILES = 160
BIG_FILE_SIZE = 48 * 1024


def _big_tar(path: Path) -> None:
    builder = TarBuilder()
    for i in range(BIG_FILES):
        builder.file(f"data/{i // 40}/file-{i}", content(i, BIG_FILE_SIZE))
    path.write_bytes(builder.bytes())


def test_sigkill_during_apply_diff(driver_name, home_and_options, tmp_path):
    home, options = home_and_options
    small, big, ready = tmp_path / "small.tar", tmp_path / "big.tar", tmp_path / "ready"
    small.write_bytes(TarBuilder().file("etc/os-release", "ID=test\n").dir("var/empty")
                      .bytes())
    _big_tar(big)
    args = [driver_name, str(home), options, str(small), str(big), str(ready),
            big.stat().st_size // 2]
    mounts_before = set(mounts_under(home))
    proc = subprocess.Popen([sys.executable, "-c", KILLED, json.dumps(args)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not ready.exists():
            if proc.poll() is not None:
                out, err = proc.communicate()
                raise AssertionError(f"writer ended early ({proc.returncode}): {out}{err}")
            assert time.monotonic() < deadline, "apply_diff never got half way"
            time.sleep(0.05)
        time.sleep(0.2)   # let it write what it already read
    finally:
        proc.send_signal(signal.SIGKILL)   # our own child, by pid
        proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    try:
        with graphdrivers.load(driver_name, home, options) as d:
            assert d.exists("done")
            with mounted(d, "done") as root:
                assert (root / "etc/os-release").read_bytes() == b"ID=test\n"
                assert (root / "var/empty").is_dir()
            if d.exists("big"):
                d.remove("big")
            assert not d.exists("big")
            d.create("big", "done")
            with big.open("rb") as f:
                assert d.apply_diff("big", "done", f) == BIG_FILES * BIG_FILE_SIZE
            with mounted(d, "big") as root:
                assert (root / "data/3/file-159").read_bytes() == content(159, BIG_FILE_SIZE)
                assert (root / "etc/os-release").exists()
    finally:
        # a dead process cannot unmount; never leak its mounts past the test
        for target in mounts_under(home):
            if target not in mounts_before:
                umount(target, MNT_DETACH)


def test_load_and_cleanup_again_and_again_keep_no_files_open(driver_name, home_and_options):
    """An engine (or a plugin that is Init'ed again) may load the same home many times in
    one process: each load and cleanup must give back what it opened (the lock files
    it keeps between operations once leaked two per instance here, and a power-cut
    campaign loading 500 times ran out of file descriptors)."""
    home, options = home_and_options
    drv = graphdrivers.load(driver_name, home, options)
    drv.create("fd-base")
    drv.create("fd-child", "fd-base", rw=True)
    drv.cleanup()

    def cycle():
        d = graphdrivers.load(driver_name, home, options)
        for layer in ("fd-base", "fd-child"):
            d.mount(layer)
            d.unmount(layer)
        d.cleanup()
    cycle()                                  # caches of the first load (probes, modules)
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(10):
        cycle()
    assert len(os.listdir("/proc/self/fd")) <= before, "file descriptors leaked per load"
    drv = graphdrivers.load(driver_name, home, options)
    drv.remove("fd-child")
    drv.remove("fd-base")
    drv.cleanup()

"""The ``graphdrivers`` command line, run in subprocesses like an operator would.

Most cases use the vfs driver on a temporary home; the mount-across-processes
case runs for every driver that really mounts (overlay2, btrfs, ...) and can
run here.
"""
from __future__ import annotations

import json
import os
import pathlib
import pty
import signal
import subprocess
import sys
import tarfile
import time

import pytest

import graphdrivers
from graphdrivers.testing.homes import driver_home
from graphdrivers.testing.selection import driver_names
from graphdrivers.kernel.mount import is_mountpoint, unmount_all_under

CLI = [sys.executable, "-m", "graphdrivers.cli"]


def run(*args: str, input: bytes | None = None, check: bool = True,
        **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(CLI + list(args), input=input, capture_output=True,
                            timeout=120, **kwargs)
    if check and result.returncode != 0:
        raise AssertionError(f"{args} exited {result.returncode}: {result.stderr.decode()}")
    return result


def assert_one_line_error(result: subprocess.CompletedProcess, *words: str) -> str:
    err = result.stderr.decode()
    assert result.returncode != 0, result
    assert "Traceback" not in err, err
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("graphdrivers: error: "), err
    for word in words:
        assert word in lines[0], err
    return lines[0]


@pytest.fixture
def home(tmp_path) -> pathlib.Path:
    return tmp_path / "home"


@pytest.fixture
def vfs(home):
    """Global options selecting vfs on the temp home."""
    return ["--home", str(home), "--driver", "vfs"]


def make_base(vfs) -> pathlib.Path:
    """A base layer with a small tree, written through `layer mount`."""
    run(*vfs, "layer", "create", "base")
    root = pathlib.Path(run(*vfs, "layer", "mount", "base").stdout.decode().strip())
    (root / "etc").mkdir()
    (root / "etc/hosts").write_text("127.0.0.1 localhost\n")
    (root / "gone.txt").write_text("to be deleted\n")
    (root / "keep").mkdir()
    run(*vfs, "layer", "unmount", "base")
    return root


def make_layers_in_process(home: pathlib.Path) -> None:
    """The same base and snap as make_base + make_snapshot, through the library (faster)."""
    with graphdrivers.load("vfs", home) as drv:
        drv.create("base")
        root = drv.mount("base")
        (root / "etc").mkdir()
        (root / "etc/hosts").write_text("127.0.0.1 localhost\n")
        (root / "gone.txt").write_text("to be deleted\n")
        (root / "keep").mkdir()
        drv.unmount("base")
        drv.create("snap", "base")
        root = drv.mount("snap")
        (root / "etc/hosts").write_text("127.0.0.1 localhost\n10.0.0.1 db\n")
        (root / "gone.txt").unlink()
        (root / "keep/new.txt").write_text("new\n")
        drv.unmount("snap")


def test_layer_ls_shows_mode_and_who_holds_a_layer_mounted(vfs, home):
    run(*vfs, "layer", "create", "ro-layer")
    run(*vfs, "layer", "create", "--rw", "--parent", "ro-layer", "rw-layer")
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, graphdrivers\n"
         "d = graphdrivers.load('vfs', sys.argv[1], {})\n"
         "d.mount('rw-layer'); print('mounted', flush=True); sys.stdin.readline()",
         str(home)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "mounted"
        rows = {r["id"]: r for r in json.loads(run(*vfs, "layer", "ls", "--json").stdout)}
        assert rows["ro-layer"]["rw"] is False and rows["ro-layer"]["mounted_by"] is None
        assert rows["rw-layer"]["rw"] is True
        assert rows["rw-layer"]["mounted_by"] == f"mounted by process {holder.pid}"
        table = run(*vfs, "layer", "ls").stdout.decode().splitlines()
        assert table[2].split()[:3] == ["rw-layer", "ro-layer", "rw"]
        assert str(holder.pid) in table[2]
    finally:
        holder.kill()
        holder.wait()
    rows = {r["id"]: r for r in json.loads(run(*vfs, "layer", "ls", "--json").stdout)}
    assert rows["rw-layer"]["mounted_by"] is None       # its holder ended


def make_snapshot(vfs) -> None:
    run(*vfs, "layer", "create", "--parent", "base", "snap")
    root = pathlib.Path(run(*vfs, "layer", "mount", "snap").stdout.decode().strip())
    (root / "etc/hosts").write_text("127.0.0.1 localhost\n10.0.0.1 db\n")
    (root / "gone.txt").unlink()
    (root / "keep/new.txt").write_text("new\n")
    run(*vfs, "layer", "unmount", "snap")


# -- help and drivers ---------------------------------------------------------

def test_help_lists_every_command():
    out = run("--help").stdout.decode()
    for command in ("drivers", "status", "layer", "pool", "check", "serve", "bench"):
        assert command in out
    layer_help = run("layer", "--help").stdout.decode()
    for action in ("create", "rm", "mount", "unmount", "ls", "diff", "apply", "changes"):
        assert action in layer_help


def test_help_does_not_import_drivers():
    # `--help` must stay fast: no stevedore, no driver module, no tarfile
    code = ("import sys, graphdrivers.cli as c\n"
            "try:\n    c.main(['--help'])\nexcept SystemExit:\n    pass\n"
            "heavy = [m for m in ('stevedore', 'graphdrivers.vfs', 'tarfile', "
            "'graphdrivers.servers.docker_plugin') if m in sys.modules]\n"
            "sys.stderr.write(repr(heavy))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=60)
    assert result.stderr.decode() == "[]"


def test_console_script_installed():
    script = pathlib.Path(sys.executable).parent / "graphdrivers"
    if not script.exists():
        pytest.skip(f"no console script next to {sys.executable}")
    result = subprocess.run([str(script), "--help"], capture_output=True, timeout=60)
    assert result.returncode == 0 and b"layer" in result.stdout


def test_drivers_json_and_table(home):
    rows = json.loads(run("--home", str(home), "drivers", "--json").stdout)
    names = [row["name"] for row in rows]
    assert names == graphdrivers.available()
    vfs_row = rows[names.index("vfs")]
    assert vfs_row["usable"] is True and vfs_row["reason"] is None
    for row in rows:
        assert row["usable"] == (row["reason"] is None)
    assert sum(row["default"] for row in rows) == 1
    table = run("--home", str(home), "drivers").stdout.decode().splitlines()
    assert table[0].split() == ["DRIVER", "USABLE", "NOTES"]
    assert any(line.split()[:2] == ["vfs", "yes"] for line in table[1:])


# -- layers -------------------------------------------------------------------

def test_layer_lifecycle(vfs, home):
    make_base(vfs)
    make_snapshot(vfs)

    listing = json.loads(run(*vfs, "layer", "ls", "--json").stdout)
    assert listing == [{"id": "base", "parent": None, "rw": False, "mounted_by": None},
                       {"id": "snap", "parent": "base", "rw": False, "mounted_by": None}]
    table = run(*vfs, "layer", "ls").stdout.decode().split("\n")
    assert table[0].split() == ["ID", "PARENT", "MODE", "MOUNTED"]
    assert table[1].split() == ["base", "-", "ro", "-"]
    assert table[2].split() == ["snap", "base", "ro", "-"]
    assert run(*vfs, "layer", "ls", "-q").stdout.decode().split() == ["base", "snap"]

    changes = run(*vfs, "layer", "changes", "snap").stdout.decode().splitlines()
    assert "C /etc/hosts" in changes
    assert "D /gone.txt" in changes
    assert "A /keep/new.txt" in changes
    as_json = json.loads(run(*vfs, "layer", "changes", "snap", "--json").stdout)
    assert {"path": "/gone.txt", "kind": "delete"} in as_json
    assert [c["path"] for c in as_json] == sorted(c["path"] for c in as_json)

    size = json.loads(run(*vfs, "layer", "size", "snap", "--json").stdout)
    assert size == {"id": "snap", "size": len("127.0.0.1 localhost\n10.0.0.1 db\n") + 4}

    status = json.loads(run(*vfs, "status", "--json").stdout)
    assert status["driver"] == "vfs"
    assert status["home"] == str(home / "vfs")
    assert isinstance(status["status"], dict)
    text = run(*vfs, "status").stdout.decode()
    assert text.startswith("Storage Driver: vfs\n")

    # global options may also follow the command; a home with vfs state picks vfs itself
    auto = run("layer", "ls", "-q", "--home", str(home)).stdout.decode().split()
    assert auto == ["base", "snap"]

    assert run(*vfs, "layer", "rm", "snap").stdout.decode().strip() == "snap"
    assert run(*vfs, "layer", "ls", "-q").stdout.decode().split() == ["base"]


def test_diff_apply_round_trip(vfs, home, tmp_path):
    make_layers_in_process(home)
    out = tmp_path / "snap.tar"
    run(*vfs, "layer", "diff", "snap", "-o", str(out))
    with tarfile.open(out) as tar:
        names = set(tar.getnames())
    assert {"etc/hosts", "keep/new.txt", ".wh.gone.txt"} <= {n.removeprefix("./") for n in names}
    assert not list(tmp_path.glob(".graphdrivers-diff-*")), "temp file left behind"

    # the same tar through stdout
    piped = run(*vfs, "layer", "diff", "snap").stdout
    with tarfile.open(fileobj=__import__("io").BytesIO(piped)) as tar:
        assert set(tar.getnames()) == names

    # apply it from a file onto a copy of the base, and from stdin onto another one
    run(*vfs, "layer", "create", "--parent", "base", "copy1")
    applied = json.loads(run(*vfs, "layer", "apply", "copy1", str(out), "--json").stdout)
    assert applied["id"] == "copy1" and applied["size"] > 0
    run(*vfs, "layer", "create", "--parent", "base", "copy2")
    text = run(*vfs, "layer", "apply", "copy2", input=piped).stdout.decode()
    assert text.startswith(f"copy2: unpacked {applied['size']} bytes")

    original = run(*vfs, "layer", "changes", "snap").stdout
    for copy in ("copy1", "copy2"):
        assert run(*vfs, "layer", "changes", copy).stdout == original
        root = pathlib.Path(run(*vfs, "layer", "mount", copy).stdout.decode().strip())
        assert (root / "etc/hosts").read_text().endswith("10.0.0.1 db\n")
        assert not (root / "gone.txt").exists()
        run(*vfs, "layer", "unmount", copy)


def test_diff_refuses_a_terminal(vfs, home):
    make_layers_in_process(home)
    leader, follower = pty.openpty()
    try:
        result = subprocess.run(CLI + vfs + ["layer", "diff", "base"], stdout=follower,
                                stderr=subprocess.PIPE, timeout=60)
    finally:
        os.close(follower)
        os.close(leader)
    assert result.returncode != 0
    err = result.stderr.decode()
    assert "Traceback" not in err and err.count("\n") == 1
    assert "refusing to write a tar to a terminal" in err


def test_apply_refuses_a_terminal_on_stdin(vfs, home):
    make_layers_in_process(home)
    leader, follower = pty.openpty()
    try:
        result = subprocess.run(CLI + vfs + ["layer", "apply", "base"], stdin=follower,
                                capture_output=False, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, timeout=60)
    finally:
        os.close(follower)
        os.close(leader)
    assert result.returncode != 0
    assert "refusing to read a tar from a terminal" in result.stderr.decode()


def test_apply_shows_no_progress_in_a_pipe(vfs, tmp_path):
    run(*vfs, "layer", "create", "one")
    tar_path = tmp_path / "l.tar"
    data = tmp_path / "blob"
    data.write_bytes(os.urandom(3 << 20))
    with tarfile.open(tar_path, "w") as tar:
        tar.add(data, arcname="blob")
    result = run(*vfs, "layer", "apply", "one", str(tar_path))
    assert result.stderr == b""          # quiet in a pipe
    assert result.stdout.decode().startswith(f"one: unpacked {3 << 20} bytes")


def test_progress_draws_on_a_terminal_only():
    import io

    from graphdrivers.cli.progress import Progress, ProgressReader

    class Tty(io.StringIO):
        def isatty(self):
            return True

    shown, hidden = Tty(), io.StringIO()
    for stream in (shown, hidden):
        progress = Progress("apply x", 2000, stream=stream)
        reader = ProgressReader(io.BytesIO(b"a" * 2000), progress)
        assert reader.read(1000) == b"a" * 1000
        buf = bytearray(1000)
        assert reader.readinto(buf) == 1000
        progress.close("done")
        assert progress.done == 2000
    assert "apply x" in shown.getvalue() and "100%" not in hidden.getvalue()
    assert "\rdone" in shown.getvalue() and shown.getvalue().endswith("\n")
    assert hidden.getvalue() == ""


def test_progress_shows_time_left_when_the_total_is_known():
    import io

    from graphdrivers.cli.progress import Progress, format_duration

    class Tty(io.StringIO):
        def isatty(self):
            return True

    shown = Tty()
    progress = Progress("migrate", 1000, stream=shown)
    progress._start -= 10            # as if 10 s went by for the first 100 bytes
    progress.update(100)
    assert "10%" in shown.getvalue() and "1m30s left" in shown.getvalue()
    assert [format_duration(s) for s in (4.4, 65, 7300)] == ["4s", "1m05s", "2h01m"]


# -- errors -------------------------------------------------------------------

def test_errors_are_one_line(vfs, home):
    make_layers_in_process(home)
    cases = [
        (("layer", "rm", "missing"), ["missing"]),
        (("layer", "mount", "missing"), ["missing"]),
        (("layer", "changes", "missing"), ["missing"]),
        (("layer", "diff", "missing", "-o", os.devnull), ["missing"]),
        (("layer", "create", "bad/id"), ["bad/id"]),
        (("layer", "create", "base"), ["base"]),                          # exists
        (("layer", "create", "--parent", "nothere", "child"), ["nothere"]),
        (("layer", "create", "--rw", "--storage-opt", "bogus=1", "child"), ["bogus"]),
        (("layer", "apply", "base", "/nonexistent/file.tar"), ["/nonexistent/file.tar"]),
    ]
    for args, words in cases:
        assert_one_line_error(run(*vfs, *args, check=False), *words)
    assert_one_line_error(run("--home", str(home), "--driver", "nope", "status", check=False),
                          "nope")
    assert_one_line_error(run(*vfs, "--storage-opt", "vfs.bogus=1", "status", check=False),
                          "vfs.bogus")
    assert_one_line_error(run(*vfs, "--storage-opt", "novalue", "status", check=False),
                          "novalue")
    # a corrupt tar is refused, with nothing half-accepted in silence
    run(*vfs, "layer", "create", "victim")
    assert_one_line_error(run(*vfs, "layer", "apply", "victim", input=b"not a tar" * 100,
                              check=False))


def test_pool_commands_need_devicemapper(vfs, home):
    assert_one_line_error(run(*vfs, "pool", "status", check=False), "devicemapper")
    assert_one_line_error(run("--home", str(home), "pool", "status", check=False),
                          "no devicemapper pool")
    result = run(*vfs, "pool", "resize", "--storage-opt", "dm.loopdatasize=1G", check=False)
    assert_one_line_error(result, "devicemapper")
    result = run(*vfs, "pool", "resize", "--storage-opt", "dm.basesize=1G", check=False)
    assert_one_line_error(result, "dm.basesize", "dm.loopdatasize")
    result = run(*vfs, "pool", "resize", "--storage-opt", "dm.loopdatasize=lots", check=False)
    assert_one_line_error(result, "lots")


def test_bench_delegates_or_explains():
    import importlib.util
    if importlib.util.find_spec("graphdrivers.benchmarking.runner") is not None:
        pytest.skip("graphdrivers.benchmarking.runner is installed; its own tests cover it")
    assert_one_line_error(run("bench", "--anything", check=False), "graphdrivers.benchmarking.runner")


def test_usage_errors_exit_2(vfs):
    result = run(*vfs, "layer", check=False)
    assert result.returncode == 2 and b"Traceback" not in result.stderr
    result = run(*vfs, "frobnicate", check=False)
    assert result.returncode == 2
    for args in (["--storage-opt", "vfs.bogus=1", "layer", "create", "a"],
                 ["layer", "create", "../escape"],
                 ["layer", "create", "--storage-opt", "size=lots", "a"]):
        result = run(*vfs, *args, check=False)
        assert result.returncode == 2, (args, result)
        assert_one_line_error(result)


def test_operation_errors_exit_1(vfs, home):
    run(*vfs, "layer", "create", "base")
    for args in (["layer", "rm", "missing"], ["layer", "create", "base"]):
        result = run(*vfs, *args, check=False)
        assert result.returncode == 1, (args, result)
        assert_one_line_error(result)


def test_drivers_checks_overlay2_for_real(tmp_path):
    """A home on overlayfs cannot host overlay2: `drivers` says so, as load() does."""
    from graphdrivers.kernel.mount import mount, umount
    for name in ("lower", "upper", "work", "merged"):
        (tmp_path / name).mkdir()
    try:
        mount("overlay", tmp_path / "merged", "overlay", 0,
              f"lowerdir={tmp_path}/lower,upperdir={tmp_path}/upper,workdir={tmp_path}/work")
    except OSError as exc:
        pytest.skip(f"no overlayfs here: {exc}")
    try:
        home = tmp_path / "merged" / "home"
        rows = {row["name"]: row for row in
                json.loads(run("--home", str(home), "drivers", "--json").stdout)}
        assert rows["overlay2"]["usable"] is False
        assert "overlayfs" in rows["overlay2"]["reason"]
        with pytest.raises(graphdrivers.NotSupported):
            graphdrivers.load("overlay2", home)
    finally:
        umount(tmp_path / "merged")


def test_version_from_one_place():
    from importlib.metadata import version
    result = run("--version")
    assert result.stdout.decode().split() == ["graphdrivers", graphdrivers.__version__]
    assert version("graphdrivers") == graphdrivers.__version__


def test_home_that_is_a_file(tmp_path):
    path = tmp_path / "file"
    path.write_text("not a home")
    for args in (["layer", "create", "a"], ["status"], ["layer", "ls"]):
        line = assert_one_line_error(run("--home", str(path), *args, check=False))
        assert "not a directory" in line, line
    assert path.read_text() == "not a home"


def test_read_commands_create_nothing(tmp_path):
    typo = tmp_path / "typo"
    listed = run("--home", str(typo), "layer", "ls", "--json")
    assert json.loads(listed.stdout) == []
    assert str(typo) in listed.stderr.decode()   # the note that points at a mistyped home
    for args in (["status"], ["--driver", "vfs", "status"], ["layer", "changes", "a"],
                 ["layer", "mount", "a"], ["pool", "status"],
                 ["--driver", "devicemapper", "pool", "status"]):
        assert_one_line_error(run("--home", str(typo), *args, check=False), str(typo))
    run("--home", str(typo), "drivers")
    assert not typo.exists()
    typo.mkdir()   # an empty directory stays empty and pins no driver
    run("--home", str(typo), "layer", "ls")
    assert list(typo.iterdir()) == []
    rows = json.loads(run("--home", str(typo), "drivers", "--json").stdout)
    assert not any(row["state_here"] for row in rows)


def test_diff_names_the_output_path(vfs, tmp_path):
    run(*vfs, "layer", "create", "base")
    target = tmp_path / "missing-dir" / "x.tar"
    line = assert_one_line_error(run(*vfs, "layer", "diff", "base", "-o", str(target),
                                     check=False))
    assert str(target) in line and ".graphdrivers-diff-" not in line, line


def test_interrupt_exits_130(vfs):
    run(*vfs, "layer", "create", "slow")
    proc = subprocess.Popen(CLI + vfs + ["layer", "apply", "slow", "-"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        # wait until it blocks in read(0, ...) on the tar from stdin (not merely somewhere
        # in a pipe during start-up), then press Ctrl-C
        while time.monotonic() < deadline:
            with open(f"/proc/{proc.pid}/syscall") as f:
                if f.read().split()[:2] == ["0", "0x0"]:
                    break
            time.sleep(0.05)
        else:
            pytest.fail("the CLI never started reading stdin")
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130
    assert b"Traceback" not in err


# -- mounts across processes ----------------------------------------------------

MOUNTING_DRIVERS = [name for name in driver_names() if name != "vfs"]


@pytest.mark.parametrize("name", MOUNTING_DRIVERS)
def test_mount_outlives_the_process(name, tmp_path):
    """`layer mount` leaves the layer mounted; `layer unmount` in a new process undoes it."""
    with driver_home(name, tmp_path) as (home, options):
        usable = dict(graphdrivers.describe(home))
        if usable.get(name) is not None:
            pytest.skip(f"{name}: {usable[name]}")
        common = ["--home", str(home), "--driver", name]
        for key, value in options.items():
            common += ["--storage-opt", f"{key}={value}"]
        try:
            run(*common, "layer", "create", "base")
            run(*common, "layer", "create", "--parent", "base", "--rw", "top")
            path = json.loads(run(*common, "layer", "mount", "top", "--json").stdout)["path"]
            (pathlib.Path(path) / "written").write_text("kept")
            mounted_after_exit = is_mountpoint(path)
            run(*common, "layer", "unmount", "top")
            still_mounted = is_mountpoint(path)
            changes = run(*common, "layer", "changes", "top").stdout.decode().split("\n")
            assert "A /written" in changes
        finally:
            graphdrivers.load(name, home, options).cleanup()
            unmount_all_under(home)   # whatever the CLI left if an assertion failed
        if not mounted_after_exit:
            pytest.skip(f"{name} serves layers without a mount of its own")
        assert not still_mounted


# -- pool administration (devicemapper: runs in the VM, scripts/vm-test) ---------------

@pytest.mark.devicemapper
def test_pool_status_and_resize(tmp_path):
    backend = pytest.importorskip("graphdrivers.devmapper.testing")
    with backend.backend(tmp_path) as (home, options):
        opts = []
        for key, value in options.items():
            opts += ["--storage-opt", f"{key}={value}"]
        common = ["--home", str(home), "--driver", "devicemapper"] + opts
        try:
            # few CLI calls: each one is a slow process start in the emulated VM
            run(*common, "layer", "create", "base")   # pool commands need an existing pool
            before = json.loads(run(*common, "pool", "status", "--json").stdout)
            for key in ("data_used", "data_total", "metadata_used", "metadata_total",
                        "transaction_id", "thin_devices", "warnings"):
                assert key in before, key
            text = run(*common, "pool", "status").stdout.decode()
            assert "Data total:" in text and "WARNING:" in text   # the loopback warning

            grown = before["data_total"] + (1 << 30)
            after = json.loads(run(*common, "pool", "resize", "--json", "--storage-opt",
                                   f"dm.loopdatasize={grown}").stdout)
            assert after["data_total"] == grown
            shrink = run(*common, "pool", "resize", "--storage-opt",
                         f"dm.loopdatasize={before['data_total']}", check=False)
            assert_one_line_error(shrink)
            # a new process sees the new size; a home with devicemapper state needs no --driver,
            # and no dm.loop* options: the pool keeps the size it was grown to
            auto = json.loads(run("--home", str(home), "pool", "status", "--json").stdout)
            assert auto["data_total"] == grown
        finally:
            graphdrivers.load("devicemapper", home, options).cleanup()

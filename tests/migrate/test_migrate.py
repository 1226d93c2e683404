"""graphdrivers migrate between the host drivers (issue 18): every ordered pair on a chain
of 23 layers with every kind of entry; resume after SIGKILL; dry run; refusals."""
from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

import graphdrivers
from graphdrivers import faults, migrate
from graphdrivers.errors import DriverError, InvalidOption, LayerExists
from graphdrivers.kernel.mount import unmount_all_under
from graphdrivers.migrate.record import NAME as RECORD
from graphdrivers.testing.homes import driver_home
from graphdrivers.testing.selection import skip_unless_requested

from .chain import assert_same_layers, build_chain

HOST = ("vfs", "overlay2", "btrfs")
PAIRS = [(a, b) for a in HOST for b in HOST if a != b]
CHILD = str(Path(__file__).with_name("migrate_child.py"))


@contextlib.contextmanager
def loaded(name: str, where: Path):
    """The driver ``name`` in a fresh home of its kind under ``where``."""
    where.mkdir(parents=True, exist_ok=True)
    with driver_home(name, where) as (home, options):
        try:
            drv = graphdrivers.load(name, home, options)
        except graphdrivers.NotSupported as exc:
            skip_unless_requested(name, exc)
        try:
            yield drv, Path(home), options
        finally:
            drv.cleanup()
            unmount_all_under(home)


@pytest.mark.parametrize("src,dst", PAIRS, ids=[f"{a}-to-{b}" for a, b in PAIRS])
def test_every_pair_copies_the_chain(src, dst, tmp_path):
    with loaded(src, tmp_path / "src") as (source, _, _), \
            loaded(dst, tmp_path / "dst") as (target, _, _):
        ids = build_chain(source)
        before = {i: source.changes(i) for i in ids}
        summary = migrate.migrate(source, target)
        assert summary["copied"] == len(ids) == summary["verified"]
        assert summary["redone"] == 0 and summary["source_removed"] == 0
        assert_same_layers(source, target, ids)
        for layer_id in ids:     # the changes of each layer over its parent are the same
            assert _significant(target, layer_id) == _significant(source, layer_id), layer_id
        assert {i: source.changes(i) for i in ids} == before    # the source is untouched
        record = json.loads((Path(target.home) / RECORD).read_text())
        assert sorted(record["done"]) == sorted(ids) and record["current"] is None


def _significant(drv, layer_id) -> set:
    """The layer's additions and deletions: a MODIFY of an unchanged entry (a directory
    above a change, a file overlayfs copied up) may be listed by one driver and not
    another; the whole trees are compared by assert_same_layers."""
    return {(c.path, c.kind) for c in drv.changes(layer_id) if c.kind != 0}


def test_same_home_different_drivers(tmp_path):
    with loaded("vfs", tmp_path / "h") as (source, home, _):
        ids = build_chain(source, 4)
        target = graphdrivers.load("overlay2", home)
        try:
            migrate.migrate(source, target)
            assert_same_layers(source, target, ids)
            assert sorted(p.name for p in home.iterdir() if p.is_dir()) == ["overlay2", "vfs"]
        finally:
            target.cleanup()


def test_same_driver_same_home_is_refused(tmp_path):
    with loaded("vfs", tmp_path / "h") as (source, home, _):
        source.create("a")
        with pytest.raises(DriverError, match="both vfs"):
            migrate.migrate(source, graphdrivers.load("vfs", home))


def test_remove_source_after_everything_is_verified(tmp_path):
    with loaded("vfs", tmp_path / "src") as (source, _, _), \
            loaded("overlay2", tmp_path / "dst") as (target, _, _):
        ids = build_chain(source, 3)
        views = {i: _view(source, i) for i in ids}
        summary = migrate.migrate(source, target, remove_source=True)
        assert summary["source_removed"] == len(ids)
        assert source.layers() == []
        assert {i: _view(target, i) for i in ids} == views


def _view(drv, layer_id):
    from .chain import layer_view
    return layer_view(drv, layer_id)


def test_verification_catches_a_difference(tmp_path):
    with loaded("overlay2", tmp_path / "src") as (source, _, _), \
            loaded("vfs", tmp_path / "dst") as (target, _, _):
        build_chain(source, 2)
        migrate.migrate(source, target)
        root = target.mount("m01")
        try:
            os.chmod(root / "layers/l01.txt", 0o600)       # damage the copy
        finally:
            target.unmount("m01")
        with pytest.raises(migrate.VerificationFailed, match="l01.txt.*mode"):
            migrate.verify_layer(source, target, "m01")
        root = target.mount("m01")
        try:
            os.chmod(root / "layers/l01.txt", 0o644)
            os.setxattr(root / "etc/hosts", "user.comment", b"forged")
        finally:
            target.unmount("m01")
        with pytest.raises(migrate.VerificationFailed, match="hosts.*xattrs"):
            migrate.verify_layer(source, target, "m01")
        root = target.mount("m01")
        try:
            os.setxattr(root / "etc/hosts", "user.comment", b"resolver file")   # the base's
            st = os.stat(root / "layers/l01.txt")
            with open(root / "layers/l01.txt", "r+b") as f:      # same size, same mtime
                f.write(b"L")
            os.utime(root / "layers/l01.txt", ns=(st.st_atime_ns, st.st_mtime_ns))
        finally:
            target.unmount("m01")
        with pytest.raises(migrate.VerificationFailed, match="l01.txt .content differs"):
            migrate.verify_layer(source, target, "m01")


# -- refusals and the dry run --------------------------------------------------

def test_target_with_a_layer_of_the_same_id_is_refused_before_any_copy(tmp_path):
    with loaded("vfs", tmp_path / "src") as (source, _, _), \
            loaded("overlay2", tmp_path / "dst") as (target, _, _):
        build_chain(source, 3)
        target.create("m02")
        with pytest.raises(LayerExists, match="m02.*nothing was copied"):
            migrate.migrate(source, target)
        assert target.layers() == ["m02"]
        assert not (Path(target.home) / RECORD).exists()


def test_options_the_target_refuses_are_refused_before_any_copy(tmp_path):
    with loaded("btrfs", tmp_path / "src") as (source, _, options), \
            loaded("overlay2", tmp_path / "dst") as (target, _, _):
        source.create("base", storage_opt={"size": "64M"})   # overlay2: rw layers only
        source.create("top", "base", rw=True)
        assert source.layer_options("base") == {"size": str(64 << 20)}
        with pytest.raises(InvalidOption, match="base size=67108864"):
            migrate.migrate(source, target)
        assert target.layers() == []
        migrate.migrate(source, target, keep_options=False)
        assert sorted(target.layers()) == ["base", "top"]


def test_per_layer_size_is_carried_over(tmp_path):
    with loaded("btrfs", tmp_path / "src") as (source, _, _), \
            loaded("btrfs", tmp_path / "dst") as (target, _, _):
        source.create("sized", storage_opt={"size": "100M"})
        source.create("plain", "sized")
        migrate.migrate(source, target)
        assert target.layer_options("sized") == {"size": str(100 << 20)}
        assert target.layer_options("plain") == {}


def test_dry_run_lists_layers_bytes_and_room_and_copies_nothing(tmp_path):
    with loaded("vfs", tmp_path / "src") as (source, home, _):
        ids = build_chain(source, 3)
        target_home = tmp_path / "new-home"
        plan = migrate.plan(source, None, "overlay2", target_home / "overlay2")
        order = [layer.id for layer in plan.layers]
        assert sorted(order) == sorted(ids)
        assert all(order.index(source.parent(i)) < order.index(i) for i in ids[1:])
        assert plan.bytes_to_copy == sum(source.diff_size(i) for i in ids) > 8 << 20
        assert plan.room is True and plan.conflicts == []
        out = _cli("--home", str(home), "migrate", "--to", "overlay2", "--target-home",
                   str(target_home), "--dry-run", "--json")
        assert out.returncode == 0, out.stderr
        report = json.loads(out.stdout)
        assert report["layers_to_copy"] == 5 and report["room"] is True
        assert report["bytes_to_copy"] == plan.bytes_to_copy
        assert not target_home.exists()
        text = _cli("--home", str(home), "migrate", "--to", "overlay2", "--target-home",
                    str(target_home), "--dry-run")
        assert text.returncode == 0, text.stderr
        assert "m-rw" in text.stdout and "room: yes" in text.stdout


def test_dry_run_refuses_a_conflicting_target(tmp_path):
    with loaded("vfs", tmp_path / "src") as (source, home, _):
        source.create("a")
        target = graphdrivers.load("overlay2", tmp_path / "t")
        target.create("a")
        target.cleanup()
        out = _cli("--home", str(home), "migrate", "--to", "overlay2", "--target-home",
                   str(tmp_path / "t"), "--dry-run")
        assert out.returncode == 1
        assert "already has 1 layer" in out.stderr


def test_cli_migrates_and_prints_a_json_summary(tmp_path):
    with loaded("vfs", tmp_path / "src") as (source, home, _):
        build_chain(source, 3)
        out = _cli("--home", str(home), "migrate", "--to", "overlay2", "--json")
        assert out.returncode == 0, out.stderr
        summary = json.loads(out.stdout)
        assert summary["copied"] == 5 and summary["target"]["driver"] == "overlay2"
        again = _cli("--home", str(home), "migrate", "--to", "overlay2", "--json")
        assert json.loads(again.stdout)["copied"] == 0, again.stderr
        target = graphdrivers.load("overlay2", home)
        try:
            assert sorted(target.layers()) == sorted(source.layers())
        finally:
            target.cleanup()


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "graphdrivers.cli", *args],
                          capture_output=True, text=True, timeout=300)


# -- SIGKILL and resume -----------------------------------------------------------

KILLS = [("migrate.copy.after_create", 3), ("migrate.copy.after_apply", 5),
         ("migrate.copy.after_verify", 0), ("migrate.remove_source.after_first", 0)]


@pytest.mark.parametrize("point,skip", KILLS, ids=[p for p, _ in KILLS])
def test_sigkill_then_resume_finishes_without_copying_twice(point, skip, tmp_path):
    with loaded("vfs", tmp_path / "src") as (source, src_home, _), \
            loaded("overlay2", tmp_path / "dst") as (target, dst_home, _):
        ids = build_chain(source, 8)
        views = {i: _view(source, i) for i in ids}
        remove = point.startswith("migrate.remove_source")
        killed = _child(src_home, dst_home, point, skip, remove)
        assert killed.returncode == -9, killed.stderr
        _resume_and_check(source, target, src_home, dst_home, ids, views, remove,
                          half=not remove)


def test_real_sigkill_in_the_middle_then_resume(tmp_path):
    with loaded("vfs", tmp_path / "src") as (source, src_home, _), \
            loaded("overlay2", tmp_path / "dst") as (target, dst_home, _):
        ids = build_chain(source, 12)
        views = {i: _view(source, i) for i in ids}
        child = subprocess.Popen([sys.executable, CHILD, str(src_home), str(dst_home)],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        record = Path(target.home) / RECORD
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and child.poll() is None:
            with contextlib.suppress(FileNotFoundError, ValueError):
                if len(json.loads(record.read_text())["done"]) >= 4:
                    break
            time.sleep(0.005)
        child.kill()
        child.communicate()
        assert child.returncode == -9, "the migration ended before it was killed"
        _resume_and_check(source, target, src_home, dst_home, ids, views, False, half=None)


def _resume_and_check(source, target, src_home, dst_home, ids, views, remove, half):
    record = json.loads((Path(target.home) / RECORD).read_text())
    finished = list(record["done"])
    if half:
        assert record["current"] is not None and len(finished) < len(ids)
        assert target.exists(record["current"])     # the half layer is there...
    done = _child(src_home, dst_home, None, 0, remove)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    # ...and removed and redone once; no finished layer is copied again
    assert summary["copied"] == len(ids) - len(finished)
    if half is not None:
        assert summary["redone"] == (1 if half else 0)
    target2 = graphdrivers.load("overlay2", dst_home)
    try:
        assert sorted(target2.layers()) == sorted(ids)
        assert {i: _view(target2, i) for i in ids} == views
        if remove:
            assert source.layers() == []
        else:
            assert {i: _view(source, i) for i in ids} == views
    finally:
        target2.cleanup()


def _child(src_home: Path, dst_home: Path, point: str | None, skip: int,
           remove: bool) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in (faults.ENV, faults.SKIP_ENV)}
    if point:
        env[faults.ENV] = point
        env[faults.SKIP_ENV] = str(skip)
    args = [sys.executable, CHILD, str(src_home), str(dst_home)] + (["--remove"] if remove else [])
    return subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)


def test_a_target_without_room_is_refused_before_any_copy(tmp_path):
    from graphdrivers.testing.loopfs import loop_filesystem
    with loaded("vfs", tmp_path / "src") as (source, home, _), \
            loop_filesystem(tmp_path, "ext4", 64 << 20, name="small") as small:
        source.create("big")
        with contextlib.ExitStack() as stack:
            root = source.mount("big")
            stack.callback(source.unmount, "big")
            with open(root / "blob", "wb") as f:
                f.write(os.urandom(1 << 20) * 80)
        plan = migrate.plan(source, None, "overlay2", small / "home" / "overlay2")
        assert plan.room is False and plan.bytes_to_copy == 80 << 20
        out = _cli("--home", str(home), "migrate", "--to", "overlay2", "--target-home",
                   str(small / "home"), "--dry-run")
        assert out.returncode == 1 and "room: NO" in out.stdout
        assert "less than the 83.89 MB to copy" in out.stderr
        target = graphdrivers.load("overlay2", small / "home")
        try:
            with pytest.raises(DriverError, match="nothing was copied"):
                migrate.migrate(source, target)
            assert target.layers() == []
        finally:
            target.cleanup()


def test_diff_from_changes_is_the_drivers_own_diff(tmp_path):
    """vfs declares DiffFromChanges: migrate hands it the change list it listed for the
    plan; the tar must be the one diff() makes."""
    from graphdrivers.capabilities import DiffFromChanges
    with loaded("vfs", tmp_path / "src") as (source, _, _):
        ids = build_chain(source, 11)
        assert isinstance(source, DiffFromChanges)
        for layer_id in ids[1:]:
            with source.diff(layer_id) as a, \
                    source.diff_from_changes(layer_id, source.changes(layer_id)) as b:
                assert a.read() == b.read(), layer_id


def test_two_migrations_at_once_into_one_target(tmp_path):
    with loaded("vfs", tmp_path / "src") as (source, src_home, _), \
            loaded("overlay2", tmp_path / "dst") as (target, dst_home, _):
        ids = build_chain(source, 6)
        runs = [subprocess.Popen([sys.executable, CHILD, str(src_home), str(dst_home)],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                for _ in range(2)]
        results = [run.communicate(timeout=300) for run in runs]
        assert [run.returncode for run in runs] == [0, 0], results
        copied = sorted(json.loads(out)["copied"] for out, _ in results)
        assert copied == [0, len(ids)]          # the second waited, then found all done
        assert_same_layers(source, target, ids)

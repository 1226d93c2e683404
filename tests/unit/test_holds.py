"""Mount holds and id locks shared by the processes of one home (graphdrivers.store.holds)."""
from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import pytest

from graphdrivers.store.holds import HomeRun


@pytest.fixture
def run(tmp_path, monkeypatch):
    monkeypatch.setenv("GRAPHDRIVERS_RUN_DIR", str(tmp_path / "run"))
    home = tmp_path / "home"
    home.mkdir()
    return HomeRun(home)


def test_a_hold_is_seen_by_another_instance_not_by_its_own(run):
    other = HomeRun(run.home)
    path = os.path.join(run.home, "layers/a/merged")
    run.set_hold(path, 1)
    run.set_hold(path, 2)
    assert run.other_holders(path) == []
    assert other.other_holders(path) == [os.getpid()]
    assert other.other_holders(os.path.join(run.home, "layers/b/merged")) == []
    run.set_hold(path, 0)
    assert other.other_holders(path) == []


def test_holds_of_ended_processes_are_reclaimed(run):
    path = os.path.join(run.home, "x")
    child = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                           capture_output=True, text=True, check=True)
    dead = int(child.stdout)
    # a process that ended, and a live pid with another start time (the pid was reused)
    for owner in (f"{dead}-123-1", f"{os.getpid()}-1-1"):
        os.makedirs(run.dir / "holds", exist_ok=True)
        (run.dir / "holds" / f"x@{owner}").touch()
    assert run.other_holders(path) == []
    assert list((run.dir / "holds").iterdir()) == []


def test_holds_live_under_the_home_identity_not_its_path(run, tmp_path):
    alias = tmp_path / "alias"
    alias.symlink_to(run.home)
    assert HomeRun(alias).dir == run.dir


def test_the_id_lock_excludes_another_process(run):
    child = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time; from graphdrivers.store.holds import HomeRun\n"
         "with HomeRun(sys.argv[1]).locked('layer'):\n"
         "    print('locked', flush=True); sys.stdin.readline()", str(run.home)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        env=dict(os.environ))
    try:
        assert child.stdout.readline().strip() == "locked"
        got = threading.Event()

        def take():
            with run.locked("layer"):
                got.set()
        waiter = threading.Thread(target=take, daemon=True)
        waiter.start()
        assert not got.wait(0.5)          # the other process holds it
        child.stdin.write("\n")
        child.stdin.flush()
        assert got.wait(30)
    finally:
        child.kill()
        child.wait()


def test_a_waiter_follows_a_lock_file_replaced_by_a_remover(run):
    entered = threading.Event()
    release = threading.Event()

    def remover():
        with run.locked("gone"):
            entered.set()
            release.wait(30)
            run.forget_lock("gone")     # the layer was removed: its lock file goes too

    first = threading.Thread(target=remover, daemon=True)
    first.start()
    assert entered.wait(30)
    other = HomeRun(run.home)
    done, let_go = threading.Event(), threading.Event()

    def waiter():
        with other.locked("gone"):
            done.set()
            let_go.wait(30)
    second = threading.Thread(target=waiter, daemon=True)
    second.start()
    time.sleep(0.2)
    release.set()
    assert done.wait(30)
    # the waiter holds the new lock file, so a third taker must wait for it
    third = threading.Event()

    def taker():
        with HomeRun(run.home).locked("gone"):
            third.set()
    threading.Thread(target=taker, daemon=True).start()
    assert not third.wait(0.5)
    let_go.set()
    assert third.wait(30)
    assert (run.dir / "locks" / "gone").exists()


def test_a_forked_child_does_not_share_a_lock_kept_open_by_its_parent(run):
    with run.locked("layer"):
        pass                            # the lock file now stays open, unlocked
    to_child, from_parent = os.pipe()
    from_child, to_parent = os.pipe()
    pid = os.fork()
    if pid == 0:                        # the child holds the lock until told to stop
        with run.locked("layer"):
            os.write(to_parent, b"1")
            os.read(to_child, 1)
        os._exit(0)
    try:
        assert os.read(from_child, 1) == b"1"
        got = threading.Event()

        def take():
            with run.locked("layer"):
                got.set()
        threading.Thread(target=take, daemon=True).start()
        assert not got.wait(0.5)        # the parent must wait for its child
        os.write(from_parent, b"x")
        assert got.wait(30)
    finally:
        os.write(from_parent, b"x")
        os.waitpid(pid, 0)


def test_kept_lock_files_are_bounded(run):
    before = len(os.listdir("/proc/self/fd"))
    for n in range(300):
        with run.locked(f"layer-{n}"):
            pass
    assert len(os.listdir("/proc/self/fd")) - before <= 64
    run.release_all()
    assert len(os.listdir("/proc/self/fd")) <= before

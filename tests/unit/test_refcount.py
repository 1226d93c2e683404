"""The mount reference counter shared by every driver (Docker's RefCounter)."""
from __future__ import annotations

import threading

from graphdrivers.store.refcount import RefCounter


def test_counts_up_and_down():
    rc = RefCounter(lambda path: False)
    assert rc.count("/m") == 0
    assert [rc.increment("/m") for _ in range(3)] == [1, 2, 3]
    assert rc.paths() == ["/m"]
    assert [rc.decrement("/m") for _ in range(3)] == [2, 1, 0]
    assert rc.count("/m") == 0
    assert rc.paths() == []


def test_decrement_below_zero_stays_zero():
    rc = RefCounter(lambda path: False)
    assert rc.decrement("/never") == 0
    assert rc.increment("/never") == 1


def test_paths_are_independent():
    rc = RefCounter(lambda path: False)
    rc.increment("/a")
    rc.increment("/a")
    rc.increment("/b")
    assert sorted(rc.paths()) == ["/a", "/b"]
    assert rc.decrement("/b") == 0
    assert rc.count("/a") == 2
    rc.forget("/a")
    assert rc.count("/a") == 0 and rc.paths() == []


def test_adopts_an_existing_mount_once():
    seen = []

    def is_mounted(path):
        seen.append(path)
        return path == "/left-by-previous-process"

    rc = RefCounter(is_mounted)
    # a mount found on first sight counts as one user: mounting again makes two
    assert rc.increment("/left-by-previous-process") == 2
    assert rc.decrement("/left-by-previous-process") == 1
    assert rc.decrement("/left-by-previous-process") == 0
    # once forgotten at zero it is looked up again on next use
    assert rc.increment("/fresh") == 1
    assert seen.count("/fresh") == 1
    rc.increment("/fresh")
    assert seen.count("/fresh") == 1, "the mount table is read only on first sight"


def test_adopted_mount_released_by_one_decrement():
    rc = RefCounter(lambda path: True)
    assert rc.decrement("/stale") == 0   # a put of a mount this process never counted


def test_threads_hammering_stay_exact():
    rc = RefCounter(lambda path: False)
    rounds, workers = 2000, 8
    start = threading.Barrier(workers)

    def worker(n):
        start.wait()
        for _ in range(rounds):
            rc.increment("/shared")
            rc.increment(f"/own-{n}")
        for _ in range(rounds // 2):
            rc.decrement("/shared")

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert rc.count("/shared") == workers * rounds // 2
    assert all(rc.count(f"/own-{n}") == rounds for n in range(workers))

    def drain():
        start.wait()
        for _ in range(rounds // 2):
            rc.decrement("/shared")

    threads = [threading.Thread(target=drain) for _ in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert rc.count("/shared") == 0
    assert "/shared" not in rc.paths()


def test_claim_adopted_takes_a_dead_process_mount_once(tmp_path, monkeypatch):
    from graphdrivers.store.holds import HomeRun
    monkeypatch.setenv("GRAPHDRIVERS_RUN_DIR", str(tmp_path / "run"))
    (tmp_path / "home").mkdir()
    run, other = HomeRun(tmp_path / "home"), HomeRun(tmp_path / "home")
    rc = RefCounter(lambda path: path.endswith("left"), run)
    mount = str(tmp_path / "home" / "left")
    assert not rc.claim_adopted(str(tmp_path / "home" / "fresh")), "nothing mounted: no claim"
    assert rc.claim_adopted(mount)
    assert other.other_holders(mount) != [], "a claimed mount is published as a live hold"
    assert not rc.claim_adopted(mount), "claimed once"
    assert rc.decrement(mount) == 0
    assert other.other_holders(mount) == []


def test_claim_adopted_after_a_transient_use():
    rc = RefCounter(lambda path: True)
    assert rc.increment("/left") == 2       # a diff mounts it: the adopted count stays
    assert rc.decrement("/left") == 1
    assert rc.claim_adopted("/left")         # ... and is then claimed by its owner
    assert rc.decrement("/left") == 0


def test_a_mount_held_by_a_live_process_is_not_claimed(tmp_path, monkeypatch):
    from graphdrivers.store.holds import HomeRun
    monkeypatch.setenv("GRAPHDRIVERS_RUN_DIR", str(tmp_path / "run"))
    (tmp_path / "home").mkdir()
    holder = HomeRun(tmp_path / "home")
    mount = str(tmp_path / "home" / "m")
    holder.set_hold(mount, 1)
    rc = RefCounter(lambda path: True, HomeRun(tmp_path / "home"))
    assert not rc.claim_adopted(mount)

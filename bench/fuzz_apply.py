"""The long hostile-tar campaign (issue 9, issue 17): N generated tars across the host drivers.

    python3 bench/fuzz_apply.py --tars 1000000 [--drivers vfs,overlay2,btrfs,overlay2-naive]
        [--dir /work/fuzz-campaign] [--seed S] [--full-every 200] [--disk]
    python3 bench/fuzz_apply.py --resume [--dir /work/fuzz-campaign]
    python3 bench/fuzz_apply.py --replay FAILURE.tar --driver vfs [--with-parent]
    python3 bench/fuzz_apply.py --hypothesis --examples 1000     # the old, shrinking run

The tars are split evenly over the drivers, and each driver's share into
``--workers`` slices (default 3: a worker mostly waits for its filesystem's journal,
so three keep the CPU busy); every slice is a worker process under ``nice -n 19``,
in a mount namespace of its own, with a home of its own, on a tmpfs private to the worker unless ``--disk``:
vfs and overlay2 in a directory there (``--loop-ext4``: on an ext4 loop filesystem
there), btrfs on its own loop device with its image there. On a busy machine the
flushes of the disk (or of ext4's journal on a loop device) and not the tar code
would set the pace: a tmpfs home doubles the rate of a vfs worker. Tar ``index`` of driver seed ``seed`` is tests/robustness/hostile_random.py's
``case(seed, index, ...)``: any one is rebuilt alone. After every tar the canary,
the parent layer, the home's mounts and siblings and /evil are checked; the whole
home and the layer records every ``--full-every`` tars and at the end
(tests/robustness/fuzzing.py).

Progress is checkpointed in ``<dir>/campaign.json`` (per driver: its seed, and per
slice the indices done ``start..next``, tars, refusals, failures, seconds) every few seconds,
so an interrupted campaign (SIGTERM or SIGINT stops it cleanly after the current
tars) continues with ``--resume``. A failing tar is written to
``<dir>/failures/<driver>-<seed>-<index>.tar`` with its message beside it;
``--replay`` applies it again in a fresh home. Exit code 1 if anything failed.
"""
from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

DRIVERS = ["vfs", "overlay2", "btrfs", "overlay2-naive"]   # position sets each driver's seed
NAIVE_ENV = "GRAPHDRIVERS_OVERLAY2_NAIVE_DIFF"
FS_SIZE = 1 << 30             # sparse loop images: cost only what is written
RAM_SIZE = "4g"               # a limit, not an allocation
# Every reader of /proc/self/mountinfo and every mount waits for an unmount in the
# same namespace, and on a busy machine an unmount waits tens of ms for an RCU grace
# period: in one namespace the workers (and the machine's other users) queue behind
# each other's unmounts. A private one per worker lets them overlap; its mounts go
# with it even if the worker is killed. (unshare execs: its pid is the worker's.)
OWN_MOUNT_NAMESPACE = ["unshare", "--mount", "--propagation", "private", "--"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tars", type=int, default=1_000_000, help="in total, over the drivers")
    parser.add_argument("--drivers", default=",".join(DRIVERS))
    parser.add_argument("--dir", type=Path, default=Path("/work/fuzz-campaign"))
    parser.add_argument("--seed", type=int, default=None, help="default: from the clock")
    parser.add_argument("--full-every", type=int, default=200)
    parser.add_argument("--workers", type=int, default=3, help="per driver, each with its home")
    parser.add_argument("--workers-for", default="",
                        help="per driver, e.g. overlay2=6,btrfs=5 (also on --resume: the "
                             "indices left are split again)")
    parser.add_argument("--layer-every", type=int, default=10,
                        help="mount and list the layer after every tar that applied and "
                             "every Nth refused one")
    parser.add_argument("--max-failures", type=int, default=10, help="per driver")
    parser.add_argument("--disk", action="store_true", help="homes on --dir's disk, not tmpfs")
    parser.add_argument("--loop-ext4", action="store_true",
                        help="vfs and overlay2 on an ext4 loop filesystem, not the scratch tmpfs")
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--inject-at", type=int, default=None,
                        help="write into the canary before this index (proves the check)")
    parser.add_argument("--replay", type=Path)
    parser.add_argument("--driver", default="vfs", help="for --replay")
    parser.add_argument("--with-parent", action="store_true", help="for --replay")
    parser.add_argument("--hypothesis", action="store_true")
    parser.add_argument("--examples", type=int, default=1000, help="for --hypothesis")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return worker(json.loads(args.worker))
    if args.replay:
        return replay(args.replay, args.driver, args.with_parent, args.dir, not args.disk,
                      args.loop_ext4)
    if args.hypothesis:
        return hypothesis_run(args.examples, args.drivers)
    return campaign(args)


# -- the parent: workers, checkpoint, summary ------------------------------------------

def campaign(args: argparse.Namespace) -> int:
    from graphdrivers.store.atomicfile import read_json, write_json
    checkpoint = args.dir / "campaign.json"
    args.dir.mkdir(parents=True, exist_ok=True)
    if args.resume:
        state = read_json(checkpoint)
        for name, k in _workers_for(args.workers_for).items():
            if name in state["drivers"]:
                reslice(state["drivers"][name], k)
        write_json(checkpoint, state)
    else:
        if checkpoint.exists():
            sys.exit(f"{checkpoint} exists: --resume it, or choose another --dir")
        state = new_state(args)
        write_json(checkpoint, state)
    run = {"started": time.time(), "load": [], "ram": not args.disk, "loop_ext4": args.loop_ext4,
           "layer_every": args.layer_every}
    state["runs"].append(run)
    workers = start_workers(state, run, args.dir)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: [w.send_signal(signal.SIGTERM) for w in workers.values()])
    before = {key: dict(sl) for key, sl in slices(state)}
    current = dict(slices(state))

    def tick() -> None:
        run["load"].append(os.getloadavg()[0])
        run["ended"] = time.time()
        write_json(checkpoint, state)
    follow(workers, lambda key, p: merge(current[key], before[key], p), tick)
    run["ended"] = time.time()
    run["exit_codes"] = {key: w.returncode for key, w in workers.items()}
    write_json(checkpoint, state)
    print(summary(state))
    failed = any(sl["failures"] for _, sl in slices(state))
    crashed = any(w.returncode != 0 for w in workers.values())
    return 1 if failed or crashed else 0


def new_state(args: argparse.Namespace) -> dict:
    names = [n for n in args.drivers.split(",") if n]
    unknown = set(names) - set(DRIVERS)
    if unknown:
        sys.exit(f"unknown drivers {sorted(unknown)}: choose from {DRIVERS}")
    seed = args.seed if args.seed is not None else int(time.time())
    drivers = {}
    workers_for = _workers_for(args.workers_for)
    for name, target in zip(names, _split(args.tars, len(names))):
        bounds = _split(target, workers_for.get(name, args.workers))
        starts = [sum(bounds[:i]) for i in range(len(bounds))]
        drivers[name] = {"seed": seed * 100 + DRIVERS.index(name), "target": target,
                         "slices": [{"start": a, "stop": a + n, "next": a, "tars": 0,
                                     "refused": 0, "failures": [], "seconds": 0.0,
                                     "cpu_seconds": 0.0} for a, n in zip(starts, bounds)]}
    return {"seed": seed, "full_every": args.full_every, "max_failures": args.max_failures,
            "inject_at": args.inject_at, "drivers": drivers, "runs": []}


def _split(total: int, parts: int) -> list[int]:
    share, extra = divmod(total, parts)
    return [share + (1 if i < extra else 0) for i in range(parts)]


def _workers_for(spec: str) -> dict[str, int]:
    pairs = [item.partition("=") for item in spec.split(",") if item]
    return {name: int(k) for name, _, k in pairs}


def reslice(driver: dict, k: int) -> None:
    """Split the indices a driver has left into ``k`` slices (more workers on a resume):
    each unfinished slice is closed where it got to, its rest becomes new slices, the
    largest cut in halves until there are ``k``."""
    left = [(sl["next"], sl["stop"]) for sl in driver["slices"] if sl["next"] < sl["stop"]]
    for sl in driver["slices"]:
        sl["stop"] = sl["next"]
    while left and len(left) < k:
        left.sort(key=lambda r: r[1] - r[0])
        a, b = left.pop()
        if b - a < 2:
            left.append((a, b))
            break
        left += [(a, (a + b) // 2), ((a + b) // 2, b)]
    driver["slices"] += [{"start": a, "stop": b, "next": a, "tars": 0, "refused": 0,
                          "failures": [], "seconds": 0.0, "cpu_seconds": 0.0}
                         for a, b in sorted(left)]


def slices(state: dict) -> Iterator[tuple[str, dict]]:
    """(worker key, slice) of every driver: the key is ``driver#n``."""
    for name, d in state["drivers"].items():
        for n, sl in enumerate(d["slices"]):
            yield f"{name}#{n}", sl


def start_workers(state: dict, run: dict, workdir: Path) -> dict[str, subprocess.Popen]:
    workers = {}
    for key, sl in slices(state):
        name = key.partition("#")[0]
        if sl["next"] >= sl["stop"] or len(sl["failures"]) >= state["max_failures"]:
            continue
        spec = {"driver": name, "key": key, "seed": state["drivers"][name]["seed"],
                "start": sl["next"], "stop": sl["stop"], "full_every": state["full_every"],
                "max_failures": state["max_failures"] - len(sl["failures"]),
                "inject_at": state.get("inject_at"), "dir": str(workdir), "ram": run["ram"],
                "loop_ext4": run["loop_ext4"], "layer_every": run["layer_every"]}
        workers[key] = subprocess.Popen(
            [*OWN_MOUNT_NAMESPACE, "nice", "-n", "19", sys.executable, __file__, "--worker",
             json.dumps(spec)], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    return workers


def follow(workers: dict[str, subprocess.Popen], on_progress, on_tick) -> None:
    """Read the workers' progress lines until all have exited; tick every few seconds."""
    sel = selectors.DefaultSelector()
    for key, w in workers.items():
        sel.register(w.stdout, selectors.EVENT_READ, key)
    open_ = len(workers)
    last = 0.0
    while open_:
        for key, _ in sel.select(timeout=5):
            line = key.fileobj.readline()
            if not line:
                sel.unregister(key.fileobj)
                open_ -= 1
                continue
            with contextlib.suppress(ValueError):
                on_progress(key.data, json.loads(line))
        if time.monotonic() - last >= 5:
            last = time.monotonic()
            on_tick()
    for w in workers.values():
        w.wait()


def merge(total: dict, before: dict, progress: dict) -> None:
    """This run's progress on top of what earlier runs had done."""
    total["next"] = progress["next"]
    for key in ("tars", "refused", "seconds", "cpu_seconds"):
        total[key] = before[key] + progress[key]
    total["failures"] = before["failures"] + progress["failures"]


def _merged(sls: list[dict]) -> list[tuple[int, int]]:
    """The index ranges done, adjacent ones joined."""
    out: list[list[int]] = []
    for a, b in sorted((sl["start"], sl["next"]) for sl in sls if sl["next"] > sl["start"]):
        if out and out[-1][1] == a:
            out[-1][1] = b
        else:
            out.append([a, b])
    return [(a, b) for a, b in out]


def summary(state: dict) -> str:
    lines = [f"{'driver':15} {'tars':>9} {'refused':>9} {'failures':>8} "
             f"{'cpu ms/tar':>10}  seed: indices done"]
    for name, d in state["drivers"].items():
        sls = d["slices"]
        tars = sum(sl["tars"] for sl in sls)
        cpu = 1000 * sum(sl["cpu_seconds"] for sl in sls) / tars if tars else 0.0
        done = ", ".join(f"{a}..{b}" for a, b in _merged(sls))
        failures = [f for sl in sls for f in sl["failures"]]
        lines.append(f"{name:15} {tars:9} {sum(sl['refused'] for sl in sls):9} "
                     f"{len(failures):8} {cpu:10.2f}  {d['seed']}: {done} "
                     f"of 0..{d['target']}")
        for f in failures:
            lines.append(f"    FAILED at {f['index']} ({f['tar']}): {f['error'][:300]}")
    total = sum(sl["tars"] for _, sl in slices(state))
    wall = sum(r.get("ended", r["started"]) - r["started"] for r in state["runs"])
    loads = [x for r in state["runs"] for x in r["load"]]
    load = f", load {min(loads):.1f}-{max(loads):.1f}" if loads else ""
    lines.append(f"{total} tars in {wall / 60:.1f} min wall ({total / wall if wall else 0:.0f}/s)"
                 + load)
    return "\n".join(lines)


# -- a worker: one driver's range ---------------------------------------------------------

def worker(spec: dict) -> int:
    from robustness.campaign import Campaign, Range
    if spec["driver"] == "overlay2-naive":
        os.environ[NAIVE_ENV] = "1"
    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(1))
    signal.signal(signal.SIGINT, signal.SIG_IGN)        # the parent forwards a SIGTERM
    workdir = Path(spec["dir"]) / "work" / spec["key"].replace("#", "-")
    rng = Range(spec["driver"], spec["seed"], spec["start"], spec["stop"], spec["full_every"],
                spec["layer_every"], spec["max_failures"], spec.get("inject_at"))
    with scratch(workdir, spec["ram"]) as base:
        progress = Campaign(rng, home_factory(spec["driver"], base, spec["loop_ext4"]),
                            Path(spec["dir"]) / "failures", report=_emit,
                            stopping=lambda: bool(stopping)).run()
    return 1 if progress.failures else 0


def _emit(progress) -> None:
    print(json.dumps(progress.as_dict()), flush=True)


@contextlib.contextmanager
def scratch(path: Path, ram: bool) -> Iterator[Path]:
    """The worker's directory, on a private tmpfs (``ram``); emptied and removed on exit."""
    from graphdrivers.kernel import mount
    if path.exists():                       # a worker killed hard left it: start clean
        mount.unmount_all_under(path)
        shutil.rmtree(path)
    path.mkdir(parents=True)
    try:
        if ram:
            mount.mount("fuzz-campaign", path, "tmpfs", 0, f"size={RAM_SIZE},mode=0755")
        yield path
    finally:
        mount.unmount_all_under(path)
        shutil.rmtree(path, ignore_errors=True)


def home_factory(label: str, base: Path, loop_ext4: bool = False):
    """Fresh homes for the campaign of ``label``: btrfs on its own loop device; vfs and
    overlay2 in a directory of the scratch (its tmpfs), or on an ext4 loop filesystem."""
    import graphdrivers
    from graphdrivers.testing.homes import driver_home
    from graphdrivers.testing.loopfs import loop_filesystem
    name = "overlay2" if label == "overlay2-naive" else label
    counter = itertools.count()

    @contextlib.contextmanager
    def new_home():
        where = base / f"home{next(counter)}"
        where.mkdir()
        try:
            with contextlib.ExitStack() as stack:
                if name == "btrfs" or not loop_ext4:    # the registered makers, as in CI
                    home, options = stack.enter_context(driver_home(name, where))
                else:
                    home = stack.enter_context(loop_filesystem(where, "ext4", FS_SIZE)) / "home"
                    options = {}
                drv = graphdrivers.load(name, home, options)
                stack.callback(drv.cleanup)
                yield drv, home
        finally:
            shutil.rmtree(where, ignore_errors=True)
    return new_home


def replay(tar: Path, label: str, with_parent: bool, workdir: Path, ram: bool,
           loop_ext4: bool = False) -> int:
    from robustness.campaign import replay as replay_one
    from robustness.fuzzing import Session
    if label == "overlay2-naive":
        os.environ[NAIVE_ENV] = "1"
    with scratch(workdir / "work" / f"replay-{label}", ram) as base, \
            home_factory(label, base, loop_ext4)() as (drv, home):
        session = Session(drv, home)
        try:
            replay_one(session, tar, with_parent)
        except AssertionError as exc:
            print(f"{tar}: FAILED on {label} (with_parent={with_parent}): {exc}")
            return 1
        finally:
            with contextlib.suppress(Exception):    # a failed tar may leave its layer
                session.close()
    print(f"{tar}: applied on {label} (with_parent={with_parent}), every check passed")
    return 0


# -- the hypothesis run (shrinks a failure to a minimal tar) -------------------------------

def hypothesis_run(examples: int, drivers: str) -> int:
    """tests/robustness/test_fuzz_apply.py with N random (not derandomized) examples."""
    with tempfile.NamedTemporaryFile(prefix="fuzz-report-", suffix=".jsonl") as report:
        env = dict(os.environ, GRAPHDRIVERS_FUZZ_EXAMPLES=str(examples),
                   GRAPHDRIVERS_FUZZ_REPORT=report.name,
                   GRAPHDRIVERS_TEST_DRIVERS=drivers.replace(",overlay2-naive", ""))
        start = time.monotonic()
        rc = subprocess.call([sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:randomly",
                              str(ROOT / "tests/robustness/test_fuzz_apply.py")], env=env, cwd=ROOT)
        elapsed = time.monotonic() - start
        with open(report.name) as f:
            rows = [json.loads(line) for line in f if line.strip()]
    for row in rows:
        print(f"{row['driver']:15} {row['examples']:8} tars applied, "
              f"{row['driver_errors']:8} refused with a DriverError"
              + (", 0 escapes" if rc == 0 else ", FAILED: see above"))
    print(f"{elapsed:.0f} s, pytest exit code {rc}")
    return rc


if __name__ == "__main__":
    sys.exit(main())

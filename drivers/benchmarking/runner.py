"""``graphdrivers bench run|report``: run the benchmark suites, write a report.

    graphdrivers bench run [--drivers vfs,overlay2,btrfs,devicemapper] [--quick]
                           [--media loop,loop-dio,block]
                           [--block-device /dev/sdX --yes-destroy-data] --out DIR
    graphdrivers bench report DIR

``run`` starts one pytest-benchmark process per suite (bench/test_graphtest.py,
bench/test_fio.py) on the host drivers, writing DIR/raw/<suite>.json, and runs
devicemapper through scripts/vm-test unless this kernel has device-mapper.
Every medium (zram or loop device, mount, dm device) is made and released by
the suites' own fixtures, also on Ctrl-C. ``report`` turns DIR/raw/*.json into
DIR/report.md with tables and PNG charts (see graphdrivers.benchmarking.report).
The suites live in the source checkout's bench/ folder, not in the package.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

SUITES = {"graphtest": "test_graphtest.py", "fio": "test_fio.py"}
HOST_DRIVERS = ("vfs", "overlay2", "btrfs")


def suites_dir() -> Path:
    """Where the suites are: in a wheel, bench/ is installed as
    graphdrivers/benchmarking/suites (setup.cfg's package_dir); an editable install
    runs them from the checkout's bench/."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "suites", here.parents[1] / "bench"):
        if (candidate / "conftest.py").exists():
            return candidate
    raise SystemExit("graphdrivers bench: the benchmark suites are not installed "
                     f"(neither {here / 'suites'} nor a checkout's bench/)")


def repo_root() -> Path:
    """The source checkout (for scripts/vm-test, which only a checkout has)."""
    root = Path(__file__).resolve().parents[2]
    if not (root / "scripts" / "vm-test").exists():
        raise SystemExit("graphdrivers bench: devicemapper runs in the VM of a source "
                         "checkout (scripts/vm-test); this kernel has no device-mapper")
    return root


def _say(msg: str) -> None:
    print(f"bench: {msg}", file=sys.stderr, flush=True)


def _host_has_dm() -> bool:
    """Whether devicemapper runs on this kernel (else its suites go to the VM)."""
    from graphdrivers.errors import DriverError
    from graphdrivers.registry import driver_class
    try:
        driver_class("devicemapper").probe(pathlib.Path("/"))
    except DriverError:
        return False
    return True


def machine_info() -> dict:
    """What makes two reports comparable: machine, kernel, versions, load."""
    import importlib.metadata as md
    versions = {}
    for pkg in ("graphdrivers", "pytest", "pytest-benchmark", "matplotlib", "stevedore"):
        try:
            versions[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            versions[pkg] = None
    fio = shutil.which("fio")
    if fio:
        versions["fio"] = subprocess.run([fio, "--version"], capture_output=True, text=True).stdout.strip()
    cpu = ""
    try:
        for line in open("/proc/cpuinfo", encoding="utf-8"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        mem = next(l.split()[1] for l in open("/proc/meminfo") if l.startswith("MemTotal"))
    except (OSError, StopIteration):
        mem = "0"
    return {"hostname": platform.node(), "kernel": platform.release(), "machine": platform.machine(),
            "cpu": cpu, "cpus": os.cpu_count(), "memory_gib": round(int(mem) / (1 << 20), 1),
            "python": platform.python_version(), "versions": versions,
            "loadavg": os.getloadavg(), "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())}


def _bench_env(args: argparse.Namespace, drivers: list[str]) -> dict[str, str]:
    env = {"GRAPHDRIVERS_BENCH_DRIVERS": ",".join(drivers), "GRAPHDRIVERS_BENCH_MEDIA": args.media,
           "GRAPHDRIVERS_BENCH_QUICK": "1" if args.quick else "0"}
    if args.block_device:
        env.update(GRAPHDRIVERS_BENCH_DEVICE=args.block_device, GRAPHDRIVERS_BENCH_DESTROY="1")
    if args.dm_blocksizes:
        env["GRAPHDRIVERS_BENCH_DM_BLOCKSIZES"] = args.dm_blocksizes
    return env


def _pytest_args(suite: str, json_path: Path) -> list[str]:
    return [str(suites_dir() / SUITES[suite]), "--benchmark-enable", f"--benchmark-json={json_path}",
            "--benchmark-columns=median,iqr,rounds", "--benchmark-sort=name",
            "-p", "no:cacheprovider", "-v", "-rs"]     # -v: one line per case = progress


def _run(cmd: list[str], cwd: Path, env: dict | None, log: Path) -> int:
    """Run one suite; its output goes to the terminal (progress) and to a log."""
    with open(log, "w", encoding="utf-8") as out:
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                out.write(line)
                out.flush()
                sys.stderr.write(line)
            return proc.wait()
        except KeyboardInterrupt:
            # the child got the same SIGINT: let its fixtures release media
            proc.wait()
            raise


def cmd_run(args: argparse.Namespace) -> int:
    if args.block_device and not args.yes_destroy_data:
        _say(f"--block-device {args.block_device} wipes it: add --yes-destroy-data to confirm")
        return 2
    suites_home = suites_dir()
    out = Path(args.out).resolve()
    raw = out / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    drivers = [d for part in args.drivers for d in part.split(",") if d]
    suites = [s for s in args.suites.split(",") if s]
    unknown = [s for s in suites if s not in SUITES]
    if unknown:
        _say(f"unknown suite(s): {', '.join(unknown)} (known: {', '.join(SUITES)})")
        return 2
    host = [d for d in drivers if d != "devicemapper" or _host_has_dm()]
    vm = [d for d in drivers if d not in host]
    info = machine_info()
    if args.note:
        info["note"] = args.note
    info["run"] = {"drivers": drivers, "media": args.media, "quick": args.quick,
                   "block_device": args.block_device, "suites": suites,
                   "devicemapper": "VM (scripts/vm-test)" if vm else ("host" if "devicemapper" in drivers else None)}
    status = 0
    started = time.monotonic()
    for n, suite in enumerate(suites, 1):
        if host:
            _say(f"[{n}/{len(suites)}] {suite}: {', '.join(host)} on {args.media}"
                 f"{' (' + args.block_device + ')' if args.block_device else ' (zram)'}")
            env = dict(os.environ, **_bench_env(args, host))
            cmd = [sys.executable, "-m", "pytest", *_pytest_args(suite, raw / f"{suite}.json")]
            rc = _run(cmd, suites_home, env, raw / f"{suite}.log")
            status = status or (rc if rc not in (0, 5) else 0)
        if vm:
            _say(f"[{n}/{len(suites)}] {suite}: devicemapper in the VM (scripts/vm-test)")
            root = repo_root()
            vm_env = _bench_env(args, ["devicemapper"])
            vm_env["GRAPHDRIVERS_BENCH_DEVICE"] = ""     # the VM's own disks, never the host's
            cmd = [str(root / "scripts" / "vm-test"), "--vm-rwdir", str(raw), "--vm-disks", "3",
                   "--vm-disk-size", "4G", "-m", "",
                   *_pytest_args(suite, raw / f"{suite}-devicemapper.json"),
                   *[f"--bench-env={k}={v}" for k, v in vm_env.items()]]
            rc = _run(cmd, root, None, raw / f"{suite}-devicemapper.log")
            status = status or (rc if rc not in (0, 5) else 0)
    info["loadavg_after"] = os.getloadavg()
    info["duration_s"] = round(time.monotonic() - started, 1)
    # several runs may share one folder (host drivers now, the VM later): keep each
    runs_file = out / "machine.json"
    previous = json.loads(runs_file.read_text()) if runs_file.exists() else []
    runs = previous if isinstance(previous, list) else [previous]
    runs_file.write_text(json.dumps(runs + [info], indent=2) + "\n")
    _say(f"done in {info['duration_s']} s; raw results in {raw}")
    if not args.no_report:
        from graphdrivers.benchmarking import report as bench_report
        _say(f"report: {bench_report.write_report(out)}")
    return status


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="graphdrivers bench",
                                description="run the benchmark suites (run), write a report (report)")
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="run the benchmark suites")
    r.add_argument("--drivers", action="append", default=[],
                   help="comma-separated drivers (default: vfs,overlay2,btrfs,devicemapper)")
    r.add_argument("--quick", action="store_true", help="small sizes, few rounds (a few minutes)")
    r.add_argument("--media", default=None,
                   help="backing media: loop,loop-dio,block (default: loop,block with --quick, else all three)")
    r.add_argument("--suites", default=",".join(SUITES), help="graphtest,fio")
    r.add_argument("--dm-blocksizes", default=None,
                   help="devicemapper pool block sizes (default 64KB,512KB; 64KB with --quick)")
    r.add_argument("--block-device", default=None, help="a real block device to use instead of zram (WIPED)")
    r.add_argument("--yes-destroy-data", action="store_true", help="confirm that --block-device may be wiped")
    r.add_argument("--no-report", action="store_true", help="only the raw JSON, no report.md")
    r.add_argument("--note", default="", help="a remark recorded in the report (e.g. what else ran)")
    r.add_argument("--out", required=True, help="output folder (raw/ JSON, report.md, PNGs)")
    rep = sub.add_parser("report", help="write DIR/report.md and charts from DIR/raw/*.json")
    rep.add_argument("dir")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "report":
        from graphdrivers.benchmarking import report as bench_report
        print(bench_report.write_report(Path(args.dir)))
        return 0
    if not args.drivers:
        args.drivers = list(HOST_DRIVERS) + ["devicemapper"]
    if args.media is None:
        args.media = "loop,block" if args.quick else "loop,loop-dio,block"
    if args.dm_blocksizes is None:
        args.dm_blocksizes = "64KB" if args.quick else "64KB,512KB"
    return cmd_run(args)

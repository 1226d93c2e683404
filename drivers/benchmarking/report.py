"""``graphdrivers bench report DIR``: DIR/raw/*.json (pytest-benchmark) -> DIR/report.md + PNGs.

Every benchmark carries its driver and medium in ``extra_info`` (set by
bench/conftest.py). The report pairs each workload's result on a loop medium
with the same workload on the block medium of the same run and gives the
ratio as a *loop slowdown*: loop time / block time, and for fio block
throughput / loop throughput, so > 1 always means the loop path is slower.
"""
from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path

BASELINE = "block"


@dataclass
class Result:
    suite: str
    workload: str
    driver: str
    medium: str
    unit: str            # "s" (time, lower is better) or "MiB/s" / "IOPS" (higher is better)
    median: float
    q1: float
    q3: float
    lo: float
    hi: float
    rounds: int
    extra: dict = field(default_factory=dict)

    @property
    def higher_is_better(self) -> bool:
        return self.unit != "s"


def _quartiles(values: list[float]) -> tuple[float, float, float]:
    if len(values) == 1:
        return values[0], values[0], values[0]
    q = statistics.quantiles(values, n=4, method="inclusive")
    return q[0], statistics.median(values), q[2]


def _workload(bench: dict) -> str:
    name = bench["name"].split("[", 1)[0].removeprefix("test_")
    params = {k: v for k, v in (bench.get("params") or {}).items() if k != "bench_env"}
    return name + "".join(f"[{v}]" for v in params.values())


def load(raw_dir: Path) -> tuple[list[Result], list[dict]]:
    """All results of DIR/raw/*.json, and the pytest-benchmark machine_info blocks."""
    results, machines = [], []
    for path in sorted(raw_dir.glob("*.json")):
        data = json.loads(path.read_text())
        suite = path.stem.split("-", 1)[0]
        machines.append(dict(data.get("machine_info", {}), file=path.name))
        for b in data.get("benchmarks", []):
            info = b.get("extra_info", {})
            if "driver" not in info:
                continue        # a per-driver suite of its own, not driver x medium
            s = b["stats"]
            common = dict(suite=suite, workload=_workload(b), driver=info["driver"],
                          medium=info["medium"], rounds=s["rounds"], extra=info)
            rows = info.get("fio")
            if rows:
                key, unit = (("iops", "IOPS") if "rand" in common["workload"]
                             or "fsync" in common["workload"] else ("bw_MiBps", "MiB/s"))
                vals = [r[key] for r in rows]
                q1, med, q3 = _quartiles(vals)
                results.append(Result(unit=unit, median=med, q1=q1, q3=q3, lo=min(vals),
                                      hi=max(vals), **common))
            else:
                results.append(Result(unit="s", median=s["median"], q1=s["q1"], q3=s["q3"],
                                      lo=s["min"], hi=s["max"], **common))
    return results, machines


def slowdown(loop: Result, block: Result) -> float | None:
    """loop time / block time (or block throughput / loop throughput)."""
    if not loop.median or not block.median:
        return None
    return (block.median / loop.median) if loop.higher_is_better else (loop.median / block.median)


def _split(medium: str) -> tuple[str, str]:
    kind, _, variant = medium.partition("+")
    return kind, variant


def ratios(results: list[Result]) -> dict[tuple[str, str, str], dict[str, float]]:
    """{(suite, workload, driver): {"loop/block": x, "loop-dio/block": y, ...}}."""
    index: dict[tuple, dict[str, Result]] = {}
    for r in results:
        index.setdefault((r.suite, r.workload, r.driver), {})[r.medium] = r
    out: dict[tuple[str, str, str], dict[str, float]] = {}
    for key, by_medium in index.items():
        for medium, r in by_medium.items():
            kind, variant = _split(medium)
            if kind == BASELINE:
                continue
            block = by_medium.get(BASELINE + (f"+{variant}" if variant else ""))
            if block is None:
                continue
            x = slowdown(r, block)
            if x is not None:
                out.setdefault(key, {})[f"{kind}/block" + (f" @{variant}" if variant else "")] = x
    return out


def _fmt(value: float, unit: str) -> str:
    if unit == "s":
        for scale, u in ((1, "s"), (1e-3, "ms"), (1e-6, "µs")):
            if value >= scale or u == "µs":
                return f"{value / scale:.3g} {u}"
    return f"{value:.3g}" if value < 1000 else f"{value:,.0f}"


def _cell(r: Result) -> str:
    unit = "" if r.unit == "s" else f" {r.unit}"
    return f"{_fmt(r.median, r.unit)}{unit} ({_fmt(r.q1, r.unit)}–{_fmt(r.q3, r.unit)})"


def _geomean(values: list[float]) -> float | None:
    values = [v for v in values if v and v > 0]
    return math.exp(sum(map(math.log, values)) / len(values)) if values else None


# -- charts -----------------------------------------------------------------------

def _log_axis(ax, minor_labels: bool = False) -> None:
    """Log x axis with plain numbers (0.5, 2, 100) instead of 5x10^-1."""
    from matplotlib.ticker import FuncFormatter
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    # on a narrow range (ratios) label the 2s and 5s between the decades too
    ax.xaxis.set_minor_formatter(FuncFormatter(
        lambda v, _: f"{v:g}" if minor_labels and v > 0 and f"{v:.0e}"[0] in "25" else ""))

def _plt():
    import matplotlib
    matplotlib.use("Agg")       # no display; PNG files only
    import matplotlib.pyplot as plt
    return plt


def chart_ratios(suite: str, rat: dict, path: Path) -> Path | None:
    """Horizontal bars: loop/block slowdown per workload, one bar per driver (log axis)."""
    rows = {k: v for k, v in rat.items() if k[0] == suite}
    if not rows:
        return None
    plt = _plt()
    workloads = sorted({k[1] for k in rows})
    series = sorted({(k[2], name) for k, v in rows.items() for name in v}, key=_column_order)
    height = 0.8 / max(len(series), 1)
    fig, ax = plt.subplots(figsize=(9, 0.45 * len(workloads) * max(1, len(series) / 3) + 1.6), dpi=90)
    for i, (driver, name) in enumerate(series):
        ys = [w + (i - (len(series) - 1) / 2) * height for w in range(len(workloads))]
        xs = [rows.get((suite, wl, driver), {}).get(name, float("nan")) for wl in workloads]
        ax.barh(ys, xs, height=height, label=f"{driver} {name}")
    ax.axvline(1.0, color="black", linewidth=0.8)
    _log_axis(ax, minor_labels=True)
    ax.set_yticks(range(len(workloads)), workloads)
    ax.invert_yaxis()
    ax.set_xlabel("loop slowdown (loop / block, median; > 1 = loop slower)")
    ax.set_title(f"{suite}: loop versus block, same device")
    ax.legend(fontsize="small", loc="best")
    ax.grid(axis="x", which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def chart_values(suite: str, results: list[Result], path: Path) -> Path | None:
    """One panel per driver: median per workload and medium, with the IQR as error bars."""
    rs = [r for r in results if r.suite == suite]
    if not rs:
        return None
    plt = _plt()
    drivers = sorted({r.driver for r in rs})
    media = sorted({r.medium for r in rs}, key=_medium_order)
    workloads = sorted({r.workload for r in rs})
    fig, axes = plt.subplots(1, len(drivers), figsize=(4.2 * len(drivers) + 1.5, 0.35 * len(workloads) + 1.8),
                             dpi=90, sharey=True, squeeze=False)
    height = 0.8 / max(len(media), 1)
    for ax, driver in zip(axes[0], drivers):
        for i, medium in enumerate(media):
            ys, xs, err = [], [], [[], []]
            for w, wl in enumerate(workloads):
                r = next((r for r in rs if r.driver == driver and r.medium == medium and r.workload == wl), None)
                if r is None:
                    continue
                scale = 1e3 if r.unit == "s" else 1.0
                ys.append(w + (i - (len(media) - 1) / 2) * height)
                xs.append(r.median * scale)
                err[0].append(max(0.0, (r.median - r.q1) * scale))
                err[1].append(max(0.0, (r.q3 - r.median) * scale))
            if ys:
                ax.barh(ys, xs, height=height, xerr=err, label=medium, capsize=1.5)
        _log_axis(ax)
        ax.set_title(driver)
        ax.grid(axis="x", which="both", alpha=0.3)
        units = {r.workload: r.unit for r in rs}
        ax.set_yticks(range(len(workloads)),
                      [wl if units[wl] == "s" else f"{wl} ({units[wl]})" for wl in workloads])
    axes[0][0].invert_yaxis()
    unit = {r.unit for r in rs}
    axes[0][0].set_xlabel("median ms (IQR bars)" if unit == {"s"} else "median MiB/s or IOPS (IQR bars)")
    axes[0][-1].legend(fontsize="small", loc="best")
    fig.suptitle(f"{suite}: median per driver and medium")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


# -- report.md --------------------------------------------------------------------

WHY = """\
## Why the loop path costs what it costs

* **The extra filesystem.** On `loop` the layer's filesystem sits on an image
  file that is itself a file of a second filesystem (ext4 here). Every write
  goes through both: the block allocation, journal and metadata of the image's
  filesystem come on top of the layer filesystem's own, and an `fsync` in the
  layer becomes a flush of the loop device, which the loop driver turns into an
  `fsync` of the whole image file (the fsync-heavy rows pay this most).
* **Double caching.** A buffered loop device reads and writes the image file
  through the host page cache, so the same data is cached twice: once above the
  loop device (the layer's filesystem) and once below it (the image file).
  Reads that miss the upper cache (fio drops it before each read job) can still
  hit the lower one, which is why sequential *reads* can look as fast or faster
  on loop while writes pay: the memory is spent twice. `loop-dio`
  (`LO_FLAGS_DIRECT_IO`, what Docker never set) removes the second copy and
  its memory copy; its reads then go to the device like the block medium's.
* **Allocation.** The image is sparse (as Docker's loop files are): the first
  write to any block allocates it in the host filesystem too, so first writes
  (`seq_write`, `first_write`, small files) pay twice; rewrites of blocks
  already allocated pay only the extra layering.
* **devicemapper's loop-lvm** puts the thin pool's data and metadata on two
  sparse files: every thin allocation (64 KB blocks by default; 512 KB makes
  fewer, larger allocations and copies more on a partial overwrite of a
  snapshot's block) is also an allocation in the host filesystem, and Docker's
  default on loop files discards a layer's blocks before deleting it
  (`dm.blkdiscard`), so `remove` pays a hole punch in the data file.
* **One worker per loop device.** The loop driver hands requests to a kernel
  worker that turns them into file I/O; small random I/O pays this per request.
"""


def write_report(out: Path) -> Path:
    out = Path(out)
    raw = out / "raw"
    if not any(raw.glob("*.json")):
        raise SystemExit(f"graphdrivers bench report: no results in {raw}/*.json "
                         "(write them with: graphdrivers bench run --out DIR)")
    results, machines = load(raw)
    rat = ratios(results)
    runs: list[dict] = []
    if (out / "machine.json").exists():
        loaded = json.loads((out / "machine.json").read_text())
        runs = loaded if isinstance(loaded, list) else [loaded]
    suites = sorted({r.suite for r in results})
    charts: dict[str, list[Path]] = {}
    for suite in suites:
        made = [chart_ratios(suite, rat, out / f"ratios_{suite}.png"),
                chart_values(suite, results, out / f"values_{suite}.png")]
        charts[suite] = [p for p in made if p]
    lines = ["# graphdrivers benchmark report", ""]
    lines += _machine_section(runs, machines, results)
    lines += _summary_section(rat)
    for suite in suites:
        lines += [f"## Suite `{suite}`", ""]
        lines += [f"![{p.stem}]({p.name})" for p in charts[suite]] + [""]
        for driver in sorted({r.driver for r in results if r.suite == suite}):
            lines += _driver_table(suite, driver, results, rat)
    lines += [WHY, "## Raw data", "",
              "pytest-benchmark JSON, one file per suite (and per VM run): "
              + ", ".join(f"[`raw/{p.name}`](raw/{p.name})" for p in sorted(raw.glob("*.json"))), ""]
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def _machine_section(runs: list[dict], machines: list[dict], results: list[Result]) -> list[str]:
    lines = ["## Machine and run", ""]
    bm = next((m for m in machines if m), {})
    for machine in runs:
        lines += [f"Run of {machine.get('date')} ({machine.get('duration_s')} s): "
                  f"`{json.dumps(machine.get('run', {}))}`", "",
                  f"- machine: {machine.get('cpu')}, {machine.get('cpus')} CPUs, {machine.get('memory_gib')} GiB",
                  f"- kernel: {machine.get('kernel')} ({machine.get('machine')}), Python {machine.get('python')}",
                  "- versions: " + ", ".join(f"{k} {v}" for k, v in machine.get("versions", {}).items() if v),
                  f"- load average (1, 5, 15 min) before / after: {_loads(machine.get('loadavg'))} / "
                  f"{_loads(machine.get('loadavg_after'))}"]
        if machine.get("note"):
            lines.append(f"- **note:** {machine['note']}")
        load = max([*(machine.get("loadavg") or [0]), *(machine.get("loadavg_after") or [0])])
        if machine.get("cpus") and load > machine["cpus"]:
            lines.append(f"- **loaded machine:** load average up to {load:.1f} on {machine['cpus']} CPUs "
                         "(other work ran alongside): expect wide spreads and single ratios that are "
                         "noise; trust consistent patterns across drivers, not one cell")
        lines.append("")
    kernels = [f"`{m['file']}`: {m.get('release')}" for m in machines if m.get("release")]
    if kernels:
        lines += ["Kernel each raw file was measured on (devicemapper runs in a qemu TCG VM: "
                  "compare its ratios, not its absolute times): " + ", ".join(kernels), ""]
    if not runs and bm:
        lines += [f"- machine: {bm.get('cpu', {}).get('brand_raw')}, kernel {bm.get('release')}, "
                  f"Python {bm.get('python_version')}"]
    lines += ["", "Backing media (each driver's home filesystem):", "",
              "| driver | medium | filesystem | device | backing | details |", "|---|---|---|---|---|---|"]
    seen = set()
    for r in results:
        m = r.extra.get("media", {})
        key = (r.driver, r.medium)
        if key in seen or not m:
            continue
        seen.add(key)
        lines.append(f"| {r.driver} | {r.medium} | {m.get('fstype', '')} | {m.get('device', '')} | "
                     f"{m.get('backing', '')} | {json.dumps(m.get('details', {k: v for k, v in m.items() if k == 'blocksize'}))} |")
    return lines + [""]


def _medium_order(medium: str) -> tuple:
    kind, variant = _split(medium)
    order = ("loop", "loop-dio", "block")
    return (variant, order.index(kind) if kind in order else len(order), kind)


def _column_order(column: tuple[str, str]) -> tuple:
    """Per driver: plain loop first, then loop-dio, then other block sizes."""
    driver, name = column
    return (driver, "@" in name, not name.startswith("loop/"), name)


def _loads(values) -> str:
    return ", ".join(f"{v:.1f}" for v in values or [])


def _summary_section(rat: dict) -> list[str]:
    if not rat:
        return ["No loop/block pairs in this run.", ""]
    columns = sorted({(k[2], name) for k, v in rat.items() for name in v}, key=_column_order)
    lines = ["## Headline: loop slowdown per workload and driver", "",
             "Median loop time / median block time on the same device in the same run "
             "(for fio: block throughput / loop throughput). **> 1 means the loop path is slower.**", "",
             "| suite | workload | " + " | ".join(f"{d} {n}" for d, n in columns) + " |",
             "|---|---|" + "---:|" * len(columns)]
    for suite, workload in sorted({(k[0], k[1]) for k in rat}):
        cells = [rat.get((suite, workload, d), {}).get(n) for d, n in columns]
        lines.append(f"| {suite} | {workload} | " + " | ".join(f"{c:.2f}" if c else "–" for c in cells) + " |")
    geo = [_geomean([v.get(n) for k, v in rat.items() if k[2] == d and n in v]) for d, n in columns]
    lines.append("| **all** | **geometric mean** | " + " | ".join(f"**{g:.2f}**" if g else "–" for g in geo) + " |")
    return lines + [""]


def _driver_table(suite: str, driver: str, results: list[Result], rat: dict) -> list[str]:
    rs = [r for r in results if r.suite == suite and r.driver == driver]
    media = sorted({r.medium for r in rs}, key=_medium_order)
    names = [n for _, n in sorted({(driver, n) for k, v in rat.items() if k[0] == suite and k[2] == driver
                                   for n in v}, key=_column_order)]
    lines = [f"### {suite} — {driver}", "",
             "Median (interquartile range)" + (" of time per operation" if rs and rs[0].unit == "s"
                                                else " of fio throughput, per round")
             + f"; rounds: {min(r.rounds for r in rs)}–{max(r.rounds for r in rs)}.", "",
             "| workload | " + " | ".join(media) + " | " + " | ".join(names) + " |",
             "|---|" + "---:|" * (len(media) + len(names))]
    for wl in sorted({r.workload for r in rs}):
        by = {r.medium: r for r in rs if r.workload == wl}
        cells = [_cell(by[m]) if m in by else "–" for m in media]
        cells += [f"{rat[(suite, wl, driver)][n]:.2f}" if n in rat.get((suite, wl, driver), {}) else "–"
                  for n in names]
        lines.append(f"| {wl} | " + " | ".join(cells) + " |")
    return lines + [""]

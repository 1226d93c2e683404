"""The long hostile-tar campaign (issue 9): N random examples per driver, on demand.

    python3 bench/fuzz_apply.py --examples 100000 [--drivers vfs,overlay2,btrfs]

Runs tests/robustness/test_fuzz_apply.py with GRAPHDRIVERS_FUZZ_EXAMPLES=N
(random, not derandomized, so every run explores new tars) and prints how
many tars each driver applied and refused. A failure prints the shrunk tar
and a ``@reproduce_failure`` blob; turn it into a regression test in
tests/robustness/test_breakouts.py. 1,000 examples per driver took ~45 s
on a quiet 2-core machine (~10 min with six other jobs): 100,000 is about
an hour or more per driver.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int,
                        default=int(os.environ.get("GRAPHDRIVERS_FUZZ_EXAMPLES", "100000")))
    parser.add_argument("--drivers", default=os.environ.get("GRAPHDRIVERS_TEST_DRIVERS",
                                                            "vfs,overlay2,btrfs"))
    args = parser.parse_args(argv)
    with tempfile.NamedTemporaryFile(prefix="fuzz-report-", suffix=".jsonl") as report:
        env = dict(os.environ, GRAPHDRIVERS_FUZZ_EXAMPLES=str(args.examples),
                   GRAPHDRIVERS_FUZZ_REPORT=report.name, GRAPHDRIVERS_TEST_DRIVERS=args.drivers)
        start = time.monotonic()
        rc = subprocess.call([sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:randomly",
                              str(ROOT / "tests/robustness/test_fuzz_apply.py")], env=env, cwd=ROOT)
        elapsed = time.monotonic() - start
        with open(report.name) as f:
            rows = [json.loads(line) for line in f if line.strip()]
    for row in rows:
        print(f"{row['driver']:10} {row['examples']:8} tars applied, "
              f"{row['driver_errors']:8} refused with a DriverError"
              + (", 0 escapes" if rc == 0 else ", FAILED: see above"))
    print(f"{elapsed:.0f} s, pytest exit code {rc}")
    return rc


if __name__ == "__main__":
    sys.exit(main())

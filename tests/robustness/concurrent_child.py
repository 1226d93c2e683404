"""One of several processes working on the same home (test_concurrency.py).

    python3 concurrent_child.py <driver> <home> <options-json> <tag> <n> <sync-dir>

Loads the driver, says ``<tag>.ready``, waits for ``go``, runs the workload
(diffs mount the shared parents, no read_parent op), writes its model to ``<tag>.json``, says
``<tag>.done``, waits for ``finish`` so that no process cleans up while
another still works, then calls cleanup().
"""
from __future__ import annotations

import base64
import json
import sys
import time
from pathlib import Path

import graphdrivers

from workload import run  # the test puts tests/robustness on sys.path


def wait_for(path: Path, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {path}")
        time.sleep(0.02)


def main() -> None:
    name, home, options, tag, n, sync = sys.argv[1:7]
    sync_dir = Path(sync)
    drv = graphdrivers.load(name, home, json.loads(options))
    (sync_dir / f"{tag}.ready").touch()
    wait_for(sync_dir / "go")
    model = run(drv, tag, int(n), seed=sum(map(ord, tag)), share_mounts=False)
    out = {layer: [parent, {k: base64.b64encode(v).decode() for k, v in files.items()}]
           for layer, (parent, files) in model.items()}
    (sync_dir / f"{tag}.json").write_text(json.dumps(out))
    (sync_dir / f"{tag}.done").touch()
    wait_for(sync_dir / "finish")
    drv.cleanup()


if __name__ == "__main__":
    main()

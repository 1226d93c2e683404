"""Mixed layer operations for the concurrency tests, with a model to check against.

Each worker owns the layers it creates (``<tag>-<k>``) and reads the shared
parents; every operation is checked at once (what it reads back is what was
written) and the model of the owned layers is returned for a final check.
"""
from __future__ import annotations

import random
import tarfile
from pathlib import Path

PARENTS = {"p0": (None, {"etc/p0": b"p0\n"}),
           "p1": ("p0", {"etc/p1": b"p1\n"}),
           "p2": ("p1", {"usr/p2": b"p2\n" * 100})}
OPS = ["create"] * 3 + ["write"] * 3 + ["read_parent"] * 2 + ["diff", "remove", "mount_twice"]


def make_parents(driver) -> None:
    for layer, (parent, files) in PARENTS.items():
        driver.create(layer, parent)
        root = Path(driver.mount(layer))
        try:
            for name, data in files.items():
                (root / name).parent.mkdir(parents=True, exist_ok=True)
                (root / name).write_bytes(data)
        finally:
            driver.unmount(layer)


def parent_files(layer: str | None) -> dict[str, bytes]:
    """Every file a layer made on ``layer`` inherits."""
    files: dict[str, bytes] = {}
    while layer is not None:
        parent, own = PARENTS[layer]
        files = {**own, **files}
        layer = parent
    return files


def tree_files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def run(driver, tag: str, n: int, seed: int,
        share_mounts: bool = True) -> dict[str, tuple[str | None, dict[str, bytes]]]:
    """``n`` mixed operations; returns {layer: (parent, files written)} still alive.

    ``share_mounts=False`` leaves out the op that mounts a shared parent by itself
    (read_parent); diffs and changes still mount the shared parents beside the other
    processes.
    """
    rng = random.Random(seed)
    ops = OPS if share_mounts else [op for op in OPS if op != "read_parent"]
    mine: dict[str, tuple[str | None, dict[str, bytes]]] = {}
    for k in range(n):
        op = rng.choice(ops) if mine else "create"
        if op == "create":
            layer, parent = f"{tag}-{k}", rng.choice([None, "p0", "p1", "p2"])
            driver.create(layer, parent, rw=True)
            mine[layer] = (parent, {})
        elif op == "read_parent":
            layer = rng.choice(list(PARENTS))
            root = Path(driver.mount(layer))
            try:
                assert tree_files(root) == parent_files(layer), f"{tag}: parent {layer} reads wrong"
            finally:
                driver.unmount(layer)
            continue
        layer = rng.choice(list(mine))
        parent, files = mine[layer]
        if op == "write":
            name, data = f"w/{tag}-{k}", f"{tag} {k} {rng.random()}\n".encode()
            root = Path(driver.mount(layer))
            try:
                (root / name).parent.mkdir(exist_ok=True)
                (root / name).write_bytes(data)
                files[name] = data
            finally:
                driver.unmount(layer)
        elif op == "mount_twice":
            first = Path(driver.mount(layer))
            try:
                second = Path(driver.mount(layer))
                assert second == first
                driver.unmount(layer)
                # still mounted: the first reference holds it
                assert tree_files(first) == {**parent_files(parent), **files}, f"{tag}: {layer}"
            finally:
                driver.unmount(layer)
        elif op == "diff":
            stream = driver.diff(layer, parent)
            try:
                with tarfile.open(fileobj=stream, mode="r|") as tar:
                    got = {m.name: tar.extractfile(m).read() for m in tar if m.isfile()}
            finally:
                stream.close()
            want = files if parent is not None else {**files}
            assert got == want, f"{tag}: diff of {layer}: {sorted(got)} != {sorted(want)}"
        elif op == "remove":
            driver.remove(layer)
            del mine[layer]
    return mine


def check(driver, model: dict[str, tuple[str | None, dict[str, bytes]]]) -> None:
    for layer, (parent, files) in model.items():
        assert driver.parent(layer) == parent
        root = Path(driver.mount(layer))
        try:
            assert tree_files(root) == {**parent_files(parent), **files}, layer
        finally:
            driver.unmount(layer)

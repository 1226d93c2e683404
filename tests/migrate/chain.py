"""A chain of layers with every kind of entry, and an independent comparison of two drivers.

The chain is made through the driver's public interface only (mount, edit, unmount), so
each backend stores the deletions and opaque directories its own way (whiteout devices,
opaque xattrs, plain deletions) and its diff turns them into OCI whiteouts.
"""
from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

from graphdrivers.testing.conformance.helpers import (assert_same_tree, build_rich_tree, content,
                                                      hardlink_groups, mounted, snapshot, write)

T = 1_650_000_000
SPARSE_SIZE = 8 << 20


def _sparse(root: Path, rel: str, seed: int) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.write(content(seed, 5000))
        f.seek(SPARSE_SIZE // 2)
        f.write(content(seed + 1, 3000))
        f.truncate(SPARSE_SIZE)
    os.utime(path, (T, T))


def _edit(root: Path, n: int) -> None:
    """Layer n's changes over layer n-1: a different mix of entry kinds each time."""
    write(root, f"layers/l{n:02}.txt", f"layer {n}\n", 0o644, mtime=T + n)
    step = n % 10
    if step == 1:      # a file deleted (whiteout), a file modified in place
        if (root / "etc/shadow").exists():
            os.unlink(root / "etc/shadow")
        write(root, "etc/hosts", f"10.0.0.{n} host\n", 0o644, mtime=T + n)
    elif step == 2:    # a directory deleted whole; a new hard link to a lower file
        shutil.rmtree(root / "home/alice" if (root / "home/alice").exists()
                      else root / f"many/{n - 2}")
        os.link(root / "usr/bin/python3.11", root / f"usr/bin/python-{n}")
    elif step == 3:    # an opaque directory: replaced by a new one with other contents
        shutil.rmtree(root / "opt")
        (root / "opt").mkdir(0o751)
        write(root, "opt/new", "new opt\n", 0o600, uid=12, gid=13, mtime=T + n)
    elif step == 4:    # special files and a sparse file
        os.mkfifo(root / f"fifo-{n}", 0o600)
        os.mknod(root / f"tty-{n}", 0o620 | stat.S_IFCHR, os.makedev(4, n))
        os.mknod(root / f"disk-{n}", 0o640 | stat.S_IFBLK, os.makedev(8, n))
        _sparse(root, f"var/sparse-{n}.img", n)
    elif step == 5:    # symlinks: retargeted, new dangling, a file replaced by a symlink
        os.unlink(root / "usr/bin/py")
        os.symlink(f"python-{n}", root / "usr/bin/py")
        os.symlink(f"/missing/{n}", root / f"dangling-{n}")
        if (root / "empty").exists():
            os.unlink(root / "empty")
            os.symlink("etc/hosts", root / "empty")
    elif step == 6:    # metadata only: mode, owner, mtime, xattrs
        os.chmod(root / "big.bin", 0o640)
        os.chown(root / "bin/wall", 7, 7)
        os.chmod(root / "bin/wall", 0o2711)
        os.setxattr(root / "etc/hosts", "user.comment", f"changed in {n}".encode())
        os.setxattr(root / "layers", "user.layer", str(n).encode())
    elif step == 7:    # a big file rewritten, a hard link group made in the layer
        write(root, "big.bin", content(n, 200_000), 0o600, mtime=T + n)
        write(root, f"links/a{n}", content(n + 100, 3000), 0o644, mtime=T + n)
        os.link(root / f"links/a{n}", root / f"links/b{n}")
    elif step == 8:    # a directory replaced by a file, a file by a directory
        if (root / "tmp").is_dir():
            shutil.rmtree(root / "tmp")
        write(root, "tmp", "now a file\n", 0o644, mtime=T + n)
        os.unlink(root / f"layers/l{n:02}.txt")
        (root / f"layers/l{n:02}.txt").mkdir()
    elif step == 9:    # deep paths, a capability
        write(root, "long/" + "x" * 90 + f"/{n}/" + "y" * 80, "deep\n", 0o644, mtime=T + n)
        write(root, f"usr/sbin/cap-{n}", content(n, 700), 0o755, mtime=T + n)
        os.setxattr(root / f"usr/sbin/cap-{n}", "security.capability",
                    bytes.fromhex("0100000200040000000000000000000000000000"))
    else:              # step 0: a file restored after its deletion, many small files
        write(root, "etc/shadow", f"back in {n}\n", 0o600, mtime=T + n)
        for i in range(20):
            write(root, f"many/{n}/f{i}", content(n * 100 + i, 64 * i), 0o644, mtime=T + n)


def build_chain(driver, depth: int = 21, *, prefix: str = "m") -> list[str]:
    """Layers ``<prefix>00`` .. ``<prefix>NN``: a rich base, ``depth - 1`` children each
    with edits, a read-write top layer, and a sibling branch off the middle."""
    ids = [f"{prefix}{i:02}" for i in range(depth)]
    driver.create(ids[0])
    with mounted(driver, ids[0]) as root:
        build_rich_tree(root)
        _sparse(root, "var/base-sparse.img", 99)
    for n in range(1, depth):
        driver.create(ids[n], ids[n - 1])
        with mounted(driver, ids[n]) as root:
            _edit(root, n)
    top = f"{prefix}-rw"
    driver.create(top, ids[-1], rw=True)
    with mounted(driver, top) as root:
        write(root, "container.log", "running\n", 0o640)
        os.unlink(root / "etc/hosts")
    branch = f"{prefix}-branch"
    driver.create(branch, ids[depth // 2])
    with mounted(driver, branch) as root:
        write(root, "branch", "a sibling of the chain\n", 0o644, mtime=T)
    return ids + [top, branch]


def layer_view(driver, layer_id: str, own: set | None = None) -> tuple[dict, set]:
    """The layer's whole tree, and the hard links among the paths it changed (``own``,
    default: its own changes); one to a file of a lower layer is a plain file in a layer
    tar (Docker's format cannot say otherwise)."""
    if own is None:
        own = {c.path[1:] for c in driver.changes(layer_id)}
    with mounted(driver, layer_id) as root:
        return snapshot(root), _within(hardlink_groups(root), own)


def assert_same_layers(source, target, ids: list[str]) -> None:
    """Every layer: same parent, rw flag and whole tree (independent of migrate's verify)."""
    assert sorted(target.layers()) == sorted(source.layers())
    for layer_id in ids:
        assert target.parent(layer_id) == source.parent(layer_id), layer_id
        assert target.info(layer_id)["rw"] == source.info(layer_id)["rw"], layer_id
        own = {c.path[1:] for c in source.changes(layer_id)}
        want, want_links = layer_view(source, layer_id, own)
        got, got_links = layer_view(target, layer_id, own)
        assert_same_tree(want, got)
        assert got_links == want_links, layer_id


def _within(groups: set, paths: set) -> set:
    return {frozenset(g & paths) for g in groups if len(g & paths) > 1}

"""The ctr cycle run on one snapshotter; what it observed, for comparison with another.

``run_cycle`` drives containerd through import, run, a container's changes,
diff, commit, view, label, info, usage, rm and ls, and returns an
``Observation``: everything in it must be the same for graphdrivers and for
containerd's built-in snapshotter with the same storage model
(``REFERENCE``), and the parts with fixed answers (``CHANGES_DIFF``,
image.CHECK_OUT) must equal those too.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Callable

from containerd import image, tree
from containerd.engine import Containerd, snapshot_info, snapshot_list

# The built-in snapshotter whose storage model matches each driver's: overlayfs
# shares lower layers (a lower file keeps its other links' count), the others copy.
REFERENCE = {"overlay2": "overlayfs", "vfs": "native", "btrfs": "native",
             "devicemapper": "native"}

# A container's changes: modify, delete a file, a symlink and a directory from
# lower layers, add a directory, a setuid file, a hard link and a symlink,
# touch a lower file (a metadata-only change).
CHANGES = ("echo changed > /etc/motd; rm /data/keep /data/link; rm -r /opq/sub2; "
           "mkdir -p /new/dir; echo added > /new/dir/file; chmod 4711 /new/dir/file; "
           "ln /new/dir/file /new/hard; ln -s dir/file /new/sym; touch /hl/b")
# (name, tar type) of its diff; runc adds /run (the default spec mounts a tmpfs there)
CHANGES_DIFF = [("data", "5"), ("data/.wh.keep", "0"), ("data/.wh.link", "0"),
                ("etc", "5"), ("etc/motd", "0"), ("hl", "5"), ("hl/b", "0"), ("new", "5"),
                ("new/dir", "5"), ("new/dir/file", "0"), ("new/hard", "1"), ("new/sym", "2"),
                ("opq", "5"), ("opq/.wh.sub2", "0"), ("run", "5")]
AFTER_CHANGES = ("cat /etc/motd /new/hard; readlink /new/sym; stat -c '%a %h' /new/dir/file; "
                 "test -e /data/keep || echo keep-gone; test -e /opq/sub2 || echo sub2-gone; "
                 "cat /opq/new /data/gone")
AFTER_CHANGES_OUT = ("changed\nadded\ndir/file\n4711 2\nkeep-gone\nsub2-gone\nnew in 3\n"
                     "back in 4\n")
# what a refused operation must say (the built-ins disagree on committing a
# view: native fails on a missing directory with Unknown, overlayfs says failed precondition)
REFUSALS = {"prepare taken key": "already exists", "rm with a child": "failed precondition",
            "commit a view": "failed precondition", "info of nothing": "not found"}
MIB = 1 << 20
REF5 = "localhost/graphdrivers-e2e:5"


@dataclass
class Observation:
    """What one snapshotter showed; compared field by field between two."""
    check: str = ""
    image_tree: dict = field(default_factory=dict)
    diff: list = field(default_factory=list)
    ls: dict = field(default_factory=dict)        # step -> snapshot_list rows
    tree5: dict = field(default_factory=dict)
    after_changes: str = ""
    info: dict = field(default_factory=dict)      # key -> (Kind, Name, Parent, our labels)
    errors: dict = field(default_factory=dict)    # refused operation -> ok?
    usage: dict = field(default_factory=dict)     # what usage showed, as facts


def ctr_snap(engine: Containerd, snapshotter: str, *args: str) -> str:
    return engine.ctr("snapshots", "--snapshotter", snapshotter, *args)


def refused(engine: Containerd, snapshotter: str, *args: str) -> str:
    """Run a ctr snapshots command that must fail; the kind of failure, in a word."""
    done = engine.ctr_result("snapshots", "--snapshotter", snapshotter, *args)
    if done.returncode == 0:
        return "accepted"
    message = done.stderr.decode(errors="replace").lower()
    for kind in ("already exists", "not found", "failed precondition", "invalid argument"):
        if kind in message:
            return kind
    return message.strip()


def our_labels(info: dict) -> dict:
    return {k: v for k, v in (info.get("Labels") or {}).items()
            if not k.startswith("containerd.io/")}


def info_of(engine: Containerd, snapshotter: str, key: str) -> tuple:
    info = snapshot_info(engine, snapshotter, key)
    return (info["Kind"], info["Name"], info.get("Parent", ""), our_labels(info))


def usage_bytes(engine: Containerd, snapshotter: str, key: str) -> tuple[int, int]:
    row = ctr_snap(engine, snapshotter, "usage", "-b", key).splitlines()[1].split()
    return int(row[1]), int(row[2])


def write_into(engine: Containerd, snapshotter: str, key: str, rel: str, data: bytes) -> None:
    """Write one file into active snapshot ``key``, mounted as containerd would."""
    with tree.mounted(engine, snapshotter, key) as root:
        with open(root / rel, "wb") as f:
            f.write(data)
            os.fsync(f.fileno())


def view(engine: Containerd, snapshotter: str, key: str, parent: str) -> None:
    """``ctr snapshots view``, kept from containerd's garbage collector by a
    gc.root label. ctr 1.6 cannot label a view as it makes it (prepare and
    commit carry the label, view does not), and the collector removes an
    unlabelled view within a second: if it struck between the two commands,
    the view is made again."""
    for _ in range(3):
        ctr_snap(engine, snapshotter, "view", key, parent)
        done = engine.ctr_result("snapshots", "--snapshotter", snapshotter, "label", key,
                                 "containerd.io/gc.root=gde2e")
        if done.returncode == 0:
            return
    raise AssertionError(f"view {key} was collected three times before it could be labelled: "
                         f"{done.stderr.decode(errors='replace')}")


def import_and_check(engine: Containerd, snapshotter: str, img: image.Image,
                     obs: Observation) -> None:
    engine.ctr("image", "import", "--snapshotter", snapshotter, str(img.path))
    obs.check = engine.run(snapshotter, img.ref, "check1", image.CHECK)
    view(engine, snapshotter, "image-view", img.chain_ids[-1])
    obs.image_tree = tree.snapshot_tree(engine, snapshotter, "image-view")
    ctr_snap(engine, snapshotter, "rm", "image-view")
    obs.ls["imported"] = snapshot_list(engine, snapshotter)


def change_and_commit(engine: Containerd, snapshotter: str, img: image.Image,
                      obs: Observation) -> bytes:
    """A container changes files; its diff; commit it as layer5 and view it as v5."""
    engine.run(snapshotter, img.ref, "c1", CHANGES, keep=True)
    blob = tree.diff_blob(engine, snapshotter, "c1")
    obs.diff = tree.tar_entries(blob)
    ctr_snap(engine, snapshotter, "commit", "layer5", "c1")
    engine.ctr("containers", "rm", "c1")
    view(engine, snapshotter, "v5", "layer5")
    obs.tree5 = tree.snapshot_tree(engine, snapshotter, "v5")
    obs.ls["committed"] = snapshot_list(engine, snapshotter)
    return blob


def run_on_diff(engine: Containerd, snapshotter: str, img: image.Image, blob: bytes,
                obs: Observation) -> None:
    """The diff as a fifth image layer: containerd unpacks it through the
    snapshotter on top of the four it has, and a container sees the changes."""
    img5 = image.docker_save(img.path.with_name("image5.tar"), ref=REF5, extra=[blob])
    engine.ctr("image", "import", "--snapshotter", snapshotter, str(img5.path))
    obs.after_changes = engine.run(snapshotter, img5.ref, "check5", AFTER_CHANGES)
    engine.ctr("image", "rm", img5.ref)
    # its digest holds the container's mtimes: drop it now rather than at the next
    # collection (which, started by the image's removal, may already have taken it)
    done = engine.ctr_result("snapshots", "--snapshotter", snapshotter, "rm", img5.chain_ids[-1])
    assert done.returncode == 0 or b"not found" in done.stderr, done.stderr


def labels_and_info(engine: Containerd, snapshotter: str, obs: Observation) -> None:
    ctr_snap(engine, snapshotter, "label", "layer5", "team=storage", "note=first")
    obs.info["labelled"] = info_of(engine, snapshotter, "layer5")
    ctr_snap(engine, snapshotter, "label", "layer5", "note=")        # an empty value removes
    obs.info["unlabelled"] = info_of(engine, snapshotter, "layer5")
    obs.info["v5"] = info_of(engine, snapshotter, "v5")


def usage_facts(engine: Containerd, snapshotter: str, obs: Observation) -> None:
    """Usage as facts both storage models share: committed layers use space and
    inodes; 1 MiB written into an active snapshot shows as at least 1 MiB more."""
    ctr_snap(engine, snapshotter, "prepare", "grow", "layer5")
    before = usage_bytes(engine, snapshotter, "grow")
    write_into(engine, snapshotter, "grow", "one-mib", b"\x5a" * MIB)
    after = usage_bytes(engine, snapshotter, "grow")
    size5, inodes5 = usage_bytes(engine, snapshotter, "layer5")
    obs.usage = {"layer5 uses bytes": size5 > 0, "layer5 uses inodes": inodes5 > 0,
                 "grew by 1 MiB": after[0] - before[0] >= MIB,
                 "one more inode": after[1] - before[1] >= 1}
    ctr_snap(engine, snapshotter, "rm", "grow")


def refusals_and_removal(engine: Containerd, snapshotter: str, obs: Observation) -> None:
    obs.errors = {
        "prepare taken key": refused(engine, snapshotter, "prepare", "v5", "layer5"),
        "rm with a child": refused(engine, snapshotter, "rm", "layer5"),
        "commit a view": refused(engine, snapshotter, "commit", "x", "v5"),
        "info of nothing": refused(engine, snapshotter, "info", "no-such-key"),
    }
    ctr_snap(engine, snapshotter, "rm", "v5")
    ctr_snap(engine, snapshotter, "rm", "layer5")
    obs.ls["removed"] = snapshot_list(engine, snapshotter)


def run_cycle(engine: Containerd, snapshotter: str, img: image.Image,
              restart: Callable[[], None] | None = None) -> Observation:
    """The whole cycle; ``restart`` (if given) runs after the commit, and
    everything seen before it must be seen again after it."""
    obs = Observation()
    import_and_check(engine, snapshotter, img, obs)
    blob = change_and_commit(engine, snapshotter, img, obs)
    if restart is not None:
        restart()
        assert snapshot_list(engine, snapshotter) == obs.ls["committed"], "ls changed"
        assert tree.snapshot_tree(engine, snapshotter, "v5") == obs.tree5, "v5 changed"
        obs.check = engine.run(snapshotter, img.ref, "check2", image.CHECK)
    labels_and_info(engine, snapshotter, obs)
    usage_facts(engine, snapshotter, obs)
    run_on_diff(engine, snapshotter, img, blob, obs)
    refusals_and_removal(engine, snapshotter, obs)
    return obs


def compare(reference: Observation, got: Observation) -> list[str]:
    """The fields where ``got`` differs from ``reference``, each with a short account
    (refusals are checked against REFUSALS instead)."""
    problems = []
    for name in Observation.__dataclass_fields__:
        if name == "errors":
            continue
        want, have = getattr(reference, name), getattr(got, name)
        if want == have:
            continue
        if isinstance(want, dict) and isinstance(have, dict):
            keys = sorted(set(want) | set(have), key=str)
            diffs = [f"{k}: {want.get(k)!r} != {have.get(k)!r}" for k in keys
                     if want.get(k) != have.get(k)]
            problems.append(f"{name}: " + "; ".join(diffs[:8]))
        else:
            problems.append(f"{name}: {want!r} != {have!r}")
    return problems


def fixed_answer_problems(obs: Observation) -> list[str]:
    """Where ``obs`` misses the answers known beforehand (not taken from a reference)."""
    problems = []
    if obs.check != image.CHECK_OUT:
        problems.append(f"check printed {obs.check!r}")
    if [(row[0], row[1]) for row in obs.diff] != CHANGES_DIFF:
        problems.append(f"diff {[(row[0], row[1]) for row in obs.diff]}")
    if obs.after_changes != AFTER_CHANGES_OUT:
        problems.append(f"the diff as a layer gave {obs.after_changes!r}")
    for name, want in IMAGE_FACTS.items():
        if obs.image_tree.get(name, ())[:len(want)] != want:
            problems.append(f"image {name}: {obs.image_tree.get(name)!r}, want {want!r}...")
    if not all(obs.usage.values()):
        problems.append(f"usage {obs.usage}")
    return problems


# Entries of the image as mounted, by tree.read_tree's records (prefixes of them)
IMAGE_FACTS = {
    "usr/local/bin/suid": ("file", 0o4755, 0, 0),
    "home/guest/owned": ("file", 0o640, 1000, 1000),
    "xattr": ("dir", 0o755, 0, 0, (("user.dir", b"on-a-dir"),)),
    "xattr/l3": ("file", 0o644, 0, 0, 3, tree.sha16(b"l3\n"), 1, (("user.layer", b"3"),)),
    "data/link": ("symlink", "keep", 0, 0),
    "tmp": ("dir", 0o1777, 0, 0),
}

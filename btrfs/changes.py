"""Changes between a snapshot and its parent in O(changes), from btrfs itself.

Docker's btrfs driver walks both trees for every diff (moby#10091). Here:

1. A snapshot made in transaction T starts as the parent's tree. Any inode
   changed since, on either side, has its inode item rewritten with a
   ``transid`` > T. The tree search ioctl with ``min_transid=T+1`` skips every
   subtree older than that, so it visits only the leaves written since. An
   inode whose item differs from the other tree's only in atime (a read under
   relatime) is not a change (_only_atime).
2. The changed inodes' names (INODE_REF/EXTREF items, plus INO_LOOKUP for the
   directory path) give candidate paths in each tree. Creating, renaming,
   linking or deleting an entry rewrites the directory's inode item, and
   putting an inode at a new name rewrites that inode's (ctime), so every
   path whose entry changed is a candidate or sits in a candidate directory.
3. The naive walk's own entry comparison (graphdrivers.changes) then runs on
   the candidates and their ancestors only; directories that are neither
   changed nor above a change are never opened.

The result is exactly what the full tree walk gives (tests prove it on the
conformance cases and on random trees). ``changes`` returns None when the
shortcut does not apply (not a direct snapshot, nested subvolumes), and the
driver then walks the trees.
"""
from __future__ import annotations

import os
import stat
from typing import Iterable

from graphdrivers.driver import Change, ChangeKind

from . import ioctl
from .structs import INODE_EXTREF, INODE_ITEM, INODE_REF

def changes(layer: str | os.PathLike, base: str | os.PathLike) -> list[Change] | None:
    """Changes of subvolume ``layer`` against subvolume ``base`` it was snapshotted from."""
    layer, base = os.fspath(layer), os.fspath(base)
    lfd = os.open(layer, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    bfd = os.open(base, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        linfo, binfo = ioctl.subvol_info(lfd), ioctl.subvol_info(bfd)
        if linfo.parent_uuid != binfo.uuid:
            return None          # not a snapshot of base: only a tree walk can tell
        if _has_nested(lfd, linfo.id) or _has_nested(bfd, binfo.id):
            return None          # a nested subvolume's files live in another tree
        # Commit first: recent changes sit in delayed items the tree search
        # cannot see yet. BTRFS_IOC_SYNC also writes dirty data back: a write in
        # the same clock tick as the last change leaves mtime alone, and only the
        # finished writeback then rewrites the inode item (a commit alone would
        # miss a size change made that way).
        ioctl.sync(lfd)
        since = linfo.otransid
        candidates: set[str] = set()
        sides = ((lfd, linfo.id, bfd, binfo.id), (bfd, binfo.id, lfd, linfo.id))
        for fd, tree, other_fd, other_tree in sides:
            changed = ioctl.changed_inodes(fd, tree, since)
            others = ioctl.inode_items(other_fd, other_tree, set(changed))
            real = [ino for ino, item in changed.items()
                    if not _only_atime(item, others.get(ino), since, linfo.otime)]
            candidates.update(_paths_of(fd, tree, real))
    finally:
        os.close(lfd)
        os.close(bfd)
    return compare(layer, base, candidates)


def _has_nested(fd: int, tree: int) -> bool:
    for _item in ioctl.tree_search(fd, ioctl.ROOT_TREE_OBJECTID, (tree, ioctl.ROOT_REF_KEY, 0),
                                   (tree, ioctl.ROOT_REF_KEY, ioctl.U64_MAX)):
        return True
    return False


_TRANSID = INODE_ITEM.span("transid")
_ATIME = INODE_ITEM.span("atime")


def _masked(item: bytes) -> bytes:
    """The inode item with the fields a read may rewrite (transid, atime) zeroed."""
    raw = bytearray(item)
    raw[_TRANSID] = bytes(_TRANSID.stop - _TRANSID.start)
    raw[_ATIME] = bytes(_ATIME.stop - _ATIME.start)
    return bytes(raw)


def _only_atime(item: bytes, other: bytes | None, since: int, snapshot_time: float) -> bool:
    """True if this inode differs from the other tree's copy in its access time only.

    Reads rewrite inode items too (relatime), and would make every directory a
    container listed, or a naive diff walked, a candidate. Everything the
    comparison looks at lives in the item (mode, owner, size, mtime, ...) except
    directory entries and xattrs; adding, removing or renaming an entry and
    setting an xattr bump the item's ``sequence`` (i_version) and ctime, which
    atime updates never touch. So equal items (atime and transid aside) mean an
    equal inode when the other copy is unchanged since the snapshot, or when
    both were last changed (ctime) well before the snapshot was taken.
    """
    if other is None or _masked(item) != _masked(other):
        return False
    if INODE_ITEM.unpack(other).transid <= since:
        return True
    inode = INODE_ITEM.unpack(item)
    return inode.ctime_sec + inode.ctime_nsec / 1e9 < snapshot_time - 1.0


def _paths_of(fd: int, tree: int, inodes: Iterable[int]) -> set[str]:
    """Every name (relative path, "" for the root) of each inode in ``tree``."""
    dirs: dict[int, str] = {}

    def dir_path(ino: int) -> str:
        if ino not in dirs:
            dirs[ino] = "" if ino == ioctl.FIRST_FREE_OBJECTID else ioctl.ino_lookup(fd, tree, ino)
        return dirs[ino]

    paths: set[str] = set()
    for ino in inodes:
        if ino == ioctl.FIRST_FREE_OBJECTID:
            paths.add("")
            continue
        # one inode's refs fit a leaf: a leaf-sized buffer, not the default 256 KiB (one
        # search per changed inode; the big buffer's allocation cost more than the search)
        for item in ioctl.tree_search(fd, tree, (ino, ioctl.INODE_REF_KEY, 0),
                                      (ino, ioctl.INODE_EXTREF_KEY, ioctl.U64_MAX),
                                      buf_size=ioctl.LEAF_MAX):
            for parent, name in _refs(item):
                paths.add(dir_path(parent) + name)
    return paths


def _refs(item: ioctl.Item) -> Iterable[tuple[int, str]]:
    """(parent directory, name) of each entry in an INODE_REF or INODE_EXTREF item."""
    data, pos = item.data, 0
    while pos < len(data):
        if item.type == ioctl.INODE_REF_KEY:         # the parent is the key's offset
            ref = INODE_REF.unpack(data, pos)
            parent = item.offset
            pos += INODE_REF.size
        else:
            ref = INODE_EXTREF.unpack(data, pos)
            parent = ref.parent_objectid
            pos += INODE_EXTREF.size
        yield parent, os.fsdecode(data[pos:pos + ref.name_len])
        pos += ref.name_len


# -- the comparison, on the candidates only -----------------------------------

# The entry comparison is the naive walk's own, so both paths agree by construction.
from graphdrivers.changes import _differs  # noqa: E402


def _listdir(path: str) -> list[str]:
    """Names in a directory, read without touching its atime (which would rewrite
    its inode item and make it a candidate the next time)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC | os.O_NOATIME)
    except PermissionError:      # O_NOATIME needs ownership or CAP_FOWNER
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        return os.listdir(fd)
    finally:
        os.close(fd)


def _lstat(path: str) -> os.stat_result | None:
    try:
        return os.lstat(path)
    except FileNotFoundError:
        return None


def compare(layer: str, base: str, candidates: set[str]) -> list[Change]:
    """Docker's ChangesDirs(layer, base), looking only at ``candidates`` and their ancestors."""
    relevant: set[str] = set()
    for rel in candidates:
        while rel not in relevant:
            relevant.add(rel)
            if not rel:
                break
            rel = rel.rpartition("/")[0]
    children: dict[str, set[str]] = {}
    for rel in relevant:
        if rel:
            parent, _, name = rel.rpartition("/")
            children.setdefault(parent, set()).add(name)
    walker = _Walker(layer, base, candidates, children)
    out: list[Change] = []
    root_new, root_old = os.lstat(layer), os.lstat(base)
    walker.visit("", root_new, root_old, listed=False, out=out)
    out.sort(key=lambda c: c.path)
    return out


class _Walker:
    def __init__(self, layer: str, base: str, candidates: set[str], children: dict[str, set[str]]):
        self.layer, self.base = layer, base
        self.candidates, self.children = candidates, children

    def _new(self, rel: str) -> str:
        return os.path.join(self.layer, rel) if rel else self.layer

    def _old(self, rel: str) -> str:
        return os.path.join(self.base, rel) if rel else self.base

    def visit(self, rel: str, new: os.stat_result, old: os.stat_result | None, *,
              listed: bool, out: list[Change]) -> None:
        """Docker's addChanges for entry ``rel`` (present in the layer)."""
        start = len(out)
        if old is None:
            out.append(Change("/" + rel, ChangeKind.ADD))
            listed = True
        if stat.S_ISDIR(new.st_mode):
            if old is None:
                self._added_dir(rel, out)
            elif not stat.S_ISDIR(old.st_mode):
                # a file became a directory: every child is new
                for name in sorted(_listdir(self._new(rel))):
                    self._child(rel, name, None, out)
            elif rel in self.candidates or new.st_ino != old.st_ino:
                self._full_compare(rel, out)
            else:
                # the same unchanged directory on both sides: look only towards the changes
                for name in sorted(self.children.get(rel, ())):
                    self._pair(rel, name, out)
        if len(out) > start and stat.S_ISDIR(new.st_mode) and not listed and rel:
            out.insert(start, Change("/" + rel, ChangeKind.MODIFY))

    def _join(self, rel: str, name: str) -> str:
        return f"{rel}/{name}" if rel else name

    def _added_dir(self, rel: str, out: list[Change]) -> None:
        for name in sorted(_listdir(self._new(rel))):
            self._child(rel, name, None, out)

    def _child(self, rel: str, name: str, old: os.stat_result | None, out: list[Change]) -> None:
        child = self._join(rel, name)
        new = os.lstat(self._new(child))
        self.visit(child, new, old, listed=False, out=out)

    def _full_compare(self, rel: str, out: list[Change]) -> None:
        new_names = set(_listdir(self._new(rel)))
        old_names = set(_listdir(self._old(rel)))
        wanted = self.children.get(rel, set())
        for name in sorted(new_names):
            if name not in old_names:
                self._child(rel, name, None, out)
            elif name in wanted:
                self._pair(rel, name, out)
            # else: same name, same unchanged inode on both sides (see module doc)
        for name in sorted(old_names - new_names):
            out.append(Change("/" + self._join(rel, name), ChangeKind.DELETE))

    def _pair(self, rel: str, name: str, out: list[Change]) -> None:
        child = self._join(rel, name)
        new, old = _lstat(self._new(child)), _lstat(self._old(child))
        if new is None:
            if old is not None:   # only reachable when a listing raced a writer
                out.append(Change("/" + child, ChangeKind.DELETE))
            return
        listed = False
        if old is not None and (child in self.candidates or new.st_ino != old.st_ino) and \
                _differs(new, old, os.fsencode(self._new(child)), os.fsencode(self._old(child))):
            out.append(Change("/" + child, ChangeKind.MODIFY))
            listed = True
        self.visit(child, new, old, listed=listed, out=out)

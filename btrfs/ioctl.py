"""Raw btrfs ioctls through fcntl (the kernel UAPI in linux/btrfs.h).

Used for what libbtrfsutil's Python binding does not offer (tree search,
inode lookup, qgroups) and as the whole subvolume backend when the binding
is not installed. Every request number is derived from its argument struct
(``structs``) the way linux/btrfs.h's _IOW/_IOR/_IOWR do; the structs' sizes and
the numbers are checked against the kernel's in tests/btrfs/test_structs.py.
"""
from __future__ import annotations

import fcntl
import os
import struct
from dataclasses import dataclass
from typing import Iterator

from graphdrivers.kernel import ioctl as ioc
from .structs import (GET_SUBVOL_INFO_ARGS, INO_LOOKUP_ARGS, INODE_ITEM, QGROUP_CREATE_ARGS,
                      QGROUP_LIMIT_ARGS, QUOTA_CTL_ARGS, SEARCH_ARGS_V2, SEARCH_HEADER,
                      VOL_ARGS, VOL_ARGS_V2, VOL_NAME_MAX)

MAGIC = 0x94                     # BTRFS_IOCTL_MAGIC
SUBVOL_CREATE = ioc.iow(MAGIC, 14, VOL_ARGS.size)
SNAP_CREATE_V2 = ioc.iow(MAGIC, 23, VOL_ARGS_V2.size)
SNAP_DESTROY = ioc.iow(MAGIC, 15, VOL_ARGS.size)
SYNC = ioc.io(MAGIC, 8)
TREE_SEARCH_V2 = ioc.iowr(MAGIC, 17, SEARCH_ARGS_V2.size)
INO_LOOKUP = ioc.iowr(MAGIC, 18, INO_LOOKUP_ARGS.size)
GET_SUBVOL_INFO = ioc.ior(MAGIC, 60, GET_SUBVOL_INFO_ARGS.size)
QUOTA_CTL = ioc.iowr(MAGIC, 40, QUOTA_CTL_ARGS.size)
QGROUP_CREATE = ioc.iow(MAGIC, 42, QGROUP_CREATE_ARGS.size)
QGROUP_LIMIT = ioc.ior(MAGIC, 43, QGROUP_LIMIT_ARGS.size)   # _IOR in the header, though we write it
QUOTA_RESCAN_WAIT = ioc.io(MAGIC, 46)

# item types (linux/btrfs_tree.h)
INODE_ITEM_KEY = 1
INODE_REF_KEY = 12
INODE_EXTREF_KEY = 13
ROOT_ITEM_KEY = 132
ROOT_REF_KEY = 156
QGROUP_STATUS_KEY = 240
QGROUP_INFO_KEY = 242
ROOT_TREE_OBJECTID = 1
QUOTA_TREE_OBJECTID = 8
FIRST_FREE_OBJECTID = 256
LAST_FREE_OBJECTID = 2 ** 64 - 256
U64_MAX = 2 ** 64 - 1
SUBVOL_RDONLY = 1 << 1          # BTRFS_SUBVOL_RDONLY, vol_args_v2.flags


def _name(name: str) -> bytes:
    """A subvolume name as the kernel takes it: one path component of at most 255 bytes
    (the args' name fields are longer; the NUL after the name is the zeroed rest)."""
    raw = os.fsencode(name)
    if b"/" in raw or len(raw) > VOL_NAME_MAX:
        raise ValueError(f"invalid subvolume name {name!r}")
    return raw


def subvol_create(dir_fd: int, name: str) -> None:
    # a bytearray (what pack returns): bytes arguments are capped at 1 KiB
    fcntl.ioctl(dir_fd, SUBVOL_CREATE, VOL_ARGS.pack(name=_name(name)))


def snap_create(source_fd: int, dir_fd: int, name: str, *, read_only: bool = False) -> None:
    args = VOL_ARGS_V2.pack(fd=source_fd, flags=SUBVOL_RDONLY if read_only else 0, name=_name(name))
    fcntl.ioctl(dir_fd, SNAP_CREATE_V2, args)


def snap_destroy(dir_fd: int, name: str) -> None:
    fcntl.ioctl(dir_fd, SNAP_DESTROY, VOL_ARGS.pack(name=_name(name)))


def sync(fd: int) -> None:
    """Commit the current transaction (flushes delayed items into the trees)."""
    fcntl.ioctl(fd, SYNC, 0)


@dataclass(frozen=True)
class SubvolInfo:
    id: int
    generation: int
    uuid: bytes
    parent_uuid: bytes
    ctransid: int
    otransid: int
    otime: float = 0.0       # creation time (seconds since the epoch)


def subvol_info(fd: int) -> SubvolInfo:
    """BTRFS_IOC_GET_SUBVOL_INFO (kernel >= 4.18) of the subvolume ``fd`` is in."""
    buf = bytearray(GET_SUBVOL_INFO_ARGS.size)
    fcntl.ioctl(fd, GET_SUBVOL_INFO, buf)
    got = GET_SUBVOL_INFO_ARGS.unpack(buf)
    return SubvolInfo(got.treeid, got.generation, got.uuid, got.parent_uuid, got.ctransid,
                      got.otransid, got.otime_sec + got.otime_nsec / 1e9)


def ino_lookup(fd: int, tree_id: int, objectid: int) -> str:
    """Path of directory ``objectid`` inside subvolume ``tree_id`` ("" for its root, else "a/b/")."""
    buf = INO_LOOKUP_ARGS.pack(treeid=tree_id, objectid=objectid)
    fcntl.ioctl(fd, INO_LOOKUP, buf)
    return os.fsdecode(INO_LOOKUP_ARGS.unpack(buf).name.split(b"\0", 1)[0])


@dataclass(frozen=True)
class Item:
    transid: int
    objectid: int
    type: int
    offset: int
    data: bytes


# _search packs positionally (a diff makes one search per changed inode; keywords cost
# more than the ioctl): the order it relies on
assert SEARCH_ARGS_V2.fields == (
    "key_tree_id", "key_min_objectid", "key_max_objectid", "key_min_offset", "key_max_offset",
    "key_min_transid", "key_max_transid", "key_min_type", "key_max_type", "key_nr_items",
    "buf_size")
LEAF_MAX = 64 << 10         # the largest btrfs node size: no item is bigger
_NR_ITEMS = struct.Struct("=I")
_NR_ITEMS_AT = SEARCH_ARGS_V2.offset("key_nr_items")


def _search(fd: int, buf: bytearray, buf_size: int, tree_id: int,
            min_key: tuple[int, int, int], max_key: tuple[int, int, int],
            min_transid: int, nr_items: int) -> int:
    """One BTRFS_IOC_TREE_SEARCH_V2 over ``buf`` (args, then ``buf_size`` bytes of
    results) for (objectid, type, offset) keys from ``min_key`` to ``max_key``; returns
    how many items the kernel put there."""
    SEARCH_ARGS_V2.pack_values_into(buf, 0, tree_id, min_key[0], max_key[0], min_key[2],
                                    max_key[2], min_transid, U64_MAX, min_key[1], max_key[1],
                                    nr_items, buf_size)
    fcntl.ioctl(fd, TREE_SEARCH_V2, buf)
    return _NR_ITEMS.unpack_from(buf, _NR_ITEMS_AT)[0]


def tree_search(fd: int, tree_id: int, min_key: tuple[int, int, int],
                max_key: tuple[int, int, int], *, min_transid: int = 0,
                buf_size: int = 256 * 1024) -> Iterator[Item]:
    """Every item with min_key <= (objectid, type, offset) <= max_key in tree ``tree_id``.

    With ``min_transid`` the kernel skips whole subtrees older than that
    transaction: only leaves written since are visited (and returned whole, so
    callers still filter by item type and by the item's own transid).
    """
    min_obj, min_type, min_off = min_key
    max_obj, max_type, max_off = max_key
    buf = bytearray(SEARCH_ARGS_V2.size + buf_size)
    header = SEARCH_HEADER.unpack_from           # positional, as in _inode_items
    head_size = SEARCH_HEADER.size
    while True:
        count = _search(fd, buf, buf_size, tree_id, (min_obj, min_type, min_off),
                        (max_obj, max_type, max_off), min_transid, 4096)
        if count == 0:
            return
        pos = SEARCH_ARGS_V2.size
        last = None
        for _ in range(count):
            transid, objectid, offset, type_, length = header(buf, pos)
            pos += head_size
            yield Item(transid, objectid, type_, offset, bytes(buf[pos:pos + length]))
            pos += length
            last = (objectid, type_, offset)
        # continue right after the last key returned (compound key increment)
        obj, type_, off = last
        if off < U64_MAX:
            min_obj, min_type, min_off = obj, type_, off + 1
        elif type_ < 255:
            min_obj, min_type, min_off = obj, type_ + 1, 0
        elif obj < U64_MAX:
            min_obj, min_type, min_off = obj + 1, 0, 0
        else:
            return
        if (min_obj, min_type, min_off) > (max_obj, max_type, max_off):
            return


def changed_inodes(fd: int, tree_id: int, since: int) -> dict[int, bytes]:
    """The inode items in ``tree_id`` rewritten after transaction ``since``, by objectid.

    The search returns whole leaves written since (every item type); only the
    inode items whose own transid is newer are kept.
    """
    return _inode_items(fd, tree_id, FIRST_FREE_OBJECTID, LAST_FREE_OBJECTID, since + 1,
                        lambda _objectid, item_transid: item_transid > since)


def inode_items(fd: int, tree_id: int, objectids: set[int]) -> dict[int, bytes]:
    """The inode items of ``objectids`` in ``tree_id`` (missing ones left out)."""
    if len(objectids) <= 64:     # a few point lookups beat a scan
        found = {}
        for objectid in objectids:
            item = inode_item(fd, tree_id, objectid)
            if item is not None:
                found[objectid] = item
        return found
    return _inode_items(fd, tree_id, min(objectids), max(objectids), 0,
                        lambda objectid, _transid: objectid in objectids)


def _inode_items(fd: int, tree_id: int, first: int, last: int, min_transid: int,
                 keep, buf_size: int = 1 << 20) -> dict[int, bytes]:
    """tree_search specialised for speed: walks the raw buffer and decodes only
    inode items, instead of building an Item per entry."""
    found: dict[int, bytes] = {}
    buf = bytearray(SEARCH_ARGS_V2.size + buf_size)
    view = memoryview(buf)
    header = SEARCH_HEADER.unpack_from           # positional: this loop is the hot one
    head_size = SEARCH_HEADER.size
    transid_at = head_size + INODE_ITEM.offset("transid")   # from the header's start
    u64 = struct.Struct("=Q").unpack_from
    min_obj, min_type, min_off = first, 0, 0
    while True:
        count = _search(fd, buf, buf_size, tree_id, (min_obj, min_type, min_off),
                        (last, 255, U64_MAX), min_transid, 1 << 30)
        if count == 0:
            return found
        pos = SEARCH_ARGS_V2.size
        for _ in range(count):
            _transid, objectid, offset, type_, length = header(view, pos)
            if type_ == INODE_ITEM_KEY and keep(objectid, u64(view, pos + transid_at)[0]):
                found[objectid] = bytes(view[pos + head_size:pos + head_size + length])
            pos += head_size + length
        if offset < U64_MAX:
            min_obj, min_type, min_off = objectid, type_, offset + 1
        elif type_ < 255:
            min_obj, min_type, min_off = objectid, type_ + 1, 0
        elif objectid < last:
            min_obj, min_type, min_off = objectid + 1, 0, 0
        else:
            return found


def inode_item(fd: int, tree_id: int, objectid: int) -> bytes | None:
    """The raw inode item of ``objectid`` in ``tree_id``, None if there is none."""
    for item in tree_search(fd, tree_id, (objectid, INODE_ITEM_KEY, 0),
                            (objectid, INODE_ITEM_KEY, U64_MAX), buf_size=4096):
        return item.data
    return None


def quota_ctl(fd: int, cmd: int) -> None:
    fcntl.ioctl(fd, QUOTA_CTL, QUOTA_CTL_ARGS.pack(cmd=cmd))


QUOTA_ENABLE = 1


def qgroup_create(fd: int, qgroupid: int) -> None:
    fcntl.ioctl(fd, QGROUP_CREATE, QGROUP_CREATE_ARGS.pack(create=1, qgroupid=qgroupid))


def qgroup_destroy(fd: int, qgroupid: int) -> None:
    fcntl.ioctl(fd, QGROUP_CREATE, QGROUP_CREATE_ARGS.pack(create=0, qgroupid=qgroupid))


def qgroup_limit(fd: int, qgroupid: int, max_rfer: int) -> None:
    args = QGROUP_LIMIT_ARGS.pack(qgroupid=qgroupid, lim_flags=QGROUP_LIMIT_MAX_RFER,
                                  lim_max_rfer=max_rfer)
    fcntl.ioctl(fd, QGROUP_LIMIT, args)


QGROUP_LIMIT_MAX_RFER = 1       # lim.flags: max_rfer is set


def quota_rescan_wait(fd: int) -> None:
    fcntl.ioctl(fd, QUOTA_RESCAN_WAIT, 0)



"""Raw btrfs ioctls through fcntl (the kernel UAPI in linux/btrfs.h).

Used for what libbtrfsutil's Python binding does not offer (tree search,
inode lookup, qgroups) and as the whole subvolume backend when the binding
is not installed. Numbers and layouts were checked against the C headers.
"""
from __future__ import annotations

import fcntl
import os
import struct
from dataclasses import dataclass
from typing import Iterator

SUBVOL_CREATE = 0x5000940E
SNAP_CREATE_V2 = 0x50009417
SNAP_DESTROY = 0x5000940F
SYNC = 0x9408
TREE_SEARCH_V2 = 0xC0709411
INO_LOOKUP = 0xD0009412
GET_SUBVOL_INFO = 0x81F8943C
QUOTA_CTL = 0xC0109428
QGROUP_CREATE = 0x4010942A
QGROUP_LIMIT = 0x8030942B
QUOTA_RESCAN_WAIT = 0x942E

# item types (linux/btrfs_tree.h)
INODE_ITEM_KEY = 1
INODE_REF_KEY = 12
INODE_EXTREF_KEY = 13
ROOT_REF_KEY = 156
QGROUP_STATUS_KEY = 240
ROOT_TREE_OBJECTID = 1
QUOTA_TREE_OBJECTID = 8
FIRST_FREE_OBJECTID = 256
LAST_FREE_OBJECTID = 2 ** 64 - 256
U64_MAX = 2 ** 64 - 1

_VOL_ARGS = 4096
_NAME_MAX_V1 = 4087          # struct btrfs_ioctl_vol_args: s64 fd + char name[4088]
_NAME_MAX_V2 = 4039          # struct btrfs_ioctl_vol_args_v2: fd, transid, flags, 4 x u64, name[4040]


def _name(name: str, limit: int) -> bytes:
    raw = os.fsencode(name)
    if b"/" in raw or len(raw) > min(limit, 255):
        raise ValueError(f"invalid subvolume name {name!r}")
    return raw


def subvol_create(dir_fd: int, name: str) -> None:
    args = bytearray(_VOL_ARGS)
    raw = _name(name, _NAME_MAX_V1)
    args[8:8 + len(raw)] = raw
    fcntl.ioctl(dir_fd, SUBVOL_CREATE, args)  # a bytearray: bytes are capped at 1 KiB


def snap_create(source_fd: int, dir_fd: int, name: str, *, read_only: bool = False) -> None:
    args = bytearray(_VOL_ARGS)
    struct.pack_into("=qQQ", args, 0, source_fd, 0, 1 << 1 if read_only else 0)
    raw = _name(name, _NAME_MAX_V2)
    args[56:56 + len(raw)] = raw
    fcntl.ioctl(dir_fd, SNAP_CREATE_V2, args)


def snap_destroy(dir_fd: int, name: str) -> None:
    args = bytearray(_VOL_ARGS)
    raw = _name(name, _NAME_MAX_V1)
    args[8:8 + len(raw)] = raw
    fcntl.ioctl(dir_fd, SNAP_DESTROY, args)


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


_INFO = struct.Struct("=Q256sQQQQ16s16s16sQQQQ")


def subvol_info(fd: int) -> SubvolInfo:
    """BTRFS_IOC_GET_SUBVOL_INFO (kernel >= 4.18) of the subvolume ``fd`` is in."""
    buf = bytearray(0x1F8)
    fcntl.ioctl(fd, GET_SUBVOL_INFO, buf)
    (treeid, _name_, _parent, _dirid, generation, _flags, uuid, parent_uuid, _received,
     ctransid, otransid, _s, _r) = _INFO.unpack_from(buf)
    otime_sec, otime_nsec = struct.unpack_from("=QI", buf, 0x188)
    return SubvolInfo(treeid, generation, uuid, parent_uuid, ctransid, otransid,
                      otime_sec + otime_nsec / 1e9)


def ino_lookup(fd: int, tree_id: int, objectid: int) -> str:
    """Path of directory ``objectid`` inside subvolume ``tree_id`` ("" for its root, else "a/b/")."""
    buf = bytearray(4096)
    struct.pack_into("=QQ", buf, 0, tree_id, objectid)
    fcntl.ioctl(fd, INO_LOOKUP, buf)
    raw = bytes(buf[16:]).split(b"\0", 1)[0]
    return os.fsdecode(raw)


@dataclass(frozen=True)
class Item:
    transid: int
    objectid: int
    type: int
    offset: int
    data: bytes


_KEY = struct.Struct("=7Q4I4Q")
_HEADER = struct.Struct("=QQQII")


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
    buf = bytearray(_KEY.size + 8 + buf_size)
    while True:
        _KEY.pack_into(buf, 0, tree_id, min_obj, max_obj, min_off, max_off, min_transid,
                       U64_MAX, min_type, max_type, 4096, 0, 0, 0, 0, 0)
        struct.pack_into("=Q", buf, _KEY.size, buf_size)
        fcntl.ioctl(fd, TREE_SEARCH_V2, buf)
        count = struct.unpack_from("=I", buf, 64)[0]
        if count == 0:
            return
        pos = _KEY.size + 8
        last = None
        for _ in range(count):
            transid, objectid, offset, type_, length = _HEADER.unpack_from(buf, pos)
            pos += _HEADER.size
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
    buf = bytearray(_KEY.size + 8 + buf_size)
    view = memoryview(buf)
    header = _HEADER.unpack_from
    u64 = struct.Struct("=Q").unpack_from
    min_obj, min_type, min_off = first, 0, 0
    while True:
        _KEY.pack_into(buf, 0, tree_id, min_obj, last, min_off, U64_MAX, min_transid,
                       U64_MAX, min_type, 255, 1 << 30, 0, 0, 0, 0, 0)
        struct.pack_into("=Q", buf, _KEY.size, buf_size)
        fcntl.ioctl(fd, TREE_SEARCH_V2, buf)
        count = struct.unpack_from("=I", buf, 64)[0]
        if count == 0:
            return found
        pos = _KEY.size + 8
        for _ in range(count):
            _t, objectid, offset, type_, length = header(view, pos)
            if type_ == INODE_ITEM_KEY and keep(objectid, u64(view, pos + 40)[0]):
                found[objectid] = bytes(view[pos + 32:pos + 32 + length])
            pos += 32 + length
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
    fcntl.ioctl(fd, QUOTA_CTL, struct.pack("=QQ", cmd, 0))


QUOTA_ENABLE = 1


def qgroup_destroy(fd: int, qgroupid: int) -> None:
    fcntl.ioctl(fd, QGROUP_CREATE, struct.pack("=QQ", 0, qgroupid))


def qgroup_limit(fd: int, qgroupid: int, max_rfer: int) -> None:
    # struct btrfs_qgroup_limit: flags, max_rfer, max_excl, rsv_rfer, rsv_excl
    flags = 1  # BTRFS_QGROUP_LIMIT_MAX_RFER
    fcntl.ioctl(fd, QGROUP_LIMIT, struct.pack("=6Q", qgroupid, flags, max_rfer, 0, 0, 0))


def quota_rescan_wait(fd: int) -> None:
    fcntl.ioctl(fd, QUOTA_RESCAN_WAIT, 0)



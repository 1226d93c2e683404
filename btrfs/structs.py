"""The btrfs kernel structs we read and write, named as in the headers.

Ioctl arguments from include/uapi/linux/btrfs.h (naturally aligned: padding
spelled out), tree items from include/uapi/linux/btrfs_tree.h (``packed`` on
disk, no padding). Names are the C field names; ``tests/btrfs/test_structs.py``
checks every size against the kernel's ``sizeof``.
"""
from __future__ import annotations

from .layout import PAD, Layout

VOL_NAME_MAX = 255
_PATH_NAME_MAX = 4087
_INO_LOOKUP_PATH_MAX = 4080
_SUBVOL_NAME_MAX = 4039
_UUID_SIZE = 16

# -- ioctl arguments ------------------------------------------------------------

VOL_ARGS = Layout("btrfs_ioctl_vol_args", [
    ("fd", "q"),
    ("name", f"{_PATH_NAME_MAX + 1}s"),
])

VOL_ARGS_V2 = Layout("btrfs_ioctl_vol_args_v2", [
    ("fd", "q"),
    ("transid", "Q"),
    ("flags", "Q"),
    (PAD, "32x"),                        # union { size + qgroup_inherit pointer; u64 unused[4] }
    ("name", f"{_SUBVOL_NAME_MAX + 1}s"),  # union with devid / subvolid: we pass names only
])

SEARCH_KEY = Layout("btrfs_ioctl_search_key", [
    ("tree_id", "Q"),
    ("min_objectid", "Q"),
    ("max_objectid", "Q"),
    ("min_offset", "Q"),
    ("max_offset", "Q"),
    ("min_transid", "Q"),
    ("max_transid", "Q"),
    ("min_type", "I"),
    ("max_type", "I"),
    ("nr_items", "I"),                  # in: how many at most; out: how many returned
    (PAD, "4x"),                         # unused
    (PAD, "32x"),                        # unused1..unused4
])

SEARCH_HEADER = Layout("btrfs_ioctl_search_header", [
    ("transid", "Q"),
    ("objectid", "Q"),
    ("offset", "Q"),
    ("type", "I"),
    ("len", "I"),                        # bytes of item data that follow the header
])

SEARCH_ARGS_V2 = Layout("btrfs_ioctl_search_args_v2", [
    ("key", SEARCH_KEY),
    ("buf_size", "Q"),                   # in: bytes after this struct; out: bytes needed (EOVERFLOW)
])                                       # then u64 buf[]: the headers and items

INO_LOOKUP_ARGS = Layout("btrfs_ioctl_ino_lookup_args", [
    ("treeid", "Q"),
    ("objectid", "Q"),
    ("name", f"{_INO_LOOKUP_PATH_MAX}s"),  # out: the directory's path, "a/b/" ("" for the root)
])

IOCTL_TIMESPEC = Layout("btrfs_ioctl_timespec", [
    ("sec", "Q"),
    ("nsec", "I"),
    (PAD, "4x"),
])

GET_SUBVOL_INFO_ARGS = Layout("btrfs_ioctl_get_subvol_info_args", [
    ("treeid", "Q"),
    ("name", f"{VOL_NAME_MAX + 1}s"),
    ("parent_id", "Q"),
    ("dirid", "Q"),
    ("generation", "Q"),
    ("flags", "Q"),
    ("uuid", f"{_UUID_SIZE}s"),
    ("parent_uuid", f"{_UUID_SIZE}s"),
    ("received_uuid", f"{_UUID_SIZE}s"),
    ("ctransid", "Q"),
    ("otransid", "Q"),
    ("stransid", "Q"),
    ("rtransid", "Q"),
    ("ctime", IOCTL_TIMESPEC),
    ("otime", IOCTL_TIMESPEC),
    ("stime", IOCTL_TIMESPEC),
    ("rtime", IOCTL_TIMESPEC),
    (PAD, "64x"),                        # reserved[8]
])

QUOTA_CTL_ARGS = Layout("btrfs_ioctl_quota_ctl_args", [
    ("cmd", "Q"),
    ("status", "Q"),
])

QGROUP_CREATE_ARGS = Layout("btrfs_ioctl_qgroup_create_args", [
    ("create", "Q"),                     # 1 create, 0 destroy
    ("qgroupid", "Q"),
])

QGROUP_LIMIT = Layout("btrfs_qgroup_limit", [
    ("flags", "Q"),
    ("max_rfer", "Q"),
    ("max_excl", "Q"),
    ("rsv_rfer", "Q"),
    ("rsv_excl", "Q"),
])

QGROUP_LIMIT_ARGS = Layout("btrfs_ioctl_qgroup_limit_args", [
    ("qgroupid", "Q"),
    ("lim", QGROUP_LIMIT),
])

# -- tree items (item data as the tree search returns it) -----------------------

TIMESPEC = Layout("btrfs_timespec", [
    ("sec", "Q"),
    ("nsec", "I"),
])

INODE_ITEM = Layout("btrfs_inode_item", [
    ("generation", "Q"),
    ("transid", "Q"),                    # transaction that last wrote this item
    ("size", "Q"),
    ("nbytes", "Q"),
    ("block_group", "Q"),
    ("nlink", "I"),
    ("uid", "I"),
    ("gid", "I"),
    ("mode", "I"),
    ("rdev", "Q"),
    ("flags", "Q"),
    ("sequence", "Q"),                   # i_version
    (PAD, "32x"),                        # reserved[4]
    ("atime", TIMESPEC),
    ("ctime", TIMESPEC),
    ("mtime", TIMESPEC),
    ("otime", TIMESPEC),
])

# The three below are followed by ``name_len`` bytes of name; an item's data
# may hold several of them back to back (hard links in one directory).
INODE_REF = Layout("btrfs_inode_ref", [     # key offset = the parent directory
    ("index", "Q"),
    ("name_len", "H"),
])

INODE_EXTREF = Layout("btrfs_inode_extref", [
    ("parent_objectid", "Q"),
    ("index", "Q"),
    ("name_len", "H"),
])

ROOT_REF = Layout("btrfs_root_ref", [       # key (parent tree, ROOT_REF, child tree)
    ("dirid", "Q"),                          # the directory holding the child subvolume
    ("sequence", "Q"),
    ("name_len", "H"),
])

# As in the 6.1 headers (Debian 12, CI); headers >= 6.7 append u64 enable_gen, which
# the item carries only with simple quotas.
QGROUP_STATUS_ITEM = Layout("btrfs_qgroup_status_item", [   # key (0, QGROUP_STATUS, 0)
    ("version", "Q"),
    ("generation", "Q"),
    ("flags", "Q"),                      # BTRFS_QGROUP_STATUS_FLAG_*
    ("rescan", "Q"),
])

QGROUP_INFO_ITEM = Layout("btrfs_qgroup_info_item", [       # key (0, QGROUP_INFO, qgroupid)
    ("generation", "Q"),
    ("rfer", "Q"),
    ("rfer_cmpr", "Q"),
    ("excl", "Q"),
    ("excl_cmpr", "Q"),
])

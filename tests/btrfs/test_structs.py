"""The btrfs ioctl numbers and struct layouts against the kernel's (no filesystem needed).

The expected values are the kernel's: the numbers as linux/btrfs.h expands them
(they were the literals btrfs/ioctl.py used to carry), the sizes and offsets as
``sizeof``/``offsetof`` give them for the UAPI headers. Where gcc and the
headers are installed, a last test asks the compiler directly.
"""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from graphdrivers.btrfs import ioctl, structs
from graphdrivers.kernel import ioctl as ioc
from graphdrivers.btrfs.layout import PAD, Layout

# name in ioctl.py (BTRFS_IOC_<name>) -> its value from linux/btrfs.h
NUMBERS = {
    "SUBVOL_CREATE": 0x5000940E,
    "SNAP_CREATE_V2": 0x50009417,
    "SNAP_DESTROY": 0x5000940F,
    "SYNC": 0x9408,
    "TREE_SEARCH_V2": 0xC0709411,
    "INO_LOOKUP": 0xD0009412,
    "GET_SUBVOL_INFO": 0x81F8943C,
    "QUOTA_CTL": 0xC0109428,
    "QGROUP_CREATE": 0x4010942A,
    "QGROUP_LIMIT": 0x8030942B,
    "QUOTA_RESCAN_WAIT": 0x942E,
}

# name in structs.py -> (C struct, sizeof)
SIZES = {
    "VOL_ARGS": ("btrfs_ioctl_vol_args", 4096),
    "VOL_ARGS_V2": ("btrfs_ioctl_vol_args_v2", 4096),
    "SEARCH_KEY": ("btrfs_ioctl_search_key", 104),
    "SEARCH_HEADER": ("btrfs_ioctl_search_header", 32),
    "SEARCH_ARGS_V2": ("btrfs_ioctl_search_args_v2", 112),
    "INO_LOOKUP_ARGS": ("btrfs_ioctl_ino_lookup_args", 4096),
    "IOCTL_TIMESPEC": ("btrfs_ioctl_timespec", 16),
    "GET_SUBVOL_INFO_ARGS": ("btrfs_ioctl_get_subvol_info_args", 504),
    "QUOTA_CTL_ARGS": ("btrfs_ioctl_quota_ctl_args", 16),
    "QGROUP_CREATE_ARGS": ("btrfs_ioctl_qgroup_create_args", 16),
    "QGROUP_LIMIT": ("btrfs_qgroup_limit", 40),
    "QGROUP_LIMIT_ARGS": ("btrfs_ioctl_qgroup_limit_args", 48),
    "TIMESPEC": ("btrfs_timespec", 12),
    "INODE_ITEM": ("btrfs_inode_item", 160),
    "INODE_REF": ("btrfs_inode_ref", 10),
    "INODE_EXTREF": ("btrfs_inode_extref", 18),
    "ROOT_REF": ("btrfs_root_ref", 18),
    "QGROUP_STATUS_ITEM": ("btrfs_qgroup_status_item", 32),   # 40 in headers >= 6.7
    "QGROUP_INFO_ITEM": ("btrfs_qgroup_info_item", 40),
}

# (name in structs.py, our field, C field) -> offsetof: the fields the code reads or writes
OFFSETS = {
    ("VOL_ARGS", "name", "name"): 8,
    ("VOL_ARGS_V2", "flags", "flags"): 16,
    ("VOL_ARGS_V2", "name", "name"): 56,
    ("SEARCH_KEY", "nr_items", "nr_items"): 64,
    ("SEARCH_ARGS_V2", "buf_size", "buf_size"): 104,
    ("INO_LOOKUP_ARGS", "name", "name"): 16,
    ("GET_SUBVOL_INFO_ARGS", "uuid", "uuid"): 296,
    ("GET_SUBVOL_INFO_ARGS", "parent_uuid", "parent_uuid"): 312,
    ("GET_SUBVOL_INFO_ARGS", "ctransid", "ctransid"): 344,
    ("GET_SUBVOL_INFO_ARGS", "otransid", "otransid"): 352,
    ("GET_SUBVOL_INFO_ARGS", "otime", "otime"): 392,
    ("QGROUP_LIMIT_ARGS", "lim_max_rfer", "lim.max_rfer"): 16,
    ("INODE_ITEM", "transid", "transid"): 8,
    ("INODE_ITEM", "sequence", "sequence"): 72,
    ("INODE_ITEM", "atime", "atime"): 112,
    ("INODE_ITEM", "ctime", "ctime"): 124,
    ("INODE_EXTREF", "name_len", "name_len"): 16,
    ("ROOT_REF", "name_len", "name_len"): 16,
    ("QGROUP_STATUS_ITEM", "flags", "flags"): 16,
    ("QGROUP_INFO_ITEM", "rfer", "rfer"): 8,
    ("QGROUP_INFO_ITEM", "excl_cmpr", "excl_cmpr"): 32,
}


@pytest.mark.parametrize("name", sorted(NUMBERS))
def test_derived_number_is_the_kernels(name):
    assert getattr(ioctl, name) == NUMBERS[name], f"BTRFS_IOC_{name}: {getattr(ioctl, name):#x}"


@pytest.mark.parametrize("name", sorted(SIZES))
def test_struct_size_is_the_kernels(name):
    assert getattr(structs, name).size == SIZES[name][1]


@pytest.mark.parametrize("key", sorted(OFFSETS), ids=lambda k: f"{k[0]}.{k[1]}")
def test_field_offset_is_the_kernels(key):
    layout, field, _c_field = key
    assert getattr(structs, layout).offset(field) == OFFSETS[key]


def test_ioc_fields_land_where_the_kernel_puts_them():
    # _IOWR('X', 0x12, 0x345): dir 3 in bits 30-31, size in 16-29, type in 8-15, nr in 0-7
    assert ioc.iowr(0x58, 0x12, 0x345) == 0xC3455812
    assert ioc.io(0x94, 8) == 0x9408
    with pytest.raises(ValueError):
        ioc.ior(0x94, 1, 1 << 14)


def test_layout_names_nested_fields_and_zeroes_the_rest():
    inner = Layout("inner", [("a", "I"), (PAD, "4x")])
    outer = Layout("outer", [("x", "H"), ("in", inner), ("name", "4s")])
    assert outer.fields == ("x", "in_a", "name")
    assert outer.size == 14 and outer.span("in") == slice(2, 10) and outer.offset("name") == 10
    raw = outer.pack(in_a=7, name=b"ab")
    assert bytes(raw) == b"\0\0" + (7).to_bytes(4, "little") + bytes(4) + b"ab\0\0"
    assert outer.unpack(raw) == (0, 7, b"ab\0\0")
    with pytest.raises(TypeError):
        outer.pack(nope=1)
    with pytest.raises(ValueError):
        Layout("bad", [("two", "2Q")])   # a field is one value: arrays are "Ns" or padding


_HEADER = Path("/usr/include/linux/btrfs.h")


@pytest.mark.skipif(shutil.which("gcc") is None or not _HEADER.exists(),
                    reason="needs gcc and the kernel UAPI headers (linux-libc-dev)")
def test_the_compiler_agrees(tmp_path):
    """The tables above, checked against the installed headers themselves."""
    lines = [f'printf("IOC {name} %lu\\n", (unsigned long)BTRFS_IOC_{name});' for name in NUMBERS]
    lines += [f'printf("SIZE {name} %zu\\n", sizeof(struct {c}));' for name, (c, _s) in SIZES.items()]
    lines += [f'printf("OFF {layout}.{field} %zu\\n", offsetof(struct {SIZES[layout][0]}, {c_field}));'
              for layout, field, c_field in OFFSETS]
    src = tmp_path / "check.c"
    src.write_text("#include <stdio.h>\n#include <stddef.h>\n#include <linux/btrfs.h>\n"
                   "#include <linux/btrfs_tree.h>\nint main(void) {\n" + "\n".join(lines) + "\nreturn 0; }\n")
    subprocess.run(["gcc", "-o", str(tmp_path / "check"), str(src)], check=True)
    out = subprocess.run([str(tmp_path / "check")], check=True, capture_output=True, text=True).stdout
    got = dict(line.rsplit(" ", 1) for line in out.splitlines())
    want = {f"IOC {n}": str(v) for n, v in NUMBERS.items()}
    want |= {f"SIZE {n}": str(s) for n, (_c, s) in SIZES.items()}
    want |= {f"OFF {layout}.{field}": str(v) for (layout, field, _c), v in OFFSETS.items()}
    assert got == want

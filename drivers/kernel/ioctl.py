"""Ioctl request numbers as the kernel's _IOC macros build them (include/uapi/asm-generic/ioctl.h).

A number packs direction (2 bits), argument size (14 bits), type (8 bits) and
command (8 bits). Deriving it from the argument struct's size, as the C macros
do, keeps number and layout from drifting apart. The direction is the kernel's
declaration, not what the call does: BTRFS_IOC_QGROUP_LIMIT is declared _IOR
although userspace writes its argument.
"""
from __future__ import annotations

NONE, WRITE, READ = 0, 1, 2
_NRSHIFT, _TYPESHIFT, _SIZESHIFT, _DIRSHIFT = 0, 8, 16, 30
_SIZE_LIMIT = 1 << 14


def ioc(direction: int, type_: int, nr: int, size: int) -> int:
    """_IOC(dir, type, nr, size)."""
    if not 0 <= size < _SIZE_LIMIT:
        raise ValueError(f"ioctl argument size {size} does not fit 14 bits")
    return (direction << _DIRSHIFT) | (size << _SIZESHIFT) | (type_ << _TYPESHIFT) | (nr << _NRSHIFT)


def io(type_: int, nr: int) -> int:
    return ioc(NONE, type_, nr, 0)


def ior(type_: int, nr: int, size: int) -> int:
    return ioc(READ, type_, nr, size)


def iow(type_: int, nr: int, size: int) -> int:
    return ioc(WRITE, type_, nr, size)


def iowr(type_: int, nr: int, size: int) -> int:
    return ioc(READ | WRITE, type_, nr, size)

"""Tar headers: encoding (ustar + PAX extended headers) and decoding.

Written by hand rather than through ``tarfile.TarInfo`` because a layer tar
has thousands of small entries and the per-entry cost dominates: building a
header here is a handful of bytes operations. Paths are bytes throughout so
that names which are not UTF-8 round-trip unchanged.
"""
from __future__ import annotations

import base64
from zlib import adler32
from dataclasses import dataclass, field

BLOCK = 512
ZERO_BLOCK = bytes(BLOCK)

REG, AREG, LNK, SYM, CHR, BLK, DIR, FIFO, CONT = b"0", b"\0", b"1", b"2", b"3", b"4", b"5", b"6", b"7"
PAX_X, PAX_G, GNU_LONGNAME, GNU_LONGLINK = b"x", b"g", b"L", b"K"

_MAX_OCTAL = {8: 0o7777777, 12: 0o77777777777}
_USTAR_MAGIC = b"ustar\x0000"
_GNU_MAGIC = b"ustar  \x00"


class HeaderError(ValueError):
    """A header that is not valid tar (the caller turns this into CorruptArchive)."""


@dataclass
class Entry:
    """One tar member as the writer and the reader see it."""
    name: bytes                    # relative, "/"-separated, no trailing slash
    type: bytes = REG
    mode: int = 0o644              # permission bits incl. setuid/setgid/sticky
    uid: int = 0
    gid: int = 0
    size: int = 0
    mtime: int = 0                 # seconds
    linkname: bytes = b""
    devmajor: int = 0
    devminor: int = 0
    xattrs: dict[str, bytes] = field(default_factory=dict)


# -- writing ----------------------------------------------------------------
def _octal(value: int, width: int) -> bytes | None:
    """Octal field, or None when the value does not fit (a PAX record then carries it)."""
    if 0 <= value <= _MAX_OCTAL[width]:
        return b"%0*o\0" % (width - 1, value)
    return None


def _pax_record(key: bytes, value: bytes) -> bytes:
    body = b" %s=%s\n" % (key, value)
    length = len(body) + 1
    while len(str(length)) + len(body) != length:
        length = len(str(length)) + len(body)
    return str(length).encode() + body


def _split_name(name: bytes) -> tuple[bytes, bytes] | None:
    """(prefix, name) fitting ustar's 155/100 byte fields, or None."""
    if len(name) <= 100:
        return b"", name
    if len(name) > 256:
        return None
    cut = name.rfind(b"/", 0, 156)
    while cut > 0:
        if len(name) - cut - 1 <= 100 and cut <= 155:
            return name[:cut], name[cut + 1:]
        cut = name.rfind(b"/", 0, cut)
    return None


_M8, _M12 = _MAX_OCTAL[8], _MAX_OCTAL[12]
_MAGIC_AND_OWNERS = _USTAR_MAGIC + bytes(64)      # uname, gname empty: numeric owners only


def _ustar(name: bytes, prefix: bytes, typ: bytes, mode: int, uid: int, gid: int, size: int,
           mtime: int, linkname: bytes, devmajor: int, devminor: int) -> bytes:
    """One ustar block; values that do not fit are zeroed (a PAX record carries them)."""
    head = b"%s%07o\0%07o\0%07o\0%011o\0%011o\0        %s%s%s%07o\0%07o\0%s" % (
        name.ljust(100, b"\0"), mode,
        uid if 0 <= uid <= _M8 else 0, gid if 0 <= gid <= _M8 else 0,
        size if 0 <= size <= _M12 else 0, mtime if 0 <= mtime <= _M12 else 0,
        typ, linkname.ljust(100, b"\0"), _MAGIC_AND_OWNERS,
        devmajor if 0 <= devmajor <= _M8 else 0, devminor if 0 <= devminor <= _M8 else 0,
        prefix.ljust(167, b"\0"))
    return b"%s%06o\0 %s" % (head[:148], _byte_sum(head), head[156:])


def encode(entry: Entry) -> bytes:
    """Header block(s) for ``entry``: a PAX extended header first when ustar cannot hold it."""
    name = entry.name + b"/" if entry.type == DIR and entry.name else entry.name
    linkname = entry.linkname
    if (len(name) <= 100 and len(linkname) <= 100 and not entry.xattrs
            and 0 <= entry.uid <= _M8 and 0 <= entry.gid <= _M8 and 0 <= entry.size <= _M12
            and 0 <= entry.mtime <= _M12 and name.isascii() and linkname.isascii()):
        return _ustar(name, b"", entry.type, entry.mode & 0o7777, entry.uid, entry.gid,
                      entry.size, entry.mtime, linkname, entry.devmajor, entry.devminor)
    pax: list[bytes] = []
    split = _split_name(name)
    if split is None or not name.isascii():
        pax.append(_pax_record(b"path", name))
        split = (b"", name[:100])
    if len(linkname) > 100 or not linkname.isascii():
        pax.append(_pax_record(b"linkpath", linkname))
        linkname = linkname[:100]
    for key, value in (("uid", entry.uid), ("gid", entry.gid)):
        if _octal(value, 8) is None:
            pax.append(_pax_record(key.encode(), str(value).encode()))
    if _octal(entry.size, 12) is None:
        pax.append(_pax_record(b"size", str(entry.size).encode()))
    if _octal(entry.mtime, 12) is None:
        pax.append(_pax_record(b"mtime", str(entry.mtime).encode()))
    for key in sorted(entry.xattrs):
        pax.append(_pax_record(b"SCHILY.xattr." + key.encode("utf-8", "surrogateescape"),
                               entry.xattrs[key]))
    header = _ustar(split[1], split[0], entry.type, entry.mode & 0o7777, entry.uid, entry.gid,
                    entry.size, entry.mtime, linkname, entry.devmajor, entry.devminor)
    if not pax:
        return header
    data = b"".join(pax)
    pax_name = (b"PaxHeaders/" + split[1].rsplit(b"/", 1)[-1])[:100]
    return (_ustar(pax_name, b"", PAX_X, 0o644, 0, 0, len(data), 0, b"", 0, 0)
            + data + bytes(padding(len(data))) + header)


def padding(size: int) -> int:
    return -size % BLOCK


# -- reading ----------------------------------------------------------------
def _number(field_bytes: bytes, what: str) -> int:
    if field_bytes[-1:] in (b"\0", b" "):  # fast path: "0000644\0" or "000644 \0"
        try:
            return int(field_bytes[:-1], 8)
        except ValueError:
            pass
    if field_bytes[:1] and field_bytes[0] & 0x80:          # GNU base-256
        value = int.from_bytes(field_bytes, "big", signed=False)
        value &= (1 << (8 * len(field_bytes) - 1)) - 1
        if field_bytes[0] & 0x40:                           # negative
            value -= 1 << (8 * len(field_bytes) - 1)
        return value
    text = field_bytes.split(b"\0", 1)[0].strip(b" \0")
    if not text:
        return 0
    try:
        return int(text, 8)
    except ValueError:
        raise HeaderError(f"bad {what} field {field_bytes!r}") from None


def _cstr(field_bytes: bytes) -> bytes:
    end = field_bytes.find(b"\0")
    return field_bytes if end < 0 else field_bytes[:end]


def _byte_sum(block: bytes) -> int:
    """sum(block) for a 512-byte block, ~8x faster: Adler-32's low half is 1 + the sum
    of the bytes mod 65521, exact for 256 bytes (at most 65280)."""
    return (adler32(block[:256]) & 0xFFFF) + (adler32(block[256:]) & 0xFFFF) - 2


def check(block: bytes) -> None:
    """Verify the header checksum (unsigned, or signed as some old writers computed it)."""
    stored = None
    if block[154] < 48:                           # "%06o\0 ", the usual layout
        try:
            stored = int(block[148:154], 8)
        except ValueError:
            pass
    if stored is None:
        stored = _number(block[148:156], "checksum")
    unsigned = _byte_sum(block) - sum(block[148:156]) + 256
    if stored != unsigned:
        signed = sum(b - 256 if b > 127 else b for b in block[:148] + block[156:]) + 256
        if stored != signed:
            raise HeaderError("header checksum mismatch (corrupt or not a tar stream)")


def meta_size(block: bytes) -> int:
    """Size of a PAX / GNU long-name header's data (checksum verified)."""
    check(block)
    return _number(block[124:136], "size")


def decode(block: bytes) -> Entry:
    """Parse one 512-byte header block (checksum verified)."""
    check(block)
    end = block.find(b"\0", 0, 100)
    name = block[:end] if end >= 0 else block[:100]
    if block[257:263] == b"ustar\x00":                     # POSIX: a prefix field may follow
        prefix = _cstr(block[345:500])
        if prefix:
            name = prefix + b"/" + name
    typ = block[156:157]
    try:
        # inline fast path: octal digits ended by NUL or space (< "0") in the last byte;
        # a field using all its bytes for digits (or base-256) takes the slow path
        if not (block[107] < 48 and block[115] < 48 and block[123] < 48 and block[135] < 48
                and block[147] < 48):
            raise ValueError
        mode, uid, gid = int(block[100:107], 8), int(block[108:115], 8), int(block[116:123], 8)
        size, mtime = int(block[124:135], 8), int(block[136:147], 8)
    except ValueError:
        mode, uid, gid = (_number(block[100:108], "mode"), _number(block[108:116], "uid"),
                          _number(block[116:124], "gid"))
        size, mtime = _number(block[124:136], "size"), _number(block[136:148], "mtime")
    end = block.find(b"\0", 157, 257)
    entry = Entry(name, typ, mode & 0o7777, uid, gid, size, mtime,
                  block[157:end] if end >= 0 else block[157:257])
    if typ == CHR or typ == BLK:
        entry.devmajor = _number(block[329:337], "devmajor")
        entry.devminor = _number(block[337:345], "devminor")
    return entry


def parse_pax(data: bytes) -> dict[bytes, bytes]:
    """PAX extended header records -> {key: value} (values raw bytes)."""
    records: dict[bytes, bytes] = {}
    pos, n = 0, len(data)
    while pos < n:
        if data[pos] == 0:            # trailing NUL padding some writers leave
            break
        space = data.find(b" ", pos, pos + 24)
        try:
            end = pos + int(data[pos:space])
        except ValueError:
            raise HeaderError("malformed PAX record length") from None
        equals = data.find(b"=", space, end)
        if space < 0 or end <= space or end > n or data[end - 1] != 10 or equals < 0:
            raise HeaderError("malformed PAX record")
        records[data[space + 1:equals]] = data[equals + 1:end - 1]
        pos = end
    return records


_PAX_SIMPLE = {b"path", b"linkpath", b"size", b"uid", b"gid", b"mtime", b"atime", b"ctime",
               b"uname", b"gname", b"comment", b"charset", b"hdrcharset"}


def apply_pax(entry: Entry, records: dict[bytes, bytes]) -> None:
    """Override header fields from PAX records (path, linkpath, size, ids, mtime, xattrs)."""
    get = records.get
    try:
        if (value := get(b"path")) is not None:
            entry.name = value
        if (value := get(b"linkpath")) is not None:
            entry.linkname = value
        if (value := get(b"size")) is not None:
            entry.size = int(value)
        if (value := get(b"uid")) is not None:
            entry.uid = int(value)
        if (value := get(b"gid")) is not None:
            entry.gid = int(value)
        if (value := get(b"mtime")) is not None:
            entry.mtime = int(float(value)) if b"." in value else int(value)
    except (ValueError, OverflowError):
        raise HeaderError("bad numeric PAX record") from None
    if entry.size < 0 or entry.uid < 0 or entry.gid < 0:
        raise HeaderError("negative size or owner in PAX header")
    for key, value in records.items():
        if key in _PAX_SIMPLE:
            continue
        if key.startswith(b"SCHILY.xattr."):
            entry.xattrs[key[13:].decode("utf-8", "surrogateescape")] = value
        elif key.startswith(b"LIBARCHIVE.xattr."):
            name = key[17:].decode("utf-8", "surrogateescape")
            try:
                entry.xattrs[name] = base64.b64decode(value + b"=" * (-len(value) % 4))
            except ValueError:
                raise HeaderError(f"bad PAX record {key!r}") from None
        elif key.startswith(b"GNU.sparse."):
            raise HeaderError("sparse tar entries are not supported in layers")

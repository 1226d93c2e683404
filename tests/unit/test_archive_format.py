"""Tar header encoding and decoding, checked against themselves and against tarfile."""
from __future__ import annotations

import io
import tarfile

from hypothesis import given, settings
from hypothesis import strategies as st

from graphdrivers.archive.format import (BLOCK, DIR, LNK, REG, SYM, Entry, _pax_record,
                                         apply_pax, decode, encode, parse_pax)

component = st.binary(min_size=1, max_size=60).filter(
    lambda b: b"/" not in b and b"\0" not in b and b not in (b".", b".."))
names = st.lists(component, min_size=1, max_size=6).map(b"/".join)
entries = st.builds(
    Entry,
    name=names,
    type=st.sampled_from([REG, DIR, SYM, LNK]),
    mode=st.integers(0, 0o7777),
    uid=st.integers(0, 2**32 - 2),
    gid=st.integers(0, 2**32 - 2),
    size=st.integers(0, 2**40),
    mtime=st.integers(-2**33, 2**36),
    linkname=st.one_of(st.just(b""), names),
    xattrs=st.dictionaries(st.sampled_from(["user.a", "user.long" * 20, "security.capability"]),
                           st.binary(max_size=300), max_size=3),
)


def _parse(data: bytes) -> Entry:
    pax: dict[bytes, bytes] = {}
    pos = 0
    while True:
        entry = decode(data[pos:pos + BLOCK])
        if entry.type != b"x":
            break
        pax.update(parse_pax(data[pos + BLOCK:pos + BLOCK + entry.size]))
        pos += BLOCK + entry.size + (-entry.size % BLOCK)
    apply_pax(entry, pax)
    assert pos + BLOCK == len(data)
    return entry


@settings(max_examples=120, deadline=None)
@given(entries)
def test_encode_decode_round_trip(entry):
    if entry.type in (REG, DIR):
        entry.linkname = b""
    if entry.type != REG:
        entry.size = 0
    data = encode(entry)
    assert len(data) % BLOCK == 0
    back = _parse(data)
    assert back.name.rstrip(b"/") == entry.name
    for field in ("type", "mode", "uid", "gid", "size", "mtime", "linkname", "xattrs"):
        assert getattr(back, field) == getattr(entry, field), field
    # and the standard library agrees on what we wrote
    member = tarfile.open(fileobj=io.BytesIO(data + bytes(1024)), mode="r|",
                          encoding="utf-8", errors="surrogateescape").next()
    assert member.uid == entry.uid and member.mtime == entry.mtime and member.size == entry.size


@given(st.binary(max_size=2000))
def test_pax_record_lengths(value):
    record = _pax_record(b"k", value)
    length = int(record.split(b" ", 1)[0])
    assert length == len(record) and record.endswith(b"\n")
    assert parse_pax(record) == {b"k": value}

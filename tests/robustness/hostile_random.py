"""The streams of hostile.py built from a seeded ``random.Random`` instead of hypothesis.

Same vocabulary (hostile.py's tables and ``encode``), same structure, no
shrinking and no per-draw bookkeeping: about a hundred times cheaper per tar,
for the million-tar campaign of bench/fuzz_apply.py. Tar ``index`` of campaign
``seed`` comes from its own ``Random(f"{seed}/{index}")``, so any one of them
is rebuilt exactly, alone, by ``case(seed, index, canary, rel)``.
"""
from __future__ import annotations

import random
import tarfile

from . import hostile as h

Member = tuple[tarfile.TarInfo, bytes]


def case(seed: int, index: int, canary: str, rel: str) -> tuple[bytes, bool]:
    """Tar ``index`` of campaign ``seed``, and whether it is applied on the parent layer."""
    rng = random.Random(f"{seed}/{index}")
    return stream(rng, canary, rel), rng.random() < 0.5


def stream(rng: random.Random, canary: str, rel: str) -> bytes:
    """One hostile stream; a draw tarfile cannot encode is drawn again from the same rng."""
    while True:
        members = _members(rng, canary, rel)
        try:
            data = h.encode(members, rng.choice(h.FORMATS))
        except h.Unencodable:
            continue
        return _mutate(rng, data)


def _members(rng: random.Random, canary: str, rel: str) -> list[Member]:
    if rng.random() < 0.5:              # all wild
        members = [entry(rng, canary, rel) for _ in range(rng.randint(1, h.MAX_WILD))]
    else:                               # plain structure, then one wild entry somewhere in it
        members = [entry(rng, canary, rel, benign=True)
                   for _ in range(rng.randint(1, h.MAX_BENIGN))]
        members.insert(rng.randint(0, len(members)), entry(rng, canary, rel))
    if rng.random() < 0.5:
        members.append(rng.choice(members))                        # a duplicate entry
    return members


def _mutate(rng: random.Random, data: bytes) -> bytes:
    mutation = rng.choice(h.MUTATIONS)
    if mutation == "truncate":
        low = h.BLOCK if rng.random() < 0.5 else 0
        return data[:rng.randint(low, len(data) - 1)]
    if mutation == "flip":
        return h.overwrite(data, rng.randrange(len(data)), bytes([rng.randrange(256)]))
    if mutation == "header":                 # corrupt the size/checksum/type fields
        start = h.BLOCK * rng.randint(0, max(0, len(data) // h.BLOCK - 3))
        junk = rng.randbytes(rng.randint(1, h.MAX_JUNK))
        return h.overwrite(data, start + rng.choice(h.HEADER_FIELDS), junk)
    if mutation == "garbage":
        return data + rng.randbytes(rng.randint(1, h.MAX_GARBAGE))
    if mutation == "noend":
        return data[:-2 * h.BLOCK]
    return data


def benign_name(rng: random.Random) -> str:
    return "/".join(rng.choices(h.BENIGN, k=rng.randint(1, h.MAX_PIECES)))


def name(rng: random.Random) -> str:
    if rng.randrange(h.LONG_ONE_IN) == 0:
        return "long/" * rng.randint(*h.LONG_REPEATS) + "f"
    inner = "/".join(rng.choices(h.PIECES, k=rng.randint(1, h.MAX_PIECES)))
    return rng.choice(h.PREFIXES) + inner + rng.choice(h.SUFFIXES)


def link_target(rng: random.Random, canary: str, rel: str) -> str:
    branch = rng.randrange(5)
    if branch == 0:
        return canary + rng.choice(h.TAILS)
    if branch == 1:
        return "../" * rng.randint(0, h.MAX_UPS) + "canary" + rng.choice(h.TAILS)
    if branch == 2:
        return rel + rng.choice(h.TAILS)
    if branch == 3:
        return rng.choice(h.SYMLINK_FIXED)
    return name(rng)


def hardlink_target(rng: random.Random, canary: str, rel: str) -> str:
    if rng.random() < 0.5:
        return name(rng)
    return rng.choice(h.HARDLINK_FIXED).replace("CANARY", canary).replace("REL", rel)


def _pax(rng: random.Random, canary: str, rel: str) -> dict[str, str]:
    keys = rng.sample(h.PAX_KEYS, rng.randint(0, h.PAX_MAX))
    values = (lambda: name(rng), lambda: link_target(rng, canary, rel),
              lambda: rng.choice(h.PAX_VALUES))
    return {key: rng.choice(values)() for key in keys}


def entry(rng: random.Random, canary: str, rel: str, benign: bool = False) -> Member:
    kind = rng.choice(h.KINDS)
    info = tarfile.TarInfo(benign_name(rng) if benign else name(rng))
    info.mode = rng.choice(h.MODES)
    info.mtime = rng.choice(h.MTIMES)
    info.uid, info.gid = rng.choice(h.OWNERS)
    data = b""
    if kind == "file":
        info.type = tarfile.REGTYPE
        data = rng.randbytes(rng.randint(0, h.MAX_DATA))
        info.size = len(data)
        if rng.randrange(10) == 0:
            info.size = rng.choice(h.HUGE_SIZES)
    elif kind == "dir":
        info.type = tarfile.DIRTYPE
    elif kind == "sym":
        info.type = tarfile.SYMTYPE
        if benign and rng.random() < 0.5:
            info.linkname = benign_name(rng)
        else:
            info.linkname = link_target(rng, canary, rel)
    elif kind == "lnk":
        info.type = tarfile.LNKTYPE
        info.linkname = benign_name(rng) if benign else hardlink_target(rng, canary, rel)
    else:
        info.type = h.DEVICE_TYPES[kind]
        info.devmajor, info.devminor = rng.choice(h.DEVICES)
    if not benign and rng.randrange(h.PAX_ONE_IN) == 0:
        info.pax_headers = _pax(rng, canary, rel)
    return info, data

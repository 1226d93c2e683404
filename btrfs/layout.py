"""C structs as named fields over ``struct.Struct``.

A ``Layout`` lists a kernel struct's fields in the header's order, each with
its struct format code, native byte order and no implicit alignment: padding
the C compiler inserts is written out as a ``PAD`` field, so the layout reads
like the header and its size can be checked against ``sizeof``. A field may be
another Layout (a nested struct): its fields are flattened as
``<field>_<subfield>`` and ``span(<field>)`` gives the bytes of the whole group.
"""
from __future__ import annotations

import struct
from collections import namedtuple
from typing import Any, NamedTuple, Sequence, Union

PAD = ""     # the name of a padding field ("4x"): no value, always zero


class Layout:
    def __init__(self, name: str, fields: Sequence[tuple[str, Union[str, "Layout"]]]) -> None:
        self.name = name
        self._flat: list[tuple[str, str]] = []        # (name or PAD, one format code)
        self._spans: dict[str, slice] = {}
        pos = 0                                        # "=": offsets simply add up
        for fname, code in fields:
            start = pos
            if isinstance(code, Layout):
                for sub, sub_code in code._flat:
                    pos += self._add(PAD if sub == PAD else f"{fname}_{sub}", sub_code, pos)
            else:
                pos += self._add(fname, code, start)
            if fname != PAD:
                self._spans[fname] = slice(start, pos)
        self._struct = struct.Struct("=" + "".join(c for _n, c in self._flat))
        self.size = self._struct.size
        self.fields = tuple(n for n, _c in self._flat if n != PAD)
        self._names = frozenset(self.fields)
        self._tuple = namedtuple(name, self.fields)
        self._defaults = tuple(b"" if c.endswith("s") else 0 for n, c in self._flat if n != PAD)
        #: positional unpack and pack, in ``fields`` order, for hot loops
        self.unpack_from = self._struct.unpack_from
        self.pack_values_into = self._struct.pack_into

    def _add(self, name: str, code: str, start: int) -> int:
        size = struct.calcsize("=" + code)
        if name != PAD:
            if len(struct.unpack("=" + code, bytes(size))) != 1:
                raise ValueError(f"{self.name}.{name}: {code!r} is not one value")
            self._spans[name] = slice(start, start + size)
        self._flat.append((name, code))
        return size

    def span(self, field: str) -> slice:
        """The bytes of ``field`` (a nested struct's as a whole) within the struct."""
        return self._spans[field]

    def offset(self, field: str) -> int:
        return self._spans[field].start

    def unpack(self, buf: Any, offset: int = 0) -> NamedTuple:
        """The struct at ``offset`` of ``buf`` as a named tuple."""
        return self._tuple._make(self._struct.unpack_from(buf, offset))

    def pack_into(self, buf: Any, offset: int = 0, **values: Any) -> None:
        """Write the struct at ``offset``; fields not given are zero."""
        unknown = values.keys() - self._names
        if unknown:
            raise TypeError(f"{self.name} has no field {', '.join(sorted(unknown))}")
        self._struct.pack_into(buf, offset, *[values.get(n, d) for n, d in zip(self.fields, self._defaults)])

    def pack(self, **values: Any) -> bytearray:
        """A zeroed buffer of the struct's size holding ``values`` (mutable: ioctls write back)."""
        buf = bytearray(self.size)
        self.pack_into(buf, 0, **values)
        return buf

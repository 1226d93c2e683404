"""containerd's filter expressions for List, over snapshot infos.

A filter is selectors joined by ``,`` (all must hold); List gets several filters and
returns what any one matches (no filter: everything). A selector is a field path
(``name``, ``parent``, ``kind``, ``labels.<key>``, the key quoted when it holds dots:
``labels."containerd.io/gc.root"``), alone (the field is present and not empty) or
followed by ``==``, ``!=`` or ``~=`` (a regular expression) and a value, quoted or bare.
"""
from __future__ import annotations

import re
from typing import Callable, Mapping

from graphdrivers.errors import InvalidRequest

Fields = Mapping[str, str]      # "name", "parent", "kind", "labels.<key>" -> value
Predicate = Callable[[Fields], bool]

_TOKEN = re.compile(r'\s*(?:"((?:[^"\\]|\\.)*)"|(==|!=|~=)|([,.])|([^\s,.="!~]+))')


def _tokens(text: str) -> list[tuple[str, str]]:
    out, pos = [], 0
    while pos < len(text.rstrip()):
        m = _TOKEN.match(text, pos)
        if not m or m.end() == pos:
            raise InvalidRequest(f"malformed filter {text!r} at character {pos + 1}")
        quoted, op, punct, word = m.groups()
        if quoted is not None:
            out.append(("str", re.sub(r"\\(.)", r"\1", quoted)))
        elif op:
            out.append(("op", op))
        elif punct:
            out.append((punct, punct))
        else:
            out.append(("str", word))
        pos = m.end()
    return out


def parse(text: str) -> Predicate:
    tokens, selectors, i = _tokens(text), [], 0
    while i < len(tokens):
        path = []
        while True:
            if i >= len(tokens) or tokens[i][0] != "str":
                raise InvalidRequest(f"malformed filter {text!r}: a field name is missing")
            path.append(tokens[i][1])
            i += 1
            if i < len(tokens) and tokens[i][0] == ".":
                i += 1
                continue
            break
        op = value = None
        if i < len(tokens) and tokens[i][0] == "op":
            op = tokens[i][1]
            i += 1
            # a bare value may hold dots ("a.b"): take tokens up to the next comma
            parts = []
            while i < len(tokens) and tokens[i][0] != ",":
                parts.append(tokens[i][1])
                i += 1
            value = "".join(parts)
        if i < len(tokens):
            if tokens[i][0] != ",":
                raise InvalidRequest(f"malformed filter {text!r}: expected ',' after a selector")
            i += 1
        selectors.append(_selector(".".join(path[:1]) if path[0] != "labels"
                                   else "labels." + ".".join(path[1:]), op, value, text))
    return lambda fields: all(s(fields) for s in selectors)


def _selector(path: str, op: str | None, value: str | None, text: str) -> Predicate:
    if path not in ("name", "parent", "kind") and not path.startswith("labels."):
        raise InvalidRequest(f"filter {text!r}: unknown field {path!r} (name, parent, kind, "
                             "labels.<key>)")
    if op is None:
        return lambda f: bool(f.get(path))
    if op == "==":
        return lambda f: f.get(path, "") == value
    if op == "!=":
        return lambda f: f.get(path, "") != value
    try:
        pattern = re.compile(value or "")
    except re.error as exc:
        raise InvalidRequest(f"filter {text!r}: bad regular expression: {exc}") from None
    return lambda f: pattern.search(f.get(path, "")) is not None


def matcher(filters: list[str]) -> Predicate:
    predicates = [parse(f) for f in filters if f.strip()]
    return lambda fields: not predicates or any(p(fields) for p in predicates)

"""Storage options, parsed the way dockerd parses --storage-opt.

Keys are case-insensitive and carry the driver prefix (``dm.basesize``,
``overlay2.size``); sizes use Docker's RAMInBytes units, where every unit is a
power of 1024 (``100GB`` == ``100GiB`` == 100 * 2**30), and booleans accept what
Go's strconv.ParseBool accepts.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping

from graphdrivers.errors import InvalidOption

# go-units: a number, one optional space, then "", "b", or a unit with optional "b"/"ib"
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?) ?(?:([kmgtp])(?:i?b)?|b)?\s*$", re.IGNORECASE)
_POWERS = {"": 0, "k": 1, "m": 2, "g": 3, "t": 4, "p": 5}
_TRUE = {"1", "t", "true"}
_FALSE = {"0", "f", "false"}


def parse_size(text: str) -> int:
    """Parse a size like ``100GB``, ``2G``, ``512MiB`` or ``4096`` into bytes."""
    match = _SIZE.match(str(text))
    if not match:
        raise ValueError(f"{text!r} is not a size (examples: 4096, 512MiB, 2G, 100GB)")
    number, unit = match.group(1), (match.group(2) or "").lower()
    return int(float(number) * (1024 ** _POWERS[unit]))


def parse_bool(text: str) -> bool:
    value = str(text).strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ValueError(f"{text!r} is not a boolean (use true or false)")


def parse_percent(text: str) -> int:
    value = str(text).strip().rstrip("%")
    if not value.isdigit() or not 0 <= int(value) <= 100:
        raise ValueError(f"{text!r} is not a percentage between 0 and 100")
    return int(value)


def parse_int(text: str) -> int:
    try:
        return int(str(text).strip())
    except ValueError:
        raise ValueError(f"{text!r} is not an integer") from None


def parse_str(text: str) -> str:
    return str(text)


@dataclass(frozen=True)
class Option:
    """One accepted option: how to parse it and its value when not given."""
    parse: Callable[[str], Any] = parse_str
    default: Any = None
    help: str = ""


def parse_options(given: Mapping[str, str] | None, accepted: Mapping[str, Option],
                  *, what: str = "storage option") -> dict[str, Any]:
    """Validate ``given`` against ``accepted``; return every accepted key with its value.

    Unknown keys and values that do not parse raise InvalidOption naming the
    option and what is accepted. Keys are matched case-insensitively.
    """
    values = {key: spec.default for key, spec in accepted.items()}
    for raw_key, raw_value in (given or {}).items():
        key = str(raw_key).strip().lower()
        spec = accepted.get(key)
        if spec is None:
            names = ", ".join(sorted(accepted)) or "none"
            raise InvalidOption(f"unknown {what} {raw_key!r}; accepted: {names}")
        try:
            values[key] = spec.parse(raw_value)
        except (ValueError, TypeError) as exc:
            raise InvalidOption(f"{what} {raw_key}={raw_value!r}: {exc}") from None
    return values


def parse_key_values(pairs: Iterable[str], *, what: str = "storage option") -> dict[str, str]:
    """Turn ``["dm.basesize=20G", ...]`` (the CLI and plugin shape) into a dict."""
    result: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = str(pair).partition("=")
        if not sep or not key.strip():
            raise InvalidOption(f"{what} {pair!r} must have the form key=value")
        result[key.strip()] = value.strip()
    return result


def format_size(size: int | float) -> str:
    """Human units as docker info prints them (decimal, 4 significant digits)."""
    size = float(size)
    for unit in ("B", "kB", "MB", "GB", "TB", "PB"):
        if abs(size) < 1000 or unit == "PB":
            return f"{size:.4g} {unit}"
        size /= 1000
    raise AssertionError("unreachable")

"""Storage-option parsing: Docker's size units, booleans, unknown and malformed keys."""
from __future__ import annotations

import pytest

from graphdrivers.errors import InvalidOption
from graphdrivers.options import (Option, format_size, parse_bool, parse_int, parse_key_values,
                                  parse_options, parse_percent, parse_size)

KiB, MiB, GiB, TiB, PiB = (1024 ** n for n in range(1, 6))


@pytest.mark.parametrize("text, expected", [
    ("100GB", 100 * GiB),          # Docker's RAMInBytes: every unit is a power of 1024
    ("100GiB", 100 * GiB),
    ("100gb", 100 * GiB),
    ("2G", 2 * GiB),
    ("2g", 2 * GiB),
    ("512MiB", 512 * MiB),
    ("512M", 512 * MiB),
    ("512mb", 512 * MiB),
    ("1.5g", int(1.5 * GiB)),
    ("1.5G", 1610612736),
    ("10k", 10 * KiB),
    ("10KB", 10 * KiB),
    ("3T", 3 * TiB),
    ("1p", PiB),
    ("4096", 4096),
    ("4096b", 4096),
    ("4096B", 4096),
    ("0", 0),
    ("32 MiB", 32 * MiB),           # one space between number and unit, as go-units allows
    (" 8G ", 8 * GiB),
])
def test_sizes(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "G", "GB", "abc", "-1G", "1.5.5G", "10X", "10GBB",
                                  "10 G B", "1e3", "0x10", "10i", "10ib", "10ki", "10KiBB", "10  G", "ten"])
def test_bad_sizes(text):
    with pytest.raises(ValueError) as info:
        parse_size(text)
    assert repr(text) in str(info.value)


@pytest.mark.parametrize("text, expected", [
    ("1", True), ("t", True), ("T", True), ("true", True), ("TRUE", True), ("True", True),
    ("0", False), ("f", False), ("F", False), ("false", False), ("FALSE", False),
    ("False", False),
])
def test_bools(text, expected):
    assert parse_bool(text) is expected


@pytest.mark.parametrize("text", ["", "yes", "no", "2", "on", "truthy"])
def test_bad_bools(text):
    with pytest.raises(ValueError):
        parse_bool(text)


def test_percent_and_int():
    assert parse_percent("10") == 10
    assert parse_percent("95%") == 95
    assert parse_int(" 42 ") == 42
    for bad in ("101", "-1", "x", "5.5"):
        with pytest.raises(ValueError):
            parse_percent(bad)
    with pytest.raises(ValueError):
        parse_int("4k")


ACCEPTED = {
    "dm.basesize": Option(parse_size, 10 * GiB, "size of the base device"),
    "dm.use_deferred_removal": Option(parse_bool, False),
    "dm.fs": Option(default="xfs"),
}


def test_parse_options_fills_defaults():
    assert parse_options({}, ACCEPTED) == {"dm.basesize": 10 * GiB,
                                           "dm.use_deferred_removal": False, "dm.fs": "xfs"}
    assert parse_options(None, ACCEPTED)["dm.fs"] == "xfs"


def test_parse_options_case_insensitive_keys():
    values = parse_options({"DM.BaseSize": "20G", "dm.Use_Deferred_Removal": "true"}, ACCEPTED)
    assert values["dm.basesize"] == 20 * GiB
    assert values["dm.use_deferred_removal"] is True


def test_unknown_key_names_the_option_and_the_accepted_list():
    with pytest.raises(InvalidOption) as info:
        parse_options({"dm.basesise": "20G"}, ACCEPTED)
    message = str(info.value)
    assert "dm.basesise" in message
    for key in ACCEPTED:
        assert key in message


def test_malformed_value_names_option_and_value():
    with pytest.raises(InvalidOption) as info:
        parse_options({"dm.basesize": "lots"}, ACCEPTED)
    assert "dm.basesize" in str(info.value) and "lots" in str(info.value)
    with pytest.raises(InvalidOption):
        parse_options({"dm.use_deferred_removal": "maybe"}, ACCEPTED)


def test_no_options_accepted():
    with pytest.raises(InvalidOption) as info:
        parse_options({"size": "1G"}, {})
    assert "size" in str(info.value)


def test_key_values():
    assert parse_key_values(["dm.basesize=20G", " a = b ", "empty="]) == {
        "dm.basesize": "20G", "a": "b", "empty": ""}
    assert parse_key_values(["x=a=b"]) == {"x": "a=b"}
    for bad in (["novalue"], ["=value"], [" =x"]):
        with pytest.raises(InvalidOption) as info:
            parse_key_values(bad)
        assert bad[0] in str(info.value)


def test_format_size():
    assert format_size(0) == "0 B"
    assert format_size(999) == "999 B"
    assert format_size(1000) == "1 kB"
    assert format_size(107374182400) == "107.4 GB"

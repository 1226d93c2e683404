"""Layer id validation: ids become path components, so every odd shape is refused."""
from __future__ import annotations

import pytest

from graphdrivers.errors import DriverError, InvalidLayerId
from graphdrivers.layerid import check_id, is_valid_id

GOOD = ["a", "0", "Z", "abc", "a.b", "a-b", "a_b", "sha256.0123", "x" * 128,
        "0123456789abcdef" * 8, "A1.-_", "layer-1", "a..b"]
BAD = ["", ".", "..", "../x", "a/b", "/abs", "x" * 129, ".hidden", "-dash", "_under",
       "a b", "a\tb", "a\nb", "a\x00b", "é", "a:b", "a\\b", "a*", "~", "a/", " a",
       "a\n"]
NOT_STR = [None, 123, 1.5, b"abc", bytearray(b"abc"), ["a"], object()]


@pytest.mark.parametrize("layer_id", GOOD)
def test_good_ids(layer_id):
    assert is_valid_id(layer_id)
    assert check_id(layer_id) == layer_id


@pytest.mark.parametrize("layer_id", BAD + NOT_STR, ids=repr)
def test_bad_ids(layer_id):
    assert not is_valid_id(layer_id)
    with pytest.raises(InvalidLayerId) as info:
        check_id(layer_id)
    assert isinstance(info.value, DriverError)
    assert repr(layer_id) in str(info.value)


def test_message_names_what_was_checked():
    with pytest.raises(InvalidLayerId) as info:
        check_id("../p", "parent id")
    assert "parent id" in str(info.value)
    assert "128" in str(info.value)

"""Layer id validation: ids become path components, so they are checked everywhere."""
import re

from graphdrivers.errors import InvalidLayerId

_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")


def is_valid_id(layer_id: object) -> bool:
    return isinstance(layer_id, str) and _ID.fullmatch(layer_id) is not None


def check_id(layer_id: object, what: str = "layer id") -> str:
    """Return the id unchanged, or raise InvalidLayerId saying why it was refused."""
    if not is_valid_id(layer_id):
        raise InvalidLayerId(
            f"invalid {what} {layer_id!r}: use 1-128 characters from [A-Za-z0-9_.-], "
            "starting with a letter or digit")
    return layer_id  # type: ignore[return-value]

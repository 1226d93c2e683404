"""The on-disk layout of one overlay2 layer (Docker's, so an operator recognizes it).

    <home>/l/<short>        -> ../<id>/diff   (short names keep mount options small)
    <home>/<id>/diff        the layer's own files (overlay upper dir)
    <home>/<id>/link        <short>
    <home>/<id>/lower       l/<short>:l/<short>:...   parents, nearest first (absent: base)
    <home>/<id>/work        overlay work dir (only with a parent)
    <home>/<id>/merged      mount point, exists while mounted
    <home>/<id>/committed   present once the layer has a child: it is mounted read-only
"""
from __future__ import annotations

import base64
import os
from pathlib import Path

LINK_DIR = "l"
SHORT_LEN = 26          # Docker's short-name length
# A layer whose id is "l" cannot live at <home>/l (the short-link directory): it lives
# at "_l", a name no valid id can take (ids start with a letter or digit).
_ALIAS = "_l"


def dir_name(layer_id: str) -> str:
    """The directory name under the home that holds layer ``layer_id``."""
    return _ALIAS if layer_id == LINK_DIR else layer_id


def layer_id_of(name: str) -> str:
    """The layer id held by directory ``name`` (inverse of dir_name)."""
    return LINK_DIR if name == _ALIAS else name


def new_short_name() -> str:
    return base64.b32encode(os.urandom(20)).decode()[:SHORT_LEN]


def read_text(path: Path) -> str:
    try:
        with open(path, "rb") as f:
            return f.read().decode().strip()
    except FileNotFoundError:
        return ""


def read_lowers(layer_dir: Path) -> list[str]:
    """The ``lower`` file as a list of ``l/<short>`` entries, nearest parent first."""
    text = read_text(layer_dir / "lower")
    return text.split(":") if text else []


def id_of_link(home: Path, lower_entry: str) -> str | None:
    """The layer id an ``l/<short>`` entry points to (``../<id>/diff``), or None if dangling."""
    try:
        target = os.readlink(home / lower_entry)
    except OSError:
        return None
    parts = target.split("/")
    if len(parts) == 3 and parts[0] == ".." and parts[2] == "diff" and \
            (home / parts[1]).is_dir():
        return layer_id_of(parts[1])
    return None

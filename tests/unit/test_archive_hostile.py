"""Hostile and broken tars: a DriverError, and nothing outside the layer touched."""
from __future__ import annotations

import io
import os
import tarfile

import pytest

from graphdrivers.archive import apply_tar
from graphdrivers.errors import CorruptArchive, DriverError
from test_archive_trees import snapshot


@pytest.fixture
def place(tmp_path):
    """(layer dir, canary dir beside it) and a check that only the layer changed."""
    layer, canary = tmp_path / "layer", tmp_path / "canary"
    layer.mkdir()
    canary.mkdir()
    (canary / "file").write_bytes(b"precious")
    (canary / "sub").mkdir()
    before = snapshot(tmp_path / "canary")
    siblings = sorted(os.listdir(tmp_path))
    yield layer, canary
    assert snapshot(canary) == before
    assert (canary / "file").read_bytes() == b"precious"
    assert sorted(os.listdir(tmp_path)) == siblings
    assert not os.path.exists("/evil") and not os.path.exists("/tmp/evil")


def _info(name, type=tarfile.REGTYPE, **kw):
    info = tarfile.TarInfo(name)
    info.type = type
    info.mode = kw.pop("mode", 0o644)
    for key, value in kw.items():
        setattr(info, key, value)
    return info


def _tar(*members, fmt=tarfile.PAX_FORMAT) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def _apply_fails(layer, data: bytes, match: str | None = None):
    with pytest.raises(DriverError, match=match):
        apply_tar(layer, io.BytesIO(data))


def test_dotdot_path(place):
    layer, canary = place
    _apply_fails(layer, _tar((_info("../canary/evil"), b"x")), "'..'")
    _apply_fails(layer, _tar((_info("a/../../canary/file"), b"x")), "'..'")


def test_absolute_path(place):
    layer, canary = place
    _apply_fails(layer, _tar((_info(str(canary / "evil")), b"x")), "absolute")
    _apply_fails(layer, _tar((_info("/evil"), b"x")), "absolute")


def test_symlink_to_outside_then_file_through_it(place):
    layer, canary = place
    data = _tar((_info("escape", tarfile.SYMTYPE, linkname=str(canary)), None),
                (_info("escape/evil"), b"x"))
    _apply_fails(layer, data, "outside the layer")
    data = _tar((_info("rel", tarfile.SYMTYPE, linkname="../canary"), None),
                (_info("rel/evil"), b"x"))
    _apply_fails(layer, data, "outside the layer")
    data = _tar((_info("d", tarfile.DIRTYPE), None),
                (_info("d/up", tarfile.SYMTYPE, linkname="../../canary/sub"), None),
                (_info("d/up/evil", tarfile.DIRTYPE), None))
    _apply_fails(layer, data, "outside the layer")


def test_symlink_chain_and_loop(place):
    layer, canary = place
    data = _tar((_info("a", tarfile.SYMTYPE, linkname="b"), None),
                (_info("b", tarfile.SYMTYPE, linkname=str(canary)), None),
                (_info("a/evil"), b"x"))
    _apply_fails(layer, data, "outside the layer")
    data = _tar((_info("loop", tarfile.SYMTYPE, linkname="loop"), None),
                (_info("loop/evil"), b"x"))
    _apply_fails(layer, data, "symlinks")


def test_hardlink_to_outside(place):
    layer, canary = place
    _apply_fails(layer, _tar((_info("h", tarfile.LNKTYPE, linkname="../canary/file"), None)),
                 "'..'")
    _apply_fails(layer, _tar((_info("h", tarfile.LNKTYPE, linkname=str(canary / "file")),
                              None)), "absolute")
    # through a symlink that points outside
    data = _tar((_info("s", tarfile.SYMTYPE, linkname=str(canary)), None),
                (_info("h", tarfile.LNKTYPE, linkname="s/file"), None))
    _apply_fails(layer, data, "symlink")
    _apply_fails(layer, _tar((_info("h", tarfile.LNKTYPE, linkname="missing"), None)),
                 "does not exist")


def test_whiteouts_that_escape(place):
    layer, canary = place
    (layer / "sub").mkdir()
    _apply_fails(layer, _tar((_info(".wh.."), b"")), "whiteout")
    _apply_fails(layer, _tar((_info("sub/.wh.."), b"")), "whiteout")
    _apply_fails(layer, _tar((_info("sub/.wh..."), b"")), "whiteout")
    _apply_fails(layer, _tar((_info("../canary/.wh.file"), b"")), "'..'")
    assert (layer / "sub").is_dir()


def test_pax_path_override(place):
    layer, canary = place
    info = _info("innocent", pax_headers={"path": "../canary/evil"})
    _apply_fails(layer, _tar((info, b"x")), "'..'")
    info = _info("innocent", pax_headers={"path": str(canary / "evil")})
    _apply_fails(layer, _tar((info, b"x")), "absolute")
    info = _info("h", tarfile.LNKTYPE, linkname="ok", pax_headers={"linkpath": "../canary/file"})
    _apply_fails(layer, _tar((info, None)), "'..'")


def test_gnu_long_name_escape(place):
    layer, canary = place
    name = "a" * 120 + "/../../canary/evil"
    _apply_fails(layer, _tar((_info(name), b"x"), fmt=tarfile.GNU_FORMAT), "'..'")


def test_truncated_stream(place):
    layer, _ = place
    data = _tar((_info("f"), os.urandom(5000)), (_info("g"), b"g"))
    # inside a header, inside data, at an entry boundary, after the last entry
    for cut in (100, 512 + 3000, 5632, 6200, 6656):
        _apply_fails(layer, data[:cut], "truncated|ended|shorter than one")
    with pytest.raises(CorruptArchive, match="empty"):
        apply_tar(layer, io.BytesIO(b""))


def test_corrupt_header(place):
    layer, _ = place
    data = bytearray(_tar((_info("f"), b"x")))
    data[150] ^= 0xFF                                        # inside the checksum field
    _apply_fails(layer, bytes(data), "checksum")
    data = bytearray(_tar((_info("f"), b"x")))
    data[5] ^= 0x20                                          # the name: checksum no longer fits
    _apply_fails(layer, bytes(data), "checksum")
    _apply_fails(layer, b"not a tar at all" * 64, "checksum")


def test_unsupported_entry_types(place):
    layer, _ = place
    _apply_fails(layer, _tar((_info("s", tarfile.GNUTYPE_SPARSE), b"")), "type")
    _apply_fails(layer, _tar((_info("x", b"Z"), b"")), "type")


def test_root_entry_must_be_a_directory(place):
    layer, _ = place
    _apply_fails(layer, _tar((_info("./"), b"x")), "root")


def test_missing_root_is_a_driver_error(tmp_path):
    with pytest.raises(DriverError, match="cannot unpack"):
        apply_tar(tmp_path / "missing", io.BytesIO(_tar((_info("f"), b"x"))))


def test_oversized_metadata_is_refused(tmp_path):
    """PAX data is held in memory: a huge header must not be, memory stays bounded."""
    from graphdrivers.archive.format import PAX_X, _ustar
    size = 17 << 20
    header = _ustar(b"pax", b"", PAX_X, 0o644, 0, 0, size, 0, b"", 0, 0)
    stream = io.BytesIO(header + b"\0" * (size + 1024))
    with pytest.raises(CorruptArchive, match="MiB"):
        apply_tar(tmp_path, stream)

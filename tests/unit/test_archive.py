"""Export and apply of layer tars: round trips, tar details, whiteouts, streaming."""
from __future__ import annotations

import io
import os
import stat
import tarfile
import tracemalloc

import pytest

from graphdrivers.archive import PLAIN, WhiteoutFormat, apply_tar, export_changes, export_tree
from graphdrivers.driver import Change, ChangeKind
from graphdrivers.errors import CorruptArchive
from test_archive_trees import CAPABILITY, LONG_DIR, assert_same, build_tree, snapshot


def _tar(entries) -> bytes:
    """Build a tar with tarfile: entries are (TarInfo kwargs, data or None)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for kwargs, data in entries:
            info = tarfile.TarInfo(kwargs.pop("name"))
            for key, value in kwargs.items():
                setattr(info, key, value)
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def _file(name, data=b"data", **kw):
    return ({"name": name, "type": tarfile.REGTYPE, "mode": 0o644, "mtime": 1_500_000_000,
             **kw}, data)


def _dir(name, **kw):
    return ({"name": name, "type": tarfile.DIRTYPE, "mode": 0o755, "mtime": 1_500_000_000,
             **kw}, None)


def test_round_trip_keeps_every_feature(tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    build_tree(src)
    dst.mkdir()
    with export_tree(src) as stream:
        size = apply_tar(dst, stream)
    assert_same(snapshot(src), snapshot(dst))
    regular = {os.lstat(p).st_ino: os.lstat(p).st_size for p in src.rglob("*")
               if p.is_file() and not p.is_symlink()}
    assert size == sum(regular.values())


def test_export_entries(tmp_path):
    src = tmp_path / "src"
    build_tree(src)
    data = export_tree(src).read()
    tar = tarfile.open(fileobj=io.BytesIO(data))
    members = {m.name: m for m in tar}
    names = list(members)
    # directories precede their contents; names sorted within a directory
    assert names.index("dir") < names.index("dir/big") < names.index("dir/sub")
    assert names.index("dir/sub") < names.index("dir/sub/hardlink2")
    assert members["suid"].mode == 0o4755 and members["tmp"].mode == 0o1777
    assert members["tmp"].isdir() and members["fifo"].isfifo()
    assert members["null"].ischr() and (members["null"].devmajor, members["null"].devminor) == (1, 3)
    assert members["loopdev"].isblk() and members["loopdev"].devminor == 200
    assert members["abs-link"].issym() and members["abs-link"].linkname == "/etc/passwd"
    assert members["long-target"].linkname == "t" * 150
    assert members["bigid"].uid == 3_000_000 and members["bigid"].gid == 3_000_001
    assert members["dir/small"].mtime == 1_000_000_000
    assert members[f"{LONG_DIR}/{'f' * 120}"].size == 4
    # hard links point at the first path written
    links = [m for m in tar.getmembers() if m.islnk()]
    assert {(m.name, m.linkname) for m in links} == {
        ("dir/sub/hardlink2", "dir/small"), ("hardlink", "dir/small")}
    assert members["cap"].pax_headers["SCHILY.xattr.security.capability"].encode(
        "utf-8", "surrogateescape") == CAPABILITY
    assert "SCHILY.xattr.user.comment" in members["xattrs"].pax_headers
    assert data.endswith(bytes(1024))


def test_export_is_pax_and_block_aligned(tmp_path):
    (tmp_path / "f").write_bytes(b"x" * 700)
    data = export_tree(tmp_path).read()
    assert len(data) % 512 == 0
    assert data[257:265] == b"ustar\x0000"


def test_export_streams_large_file_in_bounded_memory(tmp_path):
    big = tmp_path / "src" / "sparse"
    big.parent.mkdir()
    with open(big, "wb") as f:
        f.truncate(64 << 20)
    dst = tmp_path / "dst"
    dst.mkdir()
    tracemalloc.start()
    try:
        # export piped straight into apply: neither side may hold the file
        size = apply_tar(dst, export_tree(big.parent))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert size == 64 << 20
    assert os.path.getsize(dst / "sparse") == 64 << 20
    assert peak < 8 << 20, f"peak {peak} bytes"


def test_on_close_called_exactly_once(tmp_path):
    (tmp_path / "f").write_bytes(b"x")
    calls = []
    stream = export_tree(tmp_path, on_close=lambda: calls.append(1))
    stream.read(10)
    stream.close()
    stream.close()
    assert calls == [1]
    with export_changes(tmp_path, [], on_close=lambda: calls.append(2)):
        pass
    assert calls == [1, 2]
    stream = export_tree(tmp_path, on_close=lambda: calls.append(3))
    del stream                      # a forgotten stream still releases its layer
    assert calls == [1, 2, 3]


def test_read_returns_exact_sizes(tmp_path):
    (tmp_path / "f").write_bytes(os.urandom(5000))
    whole = export_tree(tmp_path).read()
    stream = export_tree(tmp_path)
    parts = []
    while chunk := stream.read(777):
        assert len(chunk) == 777 or len(b"".join(parts)) + len(chunk) == len(whole)
        parts.append(chunk)
    assert b"".join(parts) == whole


def test_export_changes_whiteouts_and_full_entries(tmp_path):
    root = tmp_path
    (root / "etc").mkdir()
    (root / "etc/hosts").write_bytes(b"127.0.0.1\n")
    (root / "new").write_bytes(b"n")
    changes = [Change("/new", ChangeKind.ADD), Change("/etc", ChangeKind.MODIFY),
               Change("/etc/hosts", ChangeKind.MODIFY), Change("/etc/gone", ChangeKind.DELETE),
               Change("/olddir", ChangeKind.DELETE)]
    tar = tarfile.open(fileobj=export_changes(root, changes), mode="r|")
    members = [(m.name, m.type, m.size) for m in tar]
    assert members == [("etc", tarfile.DIRTYPE, 0), ("etc/.wh.gone", tarfile.REGTYPE, 0),
                       ("etc/hosts", tarfile.REGTYPE, 10), ("new", tarfile.REGTYPE, 1),
                       (".wh.olddir", tarfile.REGTYPE, 0)]


def test_apply_whiteouts_and_opaque(tmp_path):
    root = tmp_path / "layer"
    (root / "keep").mkdir(parents=True)
    (root / "keep/a").write_bytes(b"a")
    (root / "gone-dir/deep").mkdir(parents=True)
    (root / "gone-file").write_bytes(b"x")
    (root / "opq").mkdir()
    (root / "opq/old1").write_bytes(b"1")
    (root / "opq/olddir").mkdir()
    tar = _tar([_file(".wh.gone-dir", b""), _file(".wh.gone-file", b""),
                _file(".wh.never-existed", b""), _dir("opq"), _file("opq/-new", b"n"),
                _file("opq/.wh..wh..opq", b""), _file("opq/later", b"l"),
                _file(".wh..wh.plnk/123", b"")])
    apply_tar(root, io.BytesIO(tar))
    assert sorted(os.listdir(root)) == ["keep", "opq"]
    assert sorted(os.listdir(root / "opq")) == ["-new", "later"]
    assert (root / "keep/a").read_bytes() == b"a"


def test_apply_replaces_entries_and_creates_parents(tmp_path, monkeypatch):
    root = tmp_path / "layer"
    root.mkdir()
    (root / "was-dir").mkdir()
    (root / "was-dir/child").write_bytes(b"c")
    (root / "was-file").write_bytes(b"f")
    (root / "link").symlink_to("was-file")
    (root / "existing-dir").mkdir(mode=0o700)
    (root / "existing-dir/kept").write_bytes(b"k")
    old = os.umask(0o077)
    try:
        size = apply_tar(root, io.BytesIO(_tar([
            _file("was-dir", b"now a file"), _dir("was-file", mode=0o750),
            _file("link", b"regular"), _dir("existing-dir", mode=0o755),
            _file("implied/deeper/file", b"123")])))
    finally:
        os.umask(old)
    assert size == len(b"now a file") + len(b"regular") + 3
    assert (root / "was-dir").read_bytes() == b"now a file"
    assert (root / "was-file").is_dir() and stat.S_IMODE(os.stat(root / "was-file").st_mode) == 0o750
    assert not (root / "link").is_symlink() and (root / "link").read_bytes() == b"regular"
    assert (root / "existing-dir/kept").exists()
    assert stat.S_IMODE(os.stat(root / "existing-dir").st_mode) == 0o755
    assert stat.S_IMODE(os.stat(root / "implied").st_mode) == 0o755
    assert stat.S_IMODE(os.stat(root / "implied/deeper").st_mode) == 0o755
    assert stat.S_IMODE(os.stat(root / "implied/deeper/file").st_mode) == 0o644


def test_apply_restores_directory_mtimes_and_setuid(tmp_path):
    tar = _tar([_dir("d", mtime=1_234_567_890), _file("d/f", mode=0o4755, uid=42, gid=43),
                _file("d/g")])
    apply_tar(tmp_path, io.BytesIO(tar))
    assert os.stat(tmp_path / "d").st_mtime == 1_234_567_890
    st = os.stat(tmp_path / "d/f")
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o4755, 42, 43)


def test_apply_follows_symlink_parents_that_stay_inside(tmp_path):
    root = tmp_path / "layer"
    (root / "usr/lib").mkdir(parents=True)
    (root / "lib").symlink_to("usr/lib")
    apply_tar(root, io.BytesIO(_tar([_file("lib/x/y", b"inside")])))
    assert (root / "usr/lib/x/y").read_bytes() == b"inside"


def test_apply_gnu_long_names_and_pax_xattrs(tmp_path):
    name = "a" * 150 + "/" + "b" * 120
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        info = tarfile.TarInfo(name)
        info.size = 3
        tar.addfile(info, io.BytesIO(b"gnu"))
    apply_tar(tmp_path, io.BytesIO(buf.getvalue()))
    assert (tmp_path / name).read_bytes() == b"gnu"
    tar = _tar([(dict(name="x", type=tarfile.REGTYPE, mode=0o644,
                      pax_headers={"SCHILY.xattr.user.k": "v",
                                   "SCHILY.xattr.trusted.overlay.opaque": "y"}), b"")])
    apply_tar(tmp_path, io.BytesIO(tar))
    assert os.getxattr(tmp_path / "x", "user.k") == b"v"
    assert "trusted.overlay.opaque" not in os.listxattr(tmp_path / "x")


def test_apply_accepts_gnu_tar_output(tmp_path):
    import subprocess
    src, dst = tmp_path / "src", tmp_path / "dst"
    build_tree(src)
    dst.mkdir()
    tar = subprocess.run(["tar", "--numeric-owner", "--xattrs", "--xattrs-include=*",
                          "--format=pax", "-C", str(src), "-cf", "-", "."],
                         check=True, capture_output=True).stdout
    apply_tar(dst, io.BytesIO(tar))
    assert_same(snapshot(src), snapshot(dst))


def test_custom_whiteout_format_hooks(tmp_path):
    calls = []

    class Recorder(WhiteoutFormat):
        def apply_whiteout(self, dir_fd, name, real_dir):
            calls.append(("wh", name, real_dir))

        def apply_opaque(self, dir_fd, real_dir):
            calls.append(("opq", real_dir))

        def export_whiteout(self, path, st):
            return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0

        def export_opaque(self, dir_path):
            return dir_path.endswith("/o")

    root = tmp_path / "root"
    (root / "o").mkdir(parents=True)
    (root / "o/f").write_bytes(b"f")
    os.mknod(root / "deleted", stat.S_IFCHR | 0o600, 0)
    names = [m.name for m in tarfile.open(fileobj=export_tree(root, fmt=Recorder()), mode="r|")]
    assert names == [".wh.deleted", "o", "o/.wh..wh..opq", "o/f"]
    dst = tmp_path / "dst"
    dst.mkdir()
    apply_tar(dst, export_tree(root, fmt=Recorder()), fmt=Recorder())
    assert calls == [("wh", b"deleted", ()), ("opq", (b"o",))]
    assert PLAIN.export_xattr("user.x") and not PLAIN.export_xattr("trusted.overlay.opaque")


def test_header_number_encodings(tmp_path):
    """Octal fields using all their bytes, a 7-digit checksum, GNU base-256 numbers."""
    from graphdrivers.archive.format import _byte_sum, decode
    info = tarfile.TarInfo("x")
    info.size = 5
    block = bytearray(info.tobuf(tarfile.USTAR_FORMAT))
    block[108:116] = b"17654321"                    # uid: 8 digits, no terminator
    block[148:156] = b" " * 8
    block[148:156] = b"%07o\0" % _byte_sum(bytes(block))
    entry = decode(bytes(block))
    assert (entry.uid, entry.size) == (0o17654321, 5)
    info = tarfile.TarInfo("y")
    info.uid, info.size, info.mtime = 10**10, 3, 2**40
    entry = decode(info.tobuf(tarfile.GNU_FORMAT)[:512])
    assert (entry.uid, entry.size, entry.mtime) == (10**10, 3, 2**40)
    for uid, ok in ((2**31, True), (10**10, False)):    # base-256; the second is no uid_t
        big = tarfile.TarInfo(f"z{uid}")
        big.uid = uid
        data = io.BytesIO()
        with tarfile.open(fileobj=data, mode="w", format=tarfile.GNU_FORMAT) as tar:
            tar.addfile(big, io.BytesIO(b""))
        if ok:
            apply_tar(tmp_path, io.BytesIO(data.getvalue()))
            assert os.lstat(tmp_path / f"z{uid}").st_uid == uid
        else:
            with pytest.raises(CorruptArchive):
                apply_tar(tmp_path, io.BytesIO(data.getvalue()))


def test_apply_owner_in_setgid_directory(tmp_path):
    """New entries in a setgid directory would take its group: the tar's owner must win."""
    root = tmp_path / "layer"
    (root / "shared").mkdir(parents=True)
    os.chown(root / "shared", 0, 50)
    os.chmod(root / "shared", 0o2775)
    apply_tar(root, io.BytesIO(_tar([_file("shared/f", uid=0, gid=0),
                                     _dir("shared/d", uid=0, gid=0),
                                     _file("top", uid=0, gid=0)])))
    for name in ("shared/f", "shared/d", "top"):
        st = os.lstat(root / name)
        assert (st.st_uid, st.st_gid) == (0, 0), name
    assert stat.S_IMODE(os.lstat(root / "shared/d").st_mode) == 0o755   # no inherited setgid


def test_apply_into_existing_tree_keeps_unrelated_entries(tmp_path):
    root = tmp_path / "layer"
    (root / "etc").mkdir(parents=True)
    (root / "etc/keep").write_bytes(b"k")
    (root / "etc/replace").write_bytes(b"old contents")
    size = apply_tar(root, io.BytesIO(_tar([_dir("etc"), _file("etc/replace", b"new"),
                                            _file("etc/replace", b"newer")])))
    assert size == 8
    assert (root / "etc/keep").read_bytes() == b"k"
    assert (root / "etc/replace").read_bytes() == b"newer"


def test_gnu_tar_reads_our_output(tmp_path):
    """Our tars are standard: GNU tar unpacks them to the same tree."""
    import subprocess
    src, dst = tmp_path / "src", tmp_path / "dst"
    build_tree(src)
    dst.mkdir()
    tar = tmp_path / "ours.tar"
    with export_tree(src) as stream, open(tar, "wb") as f:
        f.write(stream.read())
    subprocess.run(["tar", "--numeric-owner", "--xattrs", "--xattrs-include=*", "-xpf",
                    str(tar), "-C", str(dst)], check=True)
    assert_same(snapshot(src), snapshot(dst))


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run the apply as another user")
def test_apply_without_root_fills_read_only_directories(tmp_path):
    """Not root, no CAP_DAC_OVERRIDE: a directory without the owner's write bit still
    receives its content, and every mode (0000 included) is exact at the end."""
    import shutil
    import subprocess
    import sys
    import tempfile
    tar = _tar([_dir(".", mode=0o555), _dir("ro", mode=0o555), _file("ro/f", mode=0o000),
                _dir("ro/sub", mode=0o500), _file("ro/sub/g", b"g", mode=0o444),
                _dir("locked", mode=0o000), _file("locked/x", mode=0o000),
                _file("shadow", b"root:*::", mode=0o000)])
    work = tempfile.mkdtemp(prefix="graphdrivers-nobody-", dir="/tmp")   # nobody reaches it
    try:
        os.chmod(work, 0o755)
        root = os.path.join(work, "layer")
        os.mkdir(root)
        os.chown(root, 65534, 65534)
        with open(os.path.join(work, "layer.tar"), "wb") as f:
            f.write(tar)
        code = ("import sys; from graphdrivers.archive import apply_tar; "
                "apply_tar(sys.argv[1], open(sys.argv[2], 'rb'))")
        done = subprocess.run([sys.executable, "-c", code, root, os.path.join(work, "layer.tar")],
                              user=65534, group=65534, extra_groups=[], capture_output=True,
                              text=True, cwd="/")
        assert done.returncode == 0, done.stderr
        modes = {rel: stat.S_IMODE(os.lstat(os.path.join(root, rel)).st_mode)
                 for rel in (".", "ro", "ro/f", "ro/sub", "ro/sub/g", "locked", "locked/x",
                             "shadow")}
        assert modes == {".": 0o555, "ro": 0o555, "ro/f": 0o000, "ro/sub": 0o500,
                         "ro/sub/g": 0o444, "locked": 0o000, "locked/x": 0o000,
                         "shadow": 0o000}
        with open(os.path.join(root, "ro/sub/g"), "rb") as f:
            assert f.read() == b"g"
        assert os.stat(os.path.join(root, "ro")).st_mtime == 1_500_000_000
    finally:
        shutil.rmtree(work)

"""A docker-save image built offline with tarfile, for the containerd tests.

Four layers, each exercising one part of the layer format a snapshotter has to
carry through containerd's applier:

1. base: the static busybox with its applets (hard links and symlinks), /etc
2. data: plain files, a hard-link pair, a setuid file, a file owned by a user,
   user.* xattrs (PAX ``SCHILY.xattr.`` records) on a file and a directory
3. changes: whiteouts of a file and of a directory, an opaque directory, a file
   replaced under its hard link, a new hard-link pair, a new xattr
4. top: a whited-out file added back, a mode change, a symlink, a path longer
   than 100 bytes, an empty file

``CHECK`` is a shell script that reads something from every layer; ``CHECK_OUT``
is what it must print. The same image is run on a built-in snapshotter and on
graphdrivers, and both outputs must equal it.
"""
from __future__ import annotations

import hashlib
import io
import json
import subprocess
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

BUSYBOX = "/bin/busybox"
REF = "localhost/graphdrivers-e2e:1"
MTIME = 1_700_000_000
# applets linked hard (same inode as busybox) and by symlink: both kinds in layer 1
HARD_APPLETS = ("sh", "cat", "ls")
LONG = "long/" + "/".join(["d" * 40] * 3) + "/file-with-a-long-name"


@dataclass
class Layer:
    """One layer: tar entries in order, built by the small methods below."""
    entries: list[tuple[tarfile.TarInfo, bytes | None]] = field(default_factory=list)

    def _add(self, info: tarfile.TarInfo, data: bytes | None = None) -> "Layer":
        info.mtime = MTIME
        info.uname = info.gname = ""
        if data is not None:
            info.size = len(data)
        self.entries.append((info, data))
        return self

    def dir(self, path: str, mode: int = 0o755, xattrs: dict[str, str] | None = None) -> "Layer":
        info = tarfile.TarInfo(path)
        info.type, info.mode = tarfile.DIRTYPE, mode
        _set_xattrs(info, xattrs)
        return self._add(info)

    def file(self, path: str, data: bytes | str, mode: int = 0o644, uid: int = 0,
             gid: int = 0, xattrs: dict[str, str] | None = None) -> "Layer":
        info = tarfile.TarInfo(path)
        info.mode, info.uid, info.gid = mode, uid, gid
        _set_xattrs(info, xattrs)
        return self._add(info, data.encode() if isinstance(data, str) else data)

    def hardlink(self, path: str, target: str) -> "Layer":
        """A hard link to an earlier entry of this layer. Its header carries the
        target's mode and owner, as tar writes them: appliers chmod the link by it."""
        source = next(info for info, _ in self.entries if info.name == target)
        info = tarfile.TarInfo(path)
        info.type, info.linkname = tarfile.LNKTYPE, target
        info.mode, info.uid, info.gid = source.mode, source.uid, source.gid
        return self._add(info)

    def symlink(self, path: str, target: str) -> "Layer":
        info = tarfile.TarInfo(path)
        info.type, info.linkname, info.mode = tarfile.SYMTYPE, target, 0o777
        return self._add(info)

    def whiteout(self, path: str) -> "Layer":
        parent, _, name = path.rpartition("/")
        return self.file(f"{parent}/.wh.{name}" if parent else f".wh.{name}", b"")

    def opaque(self, directory: str) -> "Layer":
        return self.file(f"{directory}/.wh..wh..opq", b"")

    def tar_bytes(self) -> bytes:
        out = io.BytesIO()
        with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for info, data in self.entries:
                tar.addfile(info, io.BytesIO(data) if data is not None else None)
        return out.getvalue()


def _set_xattrs(info: tarfile.TarInfo, xattrs: dict[str, str] | None) -> None:
    for name, value in (xattrs or {}).items():
        info.pax_headers[f"SCHILY.xattr.{name}"] = value


def busybox_applets() -> list[str]:
    out = subprocess.run([BUSYBOX, "--list"], capture_output=True, text=True, check=True)
    return sorted(a for a in out.stdout.split() if a != "busybox")


def base_layer() -> Layer:
    layer = Layer()
    for d in ("bin", "dev", "etc", "proc", "root", "sys", "tmp"):
        layer.dir(d, 0o1777 if d == "tmp" else 0o755)
    layer.file("bin/busybox", Path(BUSYBOX).read_bytes(), 0o755)
    for applet in busybox_applets():
        if applet in HARD_APPLETS:
            layer.hardlink(f"bin/{applet}", "bin/busybox")
        else:
            layer.symlink(f"bin/{applet}", "busybox")
    layer.file("etc/passwd", "root:x:0:0:root:/root:/bin/sh\nguest:x:1000:1000::/home/guest:/bin/sh\n")
    layer.file("etc/group", "root:x:0:\nguest:x:1000:\n")
    return layer.file("etc/motd", "motd v1\n")


def data_layer() -> Layer:
    return (Layer()
            .dir("data").file("data/keep", "keep v1\n").file("data/gone", "gone\n")
            .dir("data/dir_gone").file("data/dir_gone/inner", "inner\n")
            .dir("opq").file("opq/old1", "old1\n").dir("opq/sub").file("opq/sub/old2", "old2\n")
            .dir("hl").file("hl/a", "linked v1\n").hardlink("hl/b", "hl/a")
            .dir("usr").dir("usr/local").dir("usr/local/bin")
            .file("usr/local/bin/suid", "#!/bin/sh\necho suid\n", 0o4755)
            .dir("home").dir("home/guest", 0o750)
            .file("home/guest/owned", "owned\n", 0o640, uid=1000, gid=1000)
            .dir("xattr", xattrs={"user.dir": "on-a-dir"})
            .file("xattr/file", "xattr\n", xattrs={"user.color": "blue", "user.layer": "2"}))


def changes_layer() -> Layer:
    return (Layer()
            .dir("data").whiteout("data/gone").whiteout("data/dir_gone")
            .dir("opq").opaque("opq").file("opq/new", "new in 3\n")
            .dir("etc").file("etc/motd", "motd v3\n")
            .dir("hl").file("hl/a", "replaced in 3\n")
            .dir("l3").file("l3/x", "pair in 3\n").hardlink("l3/y", "l3/x")
            .dir("xattr", xattrs={"user.dir": "on-a-dir"})
            .file("xattr/l3", "l3\n", xattrs={"user.layer": "3"}))


def top_layer() -> Layer:
    layer = (Layer()
             .dir("data").file("data/gone", "back in 4\n").file("data/keep", "keep v4\n", 0o600)
             .symlink("data/link", "keep").file("data/empty", b"")
             .dir("opq").dir("opq/sub2").file("opq/sub2/f", "sub2\n"))
    parts = LONG.split("/")
    for i in range(1, len(parts)):
        layer.dir("/".join(parts[:i]))
    return layer.file(LONG, "long\n")


def layers() -> list[Layer]:
    return [base_layer(), data_layer(), changes_layer(), top_layer()]


# Reads something from every layer; ls -a shows whiteouts and opaque dirs at work.
CHECK = " ; ".join([
    "cat /etc/motd /data/keep /data/gone /hl/a /hl/b /l3/x /opq/new /opq/sub2/f",
    f"cat /{LONG}",
    "for d in /data /opq /hl /l3; do echo $d: $(ls -a $d); done",
    "test -e /data/dir_gone || echo dir_gone-gone",
    "test -e /opq/old1 || echo old1-gone",
    # link counts of files only: overlayfs reports 1 for a directory merged from layers
    "stat -c '%n %a %u:%g %h' /usr/local/bin/suid /home/guest/owned /data/keep /data/empty "
    "/hl/a /l3/x /l3/y",
    "stat -c '%n %a %u:%g' /home/guest /tmp",
    "test $(stat -c %i /l3/x) = $(stat -c %i /l3/y) && echo l3-linked",
    "test $(stat -c %i /bin/sh) = $(stat -c %i /bin/busybox) && echo sh-linked",
    "readlink /data/link", "readlink /bin/echo",
    "/usr/local/bin/suid",
])
CHECK_OUT = """motd v3
keep v4
back in 4
replaced in 3
linked v1
pair in 3
new in 3
sub2
long
/data: . .. empty gone keep link
/opq: . .. new sub2
/hl: . .. a b
/l3: . .. x y
dir_gone-gone
old1-gone
/usr/local/bin/suid 4755 0:0 1
/home/guest/owned 640 1000:1000 1
/data/keep 600 0:0 1
/data/empty 644 0:0 1
/hl/a 644 0:0 1
/l3/x 644 0:0 2
/l3/y 644 0:0 2
/home/guest 750 0:0
/tmp 1777 0:0
l3-linked
sh-linked
keep
busybox
suid
"""


@dataclass(frozen=True)
class Image:
    path: Path
    ref: str
    diff_ids: list[str]

    @property
    def chain_ids(self) -> list[str]:
        """The committed snapshot names containerd unpacks the layers to (OCI chain IDs)."""
        chain = [self.diff_ids[0]]
        for diff_id in self.diff_ids[1:]:
            chain.append("sha256:" + hashlib.sha256(f"{chain[-1]} {diff_id}".encode()).hexdigest())
        return chain


def docker_save(out: Path, built: list[Layer] | None = None, ref: str = REF,
                extra: list[bytes] = ()) -> Image:
    """Write ``built`` (default: ``layers()``) and then the ready layer tars
    ``extra`` as a docker-save tarball at ``out``."""
    blobs = [layer.tar_bytes() for layer in (built if built is not None else layers())]
    blobs += list(extra)
    diff_ids = ["sha256:" + hashlib.sha256(b).hexdigest() for b in blobs]
    config = json.dumps({
        "architecture": "amd64", "os": "linux", "created": "2023-11-14T22:13:20Z",
        "config": {"Env": ["PATH=/usr/local/bin:/bin"], "Cmd": ["/bin/sh"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": [{"created": "2023-11-14T22:13:20Z", "created_by": f"layer {i}"}
                    for i in range(len(blobs))],
    }, sort_keys=True).encode()
    config_name = hashlib.sha256(config).hexdigest() + ".json"
    layer_names = [f"{d.split(':')[1]}/layer.tar" for d in diff_ids]
    manifest = json.dumps([{"Config": config_name, "RepoTags": [ref],
                            "Layers": layer_names}]).encode()
    with tarfile.open(out, "w") as tar:
        for name, data in [(config_name, config), *zip(layer_names, blobs),
                           ("manifest.json", manifest)]:
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), MTIME, 0o644
            tar.addfile(info, io.BytesIO(data))
    return Image(out, ref, diff_ids)

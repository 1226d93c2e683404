"""``graphdrivers layer ...``: create, remove, mount, list, diff and apply layers.

Mounts across processes: a driver counts mounts per process, and on first
touch it adopts a mount that already exists (count one). So ``layer mount``
leaves the layer mounted when the command exits (the CLI never calls the
driver's cleanup()), and a later ``layer unmount`` in a new process adopts
that mount and really unmounts it. CLI mounts are therefore not counted
against each other: one ``layer unmount`` undoes any number of ``layer mount``.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile

from graphdrivers.cli.common import CliError, NoState, emit_json, open_driver, print_table

_CHUNK = 1 << 20   # copy tars in 1 MiB pieces: constant memory, few syscalls


def add_commands(commands, common: argparse.ArgumentParser) -> None:
    layer = commands.add_parser("layer", help="create, mount, list, diff and apply layers")
    sub = layer.add_subparsers(dest="layer_command", metavar="ACTION", required=True)

    p = sub.add_parser("create", parents=[common], help="create a layer (empty, or on a parent)")
    p.add_argument("id")
    p.add_argument("--parent", "-p", metavar="ID", help="layer to start from")
    p.add_argument("--rw", action="store_true", help="a read-write (container) layer")
    p.add_argument("--storage-opt", dest="layer_opt", metavar="K=V", action="append",
                   default=[], help="per-layer option, e.g. size=10G (repeatable)")
    p.set_defaults(func=cmd_create)

    p = sub.add_parser("rm", aliases=["remove"], parents=[common], help="remove a layer")
    p.add_argument("id")
    p.set_defaults(func=cmd_rm)

    p = sub.add_parser("mount", parents=[common],
                       help="mount a layer and print its root path (stays mounted after exit)")
    p.add_argument("id")
    p.add_argument("--mount-label", default="", help="SELinux mount label")
    p.set_defaults(func=cmd_mount)

    p = sub.add_parser("unmount", aliases=["umount"], parents=[common],
                       help="unmount a layer mounted by 'layer mount'")
    p.add_argument("id")
    p.set_defaults(func=cmd_unmount)

    p = sub.add_parser("ls", aliases=["list"], parents=[common], help="list layers: parent, read-write or not, who holds it mounted")
    p.add_argument("--quiet", "-q", action="store_true", help="ids only")
    p.set_defaults(func=cmd_ls)

    p = sub.add_parser("diff", parents=[common],
                       help="write a layer's changes as an OCI layer tar")
    p.add_argument("id")
    p.add_argument("--parent", "-p", metavar="ID",
                   help="compare against this layer (default: the layer's own parent)")
    p.add_argument("--output", "-o", metavar="FILE",
                   help="write the tar here (default: stdout, never a terminal)")
    p.set_defaults(func=cmd_diff)

    p = sub.add_parser("apply", parents=[common],
                       help="unpack an OCI layer tar into an existing layer")
    p.add_argument("id")
    p.add_argument("file", nargs="?", default="-", metavar="FILE|-",
                   help="the tar (default: stdin)")
    p.add_argument("--parent", "-p", metavar="ID",
                   help="the layer's parent (default: the one it was created on)")
    p.set_defaults(func=cmd_apply)

    p = sub.add_parser("changes", parents=[common],
                       help="list what a layer changed: 'A /added', 'C /changed', 'D /deleted'")
    p.add_argument("id")
    p.add_argument("--parent", "-p", metavar="ID",
                   help="compare against this layer (default: the layer's own parent)")
    p.set_defaults(func=cmd_changes)

    p = sub.add_parser("size", parents=[common],
                       help="bytes a layer adds over its parent (Docker's diff size)")
    p.add_argument("id")
    p.add_argument("--parent", "-p", metavar="ID")
    p.set_defaults(func=cmd_size)

    from graphdrivers.cli import layer_info
    layer_info.add_commands(sub, common)


# -- commands ---------------------------------------------------------------

def cmd_create(args: argparse.Namespace) -> int:
    from graphdrivers.options import parse_key_values
    layer_opt = parse_key_values(args.layer_opt) or None
    driver = open_driver(args, create=True)
    driver.create(args.id, args.parent, rw=args.rw, storage_opt=layer_opt)
    print(args.id)
    return 0


def cmd_rm(args: argparse.Namespace) -> int:
    driver = open_driver(args)
    driver.remove(args.id)
    print(args.id)
    return 0


def cmd_mount(args: argparse.Namespace) -> int:
    driver = open_driver(args)
    path = driver.mount(args.id, args.mount_label)
    # no cleanup(): the mount must outlive this process (see the module doc)
    if args.json:
        emit_json({"id": args.id, "path": str(path)})
    else:
        print(path)
    return 0


def cmd_unmount(args: argparse.Namespace) -> int:
    driver = open_driver(args)
    driver.unmount(args.id)
    print(args.id)
    return 0


def cmd_ls(args: argparse.Namespace) -> int:
    try:
        driver = open_driver(args)
    except NoState as exc:   # no store is an empty list; the note catches a mistyped home
        rows = []
        sys.stderr.write(f"graphdrivers: note: {exc}\n")
    else:
        rows = driver.infos()
    if args.json:
        emit_json(rows)
    elif args.quiet:
        for row in rows:
            print(row["id"])
    else:
        print_table([[r["id"], r["parent"] or "-", "rw" if r["rw"] else "ro",
                      r["mounted_by"] or "-"] for r in rows],
                    ["ID", "PARENT", "MODE", "MOUNTED"])
    return 0


def cmd_diff(args: argparse.Namespace) -> int:
    to_stdout = args.output in (None, "-")
    if to_stdout and sys.stdout.isatty():
        raise CliError("refusing to write a tar to a terminal; redirect stdout or use -o FILE")
    driver = open_driver(args)
    stream = driver.diff(args.id, args.parent)
    from graphdrivers.cli.progress import Progress
    with Progress(f"diff {args.id}") as progress:
        try:
            if to_stdout:
                sys.stdout.flush()
                _copy(stream, sys.stdout.buffer, progress)
                sys.stdout.buffer.flush()
            else:
                _write_file_atomically(args.output, stream, progress)
        finally:
            stream.close()   # a driver's on_close may unmount what diff mounted
    return 0


def cmd_apply(args: argparse.Namespace) -> int:
    from graphdrivers.options import format_size
    from graphdrivers.cli.progress import Progress, ProgressReader
    if args.file == "-":
        if sys.stdin.isatty():
            raise CliError("refusing to read a tar from a terminal; pipe one in or give FILE")
        source, total = sys.stdin.buffer, None
    else:
        source = open(args.file, "rb")
        total = _regular_size(source.fileno())
    try:
        driver = open_driver(args)
        parent = args.parent if args.parent is not None else _own_parent(driver, args.id)
        with Progress(f"apply {args.id}", total) as progress:
            reader = ProgressReader(source, progress)
            size = driver.apply_diff(args.id, parent, reader)
    finally:
        if source is not sys.stdin.buffer:
            source.close()
    if args.json:
        emit_json({"id": args.id, "size": size})
    else:
        print(f"{args.id}: unpacked {size} bytes ({format_size(size)})")
    return 0


def cmd_changes(args: argparse.Namespace) -> int:
    driver = open_driver(args)
    changes = driver.changes(args.id, args.parent)
    if args.json:
        emit_json([{"path": c.path, "kind": c.kind.name.lower()} for c in changes])
    else:
        for change in changes:
            print(change)
    return 0


def cmd_size(args: argparse.Namespace) -> int:
    from graphdrivers.options import format_size
    driver = open_driver(args)
    size = driver.diff_size(args.id, args.parent)
    if args.json:
        emit_json({"id": args.id, "size": size})
    else:
        print(f"{size}\t{format_size(size)}")
    return 0


# -- helpers ----------------------------------------------------------------

def _own_parent(driver, layer_id: str) -> str | None:
    """The layer's real parent, so a driver can take its native (fast) apply path."""
    try:
        return driver.parent(layer_id)
    except NotImplementedError:
        return None


def _copy(source, target, progress) -> None:
    while True:
        chunk = source.read(_CHUNK)
        if not chunk:
            return
        target.write(chunk)
        progress.update(len(chunk))


def _write_file_atomically(path: str, stream, progress) -> None:
    """A failed diff leaves no half tar that looks like a good one."""
    directory = os.path.dirname(os.path.abspath(path))
    try:
        fd, temp = tempfile.mkstemp(prefix=".graphdrivers-diff-", dir=directory)
    except OSError as exc:   # name the user's path, not our temporary one
        raise OSError(exc.errno, exc.strerror, path) from None
    try:
        with os.fdopen(fd, "wb") as target:
            _copy(stream, target, progress)
            target.flush()
            os.fsync(target.fileno())
        os.chmod(temp, 0o644 & ~_umask())
        os.replace(temp, path)
    except BaseException:
        try:
            os.unlink(temp)
        except FileNotFoundError:
            pass
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _regular_size(fd: int) -> int | None:
    import stat
    st = os.fstat(fd)
    return st.st_size if stat.S_ISREG(st.st_mode) else None


"""Copying a whole tree with everything a layer carries (vfs' snapshot).

Regular files are cloned with FICLONE where the filesystem shares extents
(btrfs, xfs with reflink), else copied in the kernel with copy_file_range.
Kept: type, mode incl. setuid/setgid/sticky, owner, mtime and atime to the
nanosecond (changes compares mtimes exactly), xattrs, symlinks, device nodes,
fifos, sockets, and hard links within the tree.
"""
from __future__ import annotations

import errno
import os
import stat

from graphdrivers.kernel.reflink import clone_file

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class _Copier:
    def __init__(self, dst_root: str):
        self.dst_root = dst_root
        self.links: dict[tuple[int, int], str] = {}
        self.clone = True
        self.copy_range = True
        self.counts = {"reflink": 0, "copy_file_range": 0, "read_write": 0}
        self.is_root = os.geteuid() == 0

    def _data(self, sfd: int, dfd: int, size: int) -> None:
        if not size:
            return
        if self.clone:
            if clone_file(sfd, dfd):
                self.counts["reflink"] += 1
                return
            self.clone = False               # one refusal is enough to know
        left = size
        if self.copy_range:
            try:
                while left > 0:
                    n = os.copy_file_range(sfd, dfd, min(left, 1 << 30))
                    if n == 0:
                        break
                    left -= n
                self.counts["copy_file_range"] += 1
                return
            except OSError as exc:
                if exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL):
                    raise
                self.copy_range = False
        self.counts["read_write"] += 1
        while True:
            data = os.read(sfd, 1 << 20)
            if not data:
                break
            os.write(dfd, data)

    def _xattrs(self, src: int | str, dst: int | str) -> None:
        nofollow = not isinstance(src, int)        # fds take no follow_symlinks
        try:
            names = os.listxattr(src, follow_symlinks=not nofollow)
        except OSError as exc:
            if exc.errno == errno.ENOTSUP:
                return
            raise
        for name in names:
            try:
                value = os.getxattr(src, name, follow_symlinks=not nofollow)
                os.setxattr(dst, name, value, follow_symlinks=not nofollow)
            except OSError as exc:
                if exc.errno not in (errno.ENOTSUP, errno.EPERM, errno.ENODATA):
                    raise

    def _owner_mode(self, st: os.stat_result, fd: int) -> None:
        if self.is_root:
            os.fchown(fd, st.st_uid, st.st_gid)
        os.fchmod(fd, stat.S_IMODE(st.st_mode))     # after chown: chown drops setuid

    def copy_dir(self, sfd: int, dfd: int, rel: str) -> None:
        with os.scandir(sfd) as it:
            names = [e.name for e in it]
        for name in names:
            st = os.stat(name, dir_fd=sfd, follow_symlinks=False)
            child_rel = f"{rel}/{name}" if rel else name
            mode = st.st_mode
            if not stat.S_ISDIR(mode) and st.st_nlink > 1:
                key = (st.st_dev, st.st_ino)
                first = self.links.get(key)
                if first is not None:
                    os.link(os.path.join(self.dst_root, first), name, dst_dir_fd=dfd,
                            follow_symlinks=False)
                    continue
                self.links[key] = child_rel
            if stat.S_ISREG(mode):
                self._file(sfd, dfd, name, st)
            elif stat.S_ISDIR(mode):
                os.mkdir(name, 0o700, dir_fd=dfd)
                csfd = os.open(name, _DIR_FLAGS, dir_fd=sfd)
                try:
                    cdfd = os.open(name, _DIR_FLAGS, dir_fd=dfd)
                    try:
                        self.copy_dir(csfd, cdfd, child_rel)
                        self.attrs_dir(csfd, cdfd, st)
                    finally:
                        os.close(cdfd)
                finally:
                    os.close(csfd)
            elif stat.S_ISLNK(mode):
                os.symlink(os.readlink(name, dir_fd=sfd), name, dir_fd=dfd)
                self._path_attrs(sfd, dfd, name, st, symlink=True)
            else:                                   # char/block devices, fifos, sockets
                os.mknod(name, stat.S_IFMT(mode) | 0o600, st.st_rdev, dir_fd=dfd)
                self._path_attrs(sfd, dfd, name, st, symlink=False)

    def _file(self, sfd: int, dfd: int, name: str, st: os.stat_result) -> None:
        src = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=sfd)
        try:
            dst = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW |
                          os.O_CLOEXEC, 0o600, dir_fd=dfd)
            try:
                self._data(src, dst, st.st_size)
                self._owner_mode(st, dst)
                self._xattrs(src, dst)
                os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns))
            finally:
                os.close(dst)
        finally:
            os.close(src)

    def _path_attrs(self, sfd: int, dfd: int, name: str, st: os.stat_result,
                    symlink: bool) -> None:
        if self.is_root:
            os.chown(name, st.st_uid, st.st_gid, dir_fd=dfd, follow_symlinks=False)
        if not symlink:
            os.chmod(name, stat.S_IMODE(st.st_mode), dir_fd=dfd)  # created just now: no symlink
        self._xattrs(f"/proc/self/fd/{sfd}/{name}", f"/proc/self/fd/{dfd}/{name}")
        os.utime(name, ns=(st.st_atime_ns, st.st_mtime_ns), dir_fd=dfd, follow_symlinks=False)

    def attrs_dir(self, sfd: int, dfd: int, st: os.stat_result) -> None:
        self._owner_mode(st, dfd)
        self._xattrs(sfd, dfd)
        os.utime(dfd, ns=(st.st_atime_ns, st.st_mtime_ns))   # last: children changed it


def copy_tree(src: str | os.PathLike, dst: str | os.PathLike) -> dict[str, int]:
    """Copy the contents and the root attributes of ``src`` into the existing ``dst``.

    Returns how many non-empty files went by each method (reflink,
    copy_file_range, read_write).
    """
    sfd = os.open(src, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        dfd = os.open(dst, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            copier = _Copier(os.fspath(dst))
            copier.copy_dir(sfd, dfd, "")
            copier.attrs_dir(sfd, dfd, os.fstat(sfd))
            return copier.counts
        finally:
            os.close(dfd)
    finally:
        os.close(sfd)

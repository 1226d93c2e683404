"""A durable JSON-lines log with an in-memory state, shared by the processes on a home.

The mechanism under the layer store (layers.py) and the snapshotter's records
(snapshots.py); each subclass says what a line means (``_apply``) and what lines
describe its whole state (``_state_lines``), this class keeps the file:

    {"v": 1}          header (written by every full rewrite)
    {...}             one change per line, in order

A change is one line appended and fdatasync'ed (one flush). Several lines given to
one ``_commit`` go in one write; a line is the unit of atomicity, so a change that
must be all or nothing is one line. The flush happens after the writer lets go of
the locks, and is shared (group commit): while one thread's fdatasync runs, others
append, and the next fdatasync covers all of them, so parallel creates do not queue
behind each other's flushes. A change returns only once a flush covered its line; if
that flush fails, the change is undone by the lines its writer gave for that
(``undo``) and the caller gets the error. When the log holds many more lines than live
records, the next change rewrites it whole instead (write-temp, fsync, rename, fsync
dir). A crash inside an append leaves a torn last line: readers ignore it, the next
writer cuts it off. Space for appends is reserved ahead (fallocate), so a remove
still gets its line written on a full disk.

Across processes: a writer holds flock(``<lock>``) only around its read-modify-write
(``_locked`` + ``_refresh`` + ``_commit``). Readers take no lock: one stat per look
tells whether another process changed the file (inode, mtime, size); then they read
what was appended, or the whole file when it was replaced.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import threading
from typing import Callable, Iterable, Iterator

from graphdrivers.errors import DriverError, from_os_error
from graphdrivers.kernel.fallocate import reserve
from graphdrivers.store.atomicfile import remove_stale_temps, write_atomic

VERSION = 1
_SLACK = 64 << 10          # bytes reserved past the end for appends
_COMPACT_MIN = 256         # never rewrite a log shorter than this many lines


def _encode(lines: Iterable[dict]) -> bytes:
    return b"".join(json.dumps(line, sort_keys=True).encode() + b"\n" for line in lines)


class JournalState:
    """A state kept in ``<home>/<log>``; subclasses define the meaning of its lines."""

    WHAT = "records"           # for messages: "the layer records <path> are damaged"

    def __init__(self, home: str | os.PathLike, log: str, lock: str,
                 initial: Callable[[], Iterable[dict]] = tuple):
        """Open (or create, with the lines ``initial()`` gives) the log ``log`` in ``home``."""
        self.home = os.fspath(home)
        self._log = os.path.join(self.home, log)
        self._lockfile = os.path.join(self.home, lock)
        self._mutex = threading.RLock()       # flock does not exclude threads of one process
        self._seen: tuple[int, int] | None = None   # (inode, bytes parsed)
        self._lines = 0
        # one fdatasync at a time; the others wait for it on the condition and, woken by
        # its end, return if it covered their append (a plain lock would let the thread
        # that just flushed take it again first, and the covered waiters sit through
        # that next flush too, never appending meanwhile: no sharing)
        self._flush_done = threading.Condition(threading.Lock())
        self._flush_running = False
        self._durable = (0, 0)                      # (inode, bytes) known flushed
        self._pending = threading.local()           # this thread's lock depth and append to flush
        with self._locked():
            # nobody writes while we hold the flock: a temp file now is a dead writer's
            remove_stale_temps(self.home, prefix=f".{log}.tmp-")
            if not os.path.exists(self._log):
                self._reset()
                self._rewrite(list(initial()))
            self._refresh()

    # -- what a subclass defines ---------------------------------------------
    def _clear(self) -> None:
        """Forget the in-memory state (the file is read again from its start)."""
        raise NotImplementedError

    def _apply(self, line: dict) -> None:
        """Apply one line to the in-memory state; raise KeyError/TypeError/ValueError if
        it is malformed."""
        raise NotImplementedError

    def _state_lines(self) -> list[dict]:
        """Lines that rebuild the present state from nothing (for a rewrite)."""
        raise NotImplementedError

    def _count(self) -> int:
        """How many records the state holds (a rewrite pays when lines exceed twice that)."""
        return len(self._state_lines())

    # -- for subclasses ----------------------------------------------------------
    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """This process's mutex, then the home's flock (opened per use: a forked child
        must not share the lock with its parent); after both are released, the flush of
        what this thread appended."""
        mine = self._pending
        mine.depth = getattr(mine, "depth", 0) + 1
        try:
            with self._mutex:
                fd = os.open(self._lockfile, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX)
                    yield
                finally:
                    os.close(fd)
        finally:
            mine.depth -= 1
            pending = getattr(mine, "write", None)
            if pending is not None and mine.depth == 0:      # the outermost exit
                mine.write = None
                self._make_durable(*pending)

    def _make_durable(self, inode: int, end: int, undo: list[dict] | None) -> None:
        """Return once a flush covered the log up to ``end`` (this thread's append),
        joining the fdatasync another thread may be running, or starting the next one."""
        try:
            with self._flush_done:
                while self._durable[0] != inode or self._durable[1] < end:
                    if not self._flush_running:
                        self._flush_running = True
                        break
                    self._flush_done.wait()
                else:
                    return                      # a flush that started after our append
            try:
                self._flush(inode)
            finally:
                with self._flush_done:
                    self._flush_running = False
                    self._flush_done.notify_all()
        except OSError as exc:
            outcome = "the change was undone"
            if undo:
                try:
                    with self._locked():
                        self._refresh()
                        self._commit(undo)
                except Exception:           # noqa: BLE001  (the disk that failed the flush)
                    outcome = ("undoing it failed too: load the home again once the disk "
                               "is healthy (what is on disk is the store's truth)")
            raise DriverError(f"the {self.WHAT} {self._log} could not be flushed to disk "
                              f"({exc.strerror or exc}); {outcome}; the disk or "
                              "its filesystem is failing (check the kernel log)") from exc

    def _flush(self, inode: int) -> None:
        """fdatasync the log (if it is still file ``inode``) and record what it covered."""
        try:
            fd = os.open(self._log, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return                              # replaced meanwhile: see below
        try:
            st = os.fstat(fd)
            if st.st_ino != inode:
                return                          # a rewrite replaced it, flushing what it kept
            os.fdatasync(fd)
            with self._flush_done:
                self._durable = (inode, st.st_size)
        finally:
            os.close(fd)

    @contextlib.contextmanager
    def _current(self) -> Iterator[None]:
        """Read access: the mutex, after catching up with the file."""
        with self._mutex:
            self._refresh()
            yield

    def _refresh(self) -> None:
        """Catch up with the file, if anyone changed it since we last looked (one stat).
        A failing disk is a DriverError here, as everywhere (errors.from_os_error)."""
        try:
            self._catch_up()
        except OSError as exc:
            raise from_os_error(exc, f"read the {self.WHAT} {self._log}") from exc

    def _catch_up(self) -> None:
        try:
            st = os.stat(self._log)
        except FileNotFoundError:
            if self._seen is not None:      # nobody deletes it; a restored backup may
                self._reset()
            return
        if self._seen is not None and self._seen[0] == st.st_ino:
            if st.st_size == self._seen[1]:
                return
            if st.st_size > self._seen[1]:
                self._read(st.st_ino, self._seen[1])
                return
        self._reset()
        self._read(st.st_ino, 0)

    def _commit(self, lines: list[dict], undo: list[dict] | None = None) -> None:
        """Write ``lines`` (under the flock, after _refresh): appended, or a fresh file.
        An append is flushed when the thread leaves ``_locked``; ``undo``: the lines that
        take the change back if that flush fails."""
        try:
            self._write(lines, undo)
        except OSError as exc:
            raise from_os_error(exc, f"write the {self.WHAT} {self._log}") from exc

    def _write(self, lines: list[dict], undo: list[dict] | None) -> None:
        if self._lines >= _COMPACT_MIN and self._lines > 2 * self._count():
            for line in lines:
                self._apply_counted(line)
            try:
                self._rewrite(self._state_lines())
            except BaseException:
                self._reset()           # the next look rereads what the disk has
                raise
            return
        data = _encode(lines)
        fd = os.open(self._log, os.O_WRONLY | os.O_CLOEXEC)
        try:
            st = os.fstat(fd)
            end = self._seen[1] if self._seen else st.st_size
            if st.st_size != end:           # a writer died inside its append
                os.ftruncate(fd, end)
            view = memoryview(data)
            offset = end
            while view:
                n = os.pwrite(fd, view, offset)
                view, offset = view[n:], offset + n
            if st.st_blocks * 512 < offset + _SLACK // 4:
                reserve(fd, offset + _SLACK)
        except BaseException:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, end)       # leave no half line of ours behind
            raise
        finally:
            os.close(fd)
        for line in lines:
            self._apply_counted(line)
        self._seen = (st.st_ino, offset)
        earlier = getattr(self._pending, "write", None)
        self._pending.write = (st.st_ino, offset, (undo or []) + (earlier[2] if earlier else []))

    # -- the file ------------------------------------------------------------------
    def _reset(self) -> None:
        self._clear()
        self._seen = None
        self._lines = 0

    def _apply_counted(self, line: dict) -> None:
        self._lines += 1
        if "v" not in line:
            self._apply(line)

    def _read(self, inode: int, offset: int) -> None:
        with open(self._log, "rb") as f:
            if os.fstat(f.fileno()).st_ino != inode:    # replaced between stat and open
                self._reset()
                inode, offset = os.fstat(f.fileno()).st_ino, 0
            f.seek(offset)
            data = f.read()
        end = data.rfind(b"\n") + 1        # a torn last line is not a record (yet)
        for number, raw in enumerate(data[:end].splitlines(), 1):
            if raw.strip():
                try:
                    self._apply_counted(json.loads(raw))
                except (ValueError, KeyError, TypeError, AttributeError) as exc:
                    raise DriverError(
                        f"the {self.WHAT} {self._log} are damaged after byte {offset} "
                        f"(line {number} of the unread part: {exc}); restore the file from a "
                        "backup or remove the home") from None
        self._seen = (inode, offset + end)

    def _rewrite(self, lines: list[dict]) -> None:
        data = _encode([{"v": VERSION}] + lines)
        write_atomic(self._log, data, mode=0o600, reserve=len(data) + _SLACK)
        self._reset()
        self._read(os.stat(self._log).st_ino, 0)

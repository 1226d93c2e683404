"""Errors every driver raises. Messages say what went wrong and what to do."""
import errno



class DriverError(Exception):
    """Base of every error a driver raises on purpose."""


class NotSupported(DriverError):
    """The driver cannot run on this machine or this backing filesystem."""


class InvalidOption(DriverError):
    """An unknown or malformed storage option."""


class InvalidLayerId(DriverError):
    """A layer id that does not match [A-Za-z0-9][A-Za-z0-9_.-]{0,127}."""


class LayerNotFound(DriverError):
    """The layer (or the parent named) does not exist."""


class LayerExists(DriverError):
    """A layer with this id already exists."""


class LayerInUse(DriverError):
    """The layer is mounted or has children and cannot be removed now."""


class NoSpace(DriverError):
    """The backing store, quota or pool has no room for the operation."""


class CorruptArchive(DriverError):
    """A layer tar is truncated, malformed or tries to write outside the layer."""


def from_os_error(exc: OSError, doing: str) -> DriverError:
    """The one translation of an OSError into the error a caller gets: a full disk or
    quota (ENOSPC, EDQUOT) is NoSpace, a failing disk (EIO) a DriverError that says so,
    anything else a DriverError naming what failed.
    ``doing`` completes "cannot ..." / "no space to ...": "create layer abc"."""
    reason = exc.strerror or str(exc)
    if exc.filename:
        reason += f" ({exc.filename})"
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return NoSpace(f"no space to {doing}: {reason}; free space on the backing store "
                       "or raise the size limit")
    if exc.errno == errno.EIO:
        return DriverError(f"cannot {doing}: an I/O error ({reason}); the disk or its "
                           "filesystem failed, see the kernel log")
    return DriverError(f"cannot {doing}: {reason}")


class InvalidRequest(DriverError):
    """A request that is malformed: a missing name, an unknown field, a bad filter."""


class WrongState(DriverError):
    """The object exists but is not in the state the operation needs (commit of a view)."""


class LimitExceeded(DriverError):
    """A request past a fixed limit of the kernel or the engine (mount options, depth)."""

"""Errors every driver raises. Messages say what went wrong and what to do."""


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

"""graphdrivers: storage (graph) drivers for container engines."""
from .driver import Change, ChangeKind, Driver
from .errors import (DriverError, InvalidLayerId, InvalidOption, LayerExists, LayerInUse,
                     LayerNotFound, NoSpace, NotSupported)
from .registry import available, describe, load

__all__ = ["available", "describe", "load", "Driver", "Change", "ChangeKind", "DriverError",
           "NotSupported", "InvalidOption", "InvalidLayerId", "LayerNotFound", "LayerExists",
           "LayerInUse", "NoSpace"]

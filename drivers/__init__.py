"""graphdrivers: storage (graph) drivers for container engines."""
__version__ = "0.1.0"   # the one place: setup.cfg reads it (attr:), the CLI prints it

import logging as _logging

# a library's records reach only the handlers its user configures (see logs.py)
_logging.getLogger("graphdrivers").addHandler(_logging.NullHandler())

from .driver import Change, ChangeKind, Driver
from .errors import (DriverError, InvalidLayerId, InvalidOption, LayerExists, LayerInUse,
                     LayerNotFound, NoSpace, NotSupported)
from .registry import available, describe, load

__all__ = ["available", "describe", "load", "Driver", "Change", "ChangeKind", "DriverError",
           "NotSupported", "InvalidOption", "InvalidLayerId", "LayerNotFound", "LayerExists",
           "LayerInUse", "NoSpace"]

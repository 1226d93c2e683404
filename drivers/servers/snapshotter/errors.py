"""The one mapping of the framework's errors to the gRPC status codes containerd reads.

containerd turns NotFound, AlreadyExists, FailedPrecondition and InvalidArgument into
its own error kinds (errdefs); the message reaches the operator (``ctr`` prints it).
The most specific class wins (the MRO is searched in order).
"""
from __future__ import annotations

import grpc

from graphdrivers.errors import (CorruptArchive, DriverError, InvalidLayerId, InvalidOption,
                                 InvalidRequest, LayerExists, LayerInUse, LayerNotFound,
                                 LimitExceeded, NoSpace, NotSupported, WrongState)

CODES: dict[type, grpc.StatusCode] = {
    LayerNotFound: grpc.StatusCode.NOT_FOUND,
    LayerExists: grpc.StatusCode.ALREADY_EXISTS,
    LayerInUse: grpc.StatusCode.FAILED_PRECONDITION,
    WrongState: grpc.StatusCode.FAILED_PRECONDITION,
    LimitExceeded: grpc.StatusCode.FAILED_PRECONDITION,
    InvalidRequest: grpc.StatusCode.INVALID_ARGUMENT,
    InvalidOption: grpc.StatusCode.INVALID_ARGUMENT,
    InvalidLayerId: grpc.StatusCode.INVALID_ARGUMENT,
    CorruptArchive: grpc.StatusCode.INVALID_ARGUMENT,
    NoSpace: grpc.StatusCode.RESOURCE_EXHAUSTED,
    NotSupported: grpc.StatusCode.FAILED_PRECONDITION,
    DriverError: grpc.StatusCode.UNKNOWN,
}


def code_of(exc: BaseException) -> grpc.StatusCode:
    for cls in type(exc).__mro__:
        if cls in CODES:
            return CODES[cls]
    return grpc.StatusCode.INTERNAL

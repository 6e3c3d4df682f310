"""The one table that maps our exceptions to gRPC status codes."""

from __future__ import annotations

import grpc

from lipsync_service import errors

STATUS_TABLE: dict[type[errors.LipsyncError], grpc.StatusCode] = {
    errors.InvalidInput: grpc.StatusCode.INVALID_ARGUMENT,
    errors.ResourceExhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.InputTimeout: grpc.StatusCode.DEADLINE_EXCEEDED,
    errors.OutputStalled: grpc.StatusCode.DEADLINE_EXCEEDED,
    errors.InferenceUnavailable: grpc.StatusCode.UNAVAILABLE,
    errors.Unavailable: grpc.StatusCode.UNAVAILABLE,
    errors.InferenceError: grpc.StatusCode.INTERNAL,
    errors.Cancelled: grpc.StatusCode.CANCELLED,
    errors.InternalError: grpc.StatusCode.INTERNAL,
}


def status_for(exc: BaseException) -> grpc.StatusCode:
    """Status code for an exception: the most specific table entry, else INTERNAL."""
    for cls in type(exc).__mro__:
        if cls in STATUS_TABLE:
            return STATUS_TABLE[cls]
    return grpc.StatusCode.INTERNAL

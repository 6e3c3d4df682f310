"""Our exceptions. Edges (gRPC, PyAV, Triton, ONNX Runtime) translate theirs into these.

The mapping to gRPC status codes lives in one table, `lipsync_service.server.status`.
"""

from __future__ import annotations


class LipsyncError(Exception):
    """Base of every error the service reports to a client; the message is shown to a person."""


class InvalidInput(LipsyncError):
    """Bad config, unsupported codec, malformed media or speaker data."""


class ResourceExhausted(LipsyncError):
    """All concurrency slots busy past the admission timeout, or an input over a size limit."""


class InputTimeout(LipsyncError):
    """The client stopped sending for longer than the input timeout."""


class OutputStalled(LipsyncError):
    """The client stopped reading the responses for longer than the output stall timeout."""


class Unavailable(LipsyncError):
    """The service is draining, or a dependency (the inference server) cannot be reached."""


class InferenceUnavailable(Unavailable):
    """The inference backend is unreachable or not ready."""


class InferenceError(LipsyncError):
    """The inference backend answered with an error for a well-formed request."""


class Cancelled(LipsyncError):
    """The client went away; work stops and resources are released."""


class InternalError(LipsyncError):
    """A bug or an unexpected failure inside the service."""

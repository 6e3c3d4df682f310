"""Our exceptions. Edges (gRPC, PyAV, Triton, ONNX Runtime) translate theirs into these.

The mapping to gRPC status codes lives in one table, `lipsync_service.server.status`.
"""

from __future__ import annotations

import logging
import re
import traceback
from typing import ClassVar

log = logging.getLogger(__name__)

#: What a server file-system path becomes in a text a client sees.
SERVER_PATH = "<server path>"
# An absolute POSIX path: a quoted one (it may hold spaces); a gRPC unix socket target ("unix:/path",
# "unix:///path"); or a "/" that follows no word character, ".", ":" or "/" (so "1/25", "I/O", "./x" and URLs
# stay as they are), then the path's characters, a final "." (end of a sentence) left out.
_QUOTED_PATH = re.compile(r"""(?P<q>['"])/[^'"]*(?P=q)""")
_EXCLUDED = r"\s'\"`,;:()\[\]{}<>"
_UNIX_TARGET = re.compile(rf"\bunix:(?://)?/[^{_EXCLUDED}]*[^{_EXCLUDED}.]")
_PATH = re.compile(rf"(?<![\w.:/])/[^{_EXCLUDED}]*[^{_EXCLUDED}.]")


def without_paths(text: str) -> str:
    """`text` with every absolute file-system path replaced by SERVER_PATH (for what a client sees)."""
    text = _QUOTED_PATH.sub(lambda m: f"{m['q']}{SERVER_PATH}{m['q']}", text)
    text = _UNIX_TARGET.sub(f"unix:{SERVER_PATH}", text)
    return _PATH.sub(SERVER_PATH, text)


def release_frames(exc: BaseException | None) -> None:
    """Drop the local variables of every finished frame in `exc`'s traceback, its cause's and its context's.

    An exception kept past its handler (handed from a worker thread to the event loop, stored to be raised again)
    keeps every frame it passed through alive, and with them every local: the job, its decoder's and encoder's
    threads and buffers, its processor's networks, the call's speaker data. Those frames usually reach the object
    that keeps the exception, a cycle only Python's garbage collector breaks, and it runs rarely. The traceback
    still prints (file, line, function); only the locals go. Frames still running are left as they are, and a
    cleared frame still holds the function it ran: code that may fail while a server call's data is at hand runs
    in methods, not closures over that data.
    """
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        traceback.clear_frames(exc.__traceback__)
        if exc.__cause__ is not None and id(exc.__cause__) not in seen:
            release_frames(exc.__cause__)
        exc = exc.__context__


class LipsyncError(Exception):
    """Base of every error the service reports to a client; the message is shown to a person.

    Classes whose errors are about the server's own disk or installation (`hides_server_paths`) never carry
    a server path to the client: such a path in the message is replaced by SERVER_PATH, and the full text is
    logged (WARNING, with the call's request id) when the error is created and kept in `detail`.
    """

    #: The message may name the server's own files (spool directory, temporary files, installed models).
    hides_server_paths: ClassVar[bool] = False

    def __init__(self, *args: object) -> None:
        detail = args[0] if args and isinstance(args[0], str) else ""
        #: The full message, server paths included (the server log's text).
        self.detail = detail
        if self.hides_server_paths and detail:
            public = without_paths(detail)
            if public != detail:
                log.warning("%s: %s", type(self).__name__, detail)
                args = (public, *args[1:])
        super().__init__(*args)


class InvalidInput(LipsyncError):
    """Bad config, unsupported codec, malformed media or speaker data."""


class ResourceExhausted(LipsyncError):
    """All concurrency slots busy past the admission timeout, or an input over a size limit."""

    hides_server_paths = True  # e.g. a spool directory that cannot be written


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

    hides_server_paths = True  # e.g. an installed model file, a temporary file named in an FFmpeg error

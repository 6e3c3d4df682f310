"""What PyAV raises on corrupt or hostile media, and the short cause our error messages quote."""

from __future__ import annotations

import av

from lipsync_service.media.types import Readable

# Besides its own errors, PyAV raises these on bad input: metadata that is not text, absurd sizes and counts.
# The demuxers translate them into InvalidInput naming the input where they enter.
PYAV_ERRORS = (av.error.FFmpegError, OSError, EOFError, ValueError, OverflowError, MemoryError)


def reason(exc: BaseException) -> str:
    """A short cause for an error message, without file names (a spooled upload's path means nothing to a client)."""
    if isinstance(exc, MemoryError):
        return "it declares sizes too large to allocate"
    if isinstance(exc, (av.error.FFmpegError, OSError)) and exc.strerror:
        return str(exc.strerror)
    return str(exc) or type(exc).__name__


class GuardedSource:
    """A file-like handed to PyAV whose read never raises into FFmpeg: the source's error is kept, FFmpeg sees the
    end of the input, and the caller raises the kept error (`raise_error`) once PyAV returns or fails.

    PyAV parks an exception raised in its read callback until its next error check, but FFmpeg often reads again
    first (probing, resyncing); PyAV then prints the first exception's traceback to stderr ("PyAV library exception
    being dropped") and keeps the second. A call that ended (the upload aborted with Cancelled) or an input refused
    on its first bytes would log a traceback for an outcome the client caused.
    """

    def __init__(self, source: Readable) -> None:
        """Args:
            source: the input (a ByteStream, a file, a reader wrapping one).
        """
        self._source = source
        #: The first exception the source raised, None while it has raised none.
        self.error: BaseException | None = None

    def read(self, n: int = -1) -> bytes:
        if self.error is not None:
            return b""
        try:
            return self._source.read(n)
        except BaseException as exc:  # noqa: BLE001 - kept for the caller, who raises it outside FFmpeg
            self.error = exc
            return b""

    def raise_error(self) -> None:
        """Raise what the source raised, if anything (call it after each PyAV call and in its except clauses)."""
        if self.error is not None:
            raise self.error

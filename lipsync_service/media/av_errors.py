"""What PyAV raises on corrupt or hostile media, and the short cause our error messages quote."""

from __future__ import annotations

import av

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

"""Give memory a finished call no longer uses back to the operating system.

glibc's malloc keeps memory a thread freed in that thread's arena for reuse, and returns to the system only what
lies at an arena's top. Each call runs its decoders, encoder, networks and numpy work on threads of its own, so
after a few hundred calls the arenas hold hundreds of MB that nothing uses (measured on the fuzz campaign: 27 MB in
use, 223 MB free in the arenas, RSS twice the warm baseline). malloc_trim(0) hands every free page back. It walks
every arena (a few ms, up to ~40 ms after hundreds of calls), so it runs off the event loop, when the server
goes idle, and at most once per interval while it stays busy.

Fewer arenas leave less stranded: glibc makes up to 8 per core, one per thread that allocates while the others
are in use, and memory freed in one is not reused by threads on another. `limit_arenas` caps them at start-up
(NV_AI4M_MALLOC_ARENA_MAX, 2 by default; measured over 150 fuzz calls: RSS 1.05 of its warm baseline with 2
arenas, 1.29 with glibc's default, both trimmed as above).

Python's own small-object allocator (pymalloc) returns a 1 MiB arena to the system only once every object in it
is gone. A call that makes hundreds of thousands of small objects (speaker data for every frame of a long video,
sent before it) spreads them over a hundred arenas, and the few objects that outlive the call (free lists, caches)
keep many of those arenas: measured with sys._debugmallocstats over six such calls, 26 arenas became 99 while
the bytes in use stayed at 26 MB. `serve` therefore runs with PYTHONMALLOC=malloc (NV_AI4M_PYTHON_ALLOCATOR):
Python's objects come from the C heap, which the trim below returns page by page (the same calls: RSS 1.08 of
the warm baseline, 1.46 with pymalloc; lip-sync of a 5 s clip 2-4 % slower).

A failed call also leaves objects that refer to each other (gRPC keeps the aborting exception, whose frames hold
the call's session), which only Python's cycle collector frees, and it looks at old objects seldom: after 100
fuzz calls 150,000 such objects held 25 MB. When the server goes idle, a full collection runs before the trim
(0.1-0.3 s, with no call waiting on it).
"""

from __future__ import annotations

import ctypes
import gc
import logging
import os
import sys
import threading
import time
from collections.abc import Callable

log = logging.getLogger(__name__)


def use_malloc_for_python(wanted: str, current: str) -> None:
    """Restart this process (same pid, same command line) with PYTHONMALLOC=malloc when `wanted` is "malloc" and
    the interpreter was not started so: the allocator is chosen before the first object exists.

    Args:
        wanted: settings.python_allocator.
        current: settings.pythonmalloc, the variable this process was started with.
    """
    if wanted != "malloc" or current == "malloc":
        return
    os.environ["PYTHONMALLOC"] = "malloc"
    os.execv(sys.executable, [sys.executable, *sys.orig_argv[1:]])


# mallopt's parameter number for the arena limit (glibc's malloc.h).
_M_ARENA_MAX = -8


def limit_arenas(count: int) -> bool:
    """Cap glibc's malloc arenas at `count` (0 leaves glibc's default); call it before the server's threads start.

    Returns:
        True when the cap was set (False on other C libraries, or for 0).
    """
    if count <= 0:
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(_M_ARENA_MAX, count))


def _find_malloc_trim() -> Callable[[int], int] | None:
    """glibc's malloc_trim, or None where the C library has none (musl, macOS)."""
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


class HeapTrimmer:
    """After a call ends: when the server is idle, collects cycles and trims the C heap; while it is busy, trims at
    most once per `interval_s`."""

    def __init__(self, trim: Callable[[int], int] | None = None) -> None:
        """Args:
            trim: the trimming function (glibc's malloc_trim when None; none at all on other C libraries).
        """
        self._trim = trim if trim is not None else _find_malloc_trim()
        self._lock = threading.Lock()
        self._last = 0.0
        self.trims = 0

    def due(self, *, idle: bool, interval_s: float) -> bool:
        """A call has ended: whether to trim now (and if so, the time of this trim is taken as the last).

        Args:
            idle: no call holds a processing slot any more.
            interval_s: while busy, trim at most this often; 0 turns trimming off.
        """
        if self._trim is None or interval_s <= 0:
            return False
        now = time.monotonic()
        with self._lock:
            if not idle and now - self._last < interval_s:
                return False
            self._last = now
            self.trims += 1
        return True

    def trim(self, *, idle: bool) -> None:
        """Collect cycles (when idle) and hand the C heap's free pages back; blocks, so run it off the event loop."""
        if idle:
            gc.collect()
        if self._trim is not None:
            # ctypes lets go of the GIL for the call: other streams keep running.
            self._trim(0)


#: The process's one C heap.
HEAP = HeapTrimmer()

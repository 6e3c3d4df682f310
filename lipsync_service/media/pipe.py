"""A bounded in-memory byte pipe: the RPC writes upload chunks, a demuxer thread reads them.

The writer side applies backpressure (waits for space) so memory stays bounded whatever the
upload's length; the reader side blocks until data arrives or the writer closes it.
"""

from __future__ import annotations

import threading
from collections import deque

from lipsync_service.errors import Cancelled


class ByteStream:
    """Thread-safe FIFO of bytes with a soft capacity, exposed to PyAV as a non-seekable file."""

    def __init__(self, capacity: int = 4 * 1024 * 1024, name: str = "input") -> None:
        self.name = name
        self.capacity = capacity
        self._chunks: deque[memoryview] = deque()
        self._size = 0
        self._total = 0
        self._closed = False
        self._error: BaseException | None = None
        self._cond = threading.Condition()

    # Writer side -------------------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        """Append data without waiting (the caller checks `has_space` first to get backpressure)."""
        if not data:
            return
        with self._cond:
            if self._closed:
                raise ValueError(f"{self.name}: write after close")
            self._chunks.append(memoryview(bytes(data)))
            self._size += len(data)
            self._total += len(data)
            self._cond.notify_all()

    def has_space(self) -> bool:
        with self._cond:
            return self._size < self.capacity or self._error is not None

    def wait_space(self, timeout: float | None = None) -> bool:
        """Block until the buffer is below capacity (or aborted); False on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: self._size < self.capacity or self._error is not None, timeout)

    def close(self) -> None:
        """Mark end of input: readers get b'' once the buffer is drained."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def abort(self, error: BaseException | None = None) -> None:
        """Wake every waiter; further reads raise `error` (Cancelled by default)."""
        with self._cond:
            self._error = error or Cancelled(f"{self.name}: stream aborted")
            self._closed = True
            self._chunks.clear()
            self._size = 0
            self._cond.notify_all()

    # Reader side (file-like) ---------------------------------------------------------------------

    def read(self, n: int = -1) -> bytes:
        """Read up to n bytes, blocking until some are available; b'' at end of input."""
        with self._cond:
            self._cond.wait_for(lambda: self._size > 0 or self._closed)
            if self._error is not None:
                raise self._error
            if self._size == 0:
                return b""
            want = self._size if n is None or n < 0 else min(n, self._size)
            parts = []
            got = 0
            while got < want:
                head = self._chunks[0]
                take = min(len(head), want - got)
                parts.append(head[:take])
                got += take
                if take == len(head):
                    self._chunks.popleft()
                else:
                    self._chunks[0] = head[take:]
            self._size -= got
            self._cond.notify_all()
            return b"".join(parts)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    @property
    def buffered(self) -> int:
        """Bytes waiting to be read."""
        with self._cond:
            return self._size

    @property
    def total_written(self) -> int:
        with self._cond:
            return self._total

    @property
    def closed(self) -> bool:
        with self._cond:
            return self._closed

"""Backpressured writes of upload chunks into a ByteStream, without blocking the event loop."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from lipsync_service.errors import ResourceExhausted
from lipsync_service.logs import call_log as log
from lipsync_service.media.pipe import ByteStream

# Seconds a full input buffer may see no reads before we conclude its reader waits on another input
# (e.g. all video sent before any audio) and let it grow beyond capacity rather than deadlock.
OVERFLOW_GRACE_S = 1.0
# How far beyond capacity such an out-of-order upload may run, as a multiple of the buffer size.
OVERFLOW_FACTOR = 64
# Longest poll interval while waiting for buffer space.
_MAX_POLL_S = 0.02


class Feeder:
    """Writes upload chunks into a ByteStream with backpressure that never blocks the event loop."""

    def __init__(self, stream: ByteStream) -> None:
        self.stream = stream
        self._limit = stream.capacity * OVERFLOW_FACTOR
        self._overflow_mark: int | None = None
        self._warned = False

    def _consumed(self) -> int:
        return self.stream.total_written - self.stream.buffered

    async def write(self, data: bytes, on_wait: Callable[[bool], None]) -> None:
        stream = self.stream
        if stream.closed:
            return  # aborted by a failing job: the session is ending anyway
        if self._overflow_mark is not None and self._consumed() > self._overflow_mark:
            self._overflow_mark = None  # the reader moves again: back to normal backpressure
        if self._overflow_mark is None and not stream.has_space():
            on_wait(True)
            try:
                await self._wait_space()
            finally:
                on_wait(False)
        if self._overflow_mark is not None and stream.buffered + len(data) > self._limit:
            raise ResourceExhausted(
                f"{stream.name}: the upload runs more than {self._limit // 2**20} MiB ahead of what the job can "
                "use; interleave the video and audio chunks (send both as time advances)")
        if not stream.closed:
            stream.write(data)

    async def _wait_space(self) -> None:
        stream = self.stream
        delay = 0.001
        consumed = self._consumed()
        since = time.monotonic()
        while not stream.has_space() and not stream.closed:
            await asyncio.sleep(delay)
            delay = min(delay * 2, _MAX_POLL_S)
            now_consumed = self._consumed()
            if now_consumed != consumed:
                consumed, since = now_consumed, time.monotonic()
            elif time.monotonic() - since > OVERFLOW_GRACE_S:
                # The reader is parked on another input that sits behind this one in the request stream.
                self._overflow_mark = consumed
                if not self._warned:
                    self._warned = True
                    log.warning("%s input buffer full and not being read for %.1f s: buffering beyond %d bytes "
                                "(the client sends inputs out of step)", stream.name, OVERFLOW_GRACE_S,
                                stream.capacity)
                return

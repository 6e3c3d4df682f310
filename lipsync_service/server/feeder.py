"""Backpressured writes of upload chunks into a ByteStream, without blocking the event loop, within the call's memory
budget."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from lipsync_service.logs import call_log as log
from lipsync_service.media.pipe import ByteStream
from lipsync_service.server.budget import StreamBudget

# Seconds a full input buffer may see no reads before we conclude its reader waits on another input
# (e.g. all video sent before any audio) and let it grow beyond capacity, within the call's memory budget,
# rather than deadlock.
OVERFLOW_GRACE_S = 1.0
BUFFERED = "upload buffered ahead of the job"
_INTERLEAVE = "interleave the video and audio chunks (send both as time advances)"
# Longest poll interval while waiting for buffer space.
_MAX_POLL_S = 0.02


class Feeder:
    """Writes upload chunks into a ByteStream with backpressure that never blocks the event loop."""

    def __init__(self, stream: ByteStream, budget: StreamBudget) -> None:
        """Args:
            stream: the job's input.
            budget: the call's memory budget; what the stream buffers counts against it.
        """
        self.stream = stream
        self._budget = budget
        budget.hold(BUFFERED, lambda: stream.buffered)
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
        if self._overflow_mark is not None:
            self._budget.check(f"{stream.name}: the upload runs ahead of what the job can use", len(data),
                               _INTERLEAVE)
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
                    log.info("%s input buffer full and not being read for %.1f s: buffering beyond %d bytes "
                             "within the call's memory budget (the client sends inputs out of step)", stream.name,
                             OVERFLOW_GRACE_S, stream.capacity)
                return

"""The call's output side: the bounded buffer from the pipeline thread to the RPC, and the output-stall watchdog."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from collections.abc import Callable

import grpc

from lipsync_service.errors import Cancelled, OutputStalled
from lipsync_service.logs import call_log as log
from lipsync_service.server.status import status_for
from lipsync_service.settings import Settings


class OutputBuffer:
    """Encoded MP4 bytes on their way from the pipeline thread to the RPC, bounded in size.

    The pipeline's sink (`put`) blocks while the client reads slower than we encode; the event loop
    drains it with `take`.
    """

    def __init__(self, capacity: int, notify: Callable[[], None]) -> None:
        self._capacity = capacity
        self._notify = notify
        self._chunks: deque[bytes] = deque()
        self._size = 0
        self._closed = False
        self._cond = threading.Condition()
        self.total = 0

    def put(self, data: bytes) -> None:
        """Pipeline side: queue bytes, waiting for room. Raises Cancelled once the call has ended."""
        if not data:
            return
        with self._cond:
            self._cond.wait_for(lambda: self._size < self._capacity or self._closed)
            if self._closed:
                raise Cancelled("the call ended while output was being written")
            self._chunks.append(bytes(data))
            self._size += len(data)
            self.total += len(data)
        self._notify()

    def take(self, max_bytes: int) -> bytes:
        """Loop side: up to max_bytes of queued output (b'' if none), coalescing small writes."""
        with self._cond:
            parts: list[bytes] = []
            got = 0
            while self._chunks and got < max_bytes:
                head = self._chunks[0]
                room = max_bytes - got
                if len(head) <= room:
                    parts.append(self._chunks.popleft())
                    got += len(head)
                else:
                    parts.append(head[:room])
                    self._chunks[0] = head[room:]
                    got += room
            self._size -= got
            self._cond.notify_all()
            return b"".join(parts)

    @property
    def pending(self) -> int:
        with self._cond:
            return self._size

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._chunks.clear()
            self._size = 0
            self._cond.notify_all()


class OutputWatchdog:
    """Ends the call when one response write stays blocked past output_stall_timeout_s.

    gRPC's flow control parks the write (and, behind it, the pipeline) while the client does not read;
    a client that half-closed and then stopped reading on a live connection is never caught by the
    input stall timeout or by transport keepalives, so without this it would hold its slot forever.
    """

    def __init__(self, settings: Settings, context: grpc.aio.ServicerContext | None,
                 task: asyncio.Task | None) -> None:
        self._settings = settings
        self._context = context
        self._task = task  # the call's handler task, cancelled to end a stalled call
        self._writing_since: float | None = None  # when the write being sent started (None between writes)
        self._watch: asyncio.Task | None = None
        self.stall: OutputStalled | None = None  # set once the watchdog has ended the call

    def start(self, name: str) -> None:
        self._watch = asyncio.create_task(self._run(), name=name)

    def writing(self) -> None:
        """A response write begins."""
        self._writing_since = time.monotonic()

    def written(self) -> None:
        """The response write went out."""
        self._writing_since = None

    def stop(self) -> None:
        watch, self._watch = self._watch, None
        if watch is not None and watch is not asyncio.current_task():
            watch.cancel()

    async def _run(self) -> None:
        limit = self._settings.output_stall_timeout_s
        tick = min(1.0, limit / 4)
        while True:
            await asyncio.sleep(tick)
            since = self._writing_since
            if since is None or time.monotonic() - since <= limit:
                continue
            self.stall = OutputStalled(
                f"the client has not read the responses for {limit:g} s; the call is ended to free its slot "
                "(read the response stream while sending; limit set by NV_AI4M_OUTPUT_STALL_TIMEOUT_S)")
            log.debug("%s", self.stall)  # the call's request_finished line says it
            if self._context is not None:
                # Queue the final status first, so the client gets our code and message once it reads again;
                # the write ahead of it is stuck, so do not wait for it to go out.
                try:
                    await asyncio.wait_for(self._context.abort(status_for(self.stall), str(self.stall)), 0.1)
                except Exception:  # noqa: BLE001 - AbortError, or the timeout: either way the status is queued
                    pass
            if self._task is not None:
                # The handler task is parked in gRPC's write: cancelling it is the only way to end the call
                # (the client, once it reads again, sees DEADLINE_EXCEEDED; the log line has our message).
                self._task.cancel()
            return

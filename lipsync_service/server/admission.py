"""Admission control: a bounded number of streams run at once, a bounded queue waits, the rest are refused."""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Callable

from lipsync_service.errors import ResourceExhausted, Unavailable


class Slot:
    """A granted processing slot; `release` is idempotent so every exit path may call it."""

    def __init__(self, admission: Admission) -> None:
        self._admission = admission
        self._released = False

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._admission._release()

    async def __aenter__(self) -> Slot:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.release()


class Admission:
    """First-come first-served admission of streams, owned by one event loop.

    At most `max_active` slots are held at once; up to `max_queued` callers wait (FIFO) for at most
    `timeout_s`; anyone beyond the queue is refused at once. While draining, every new caller and every
    waiter is refused with Unavailable.
    """

    def __init__(self, max_active: int, max_queued: int, timeout_s: float,
                 on_change: Callable[[int, int], None] | None = None) -> None:
        """Args:
            max_active: streams processed at once.
            max_queued: streams allowed to wait for a slot.
            timeout_s: how long a queued stream waits before it is refused.
            on_change: called with (active, queued) whenever either changes (metrics gauges).
        """
        if max_active < 1:
            raise ValueError("max_active must be >= 1")
        self.max_active = max_active
        self.max_queued = max_queued
        self.timeout_s = timeout_s
        self._active = 0
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self._draining = False
        self._on_change = on_change
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def active(self) -> int:
        return self._active

    @property
    def queued(self) -> int:
        return sum(1 for w in self._waiters if not w.done())

    @property
    def draining(self) -> bool:
        return self._draining

    def _changed(self) -> None:
        if self._active == 0:
            self._idle.set()
        else:
            self._idle.clear()
        if self._on_change is not None:
            self._on_change(self._active, self.queued)

    def _busy_message(self) -> str:
        return (f"all {self.max_active} processing slots are busy; retry later or raise "
                "NV_AI4M_MAX_CONCURRENCY_PER_GPU")

    async def acquire(self) -> Slot:
        """Wait for a slot.

        Returns:
            The slot; release it when the stream ends.

        Raises:
            Unavailable: the server is draining.
            ResourceExhausted: the queue is full, or no slot freed up within the admission timeout.
        """
        if self._draining:
            raise Unavailable("server is shutting down")
        if self._active < self.max_active and not self.queued:
            self._active += 1
            self._changed()
            return Slot(self)
        if self.queued >= self.max_queued:
            raise ResourceExhausted(self._busy_message())
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        self._changed()
        try:
            await asyncio.wait_for(asyncio.shield(waiter), self.timeout_s)
        except asyncio.TimeoutError:
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                # Granted in the same tick the timeout fired: keep the slot rather than leak it.
                return Slot(self)
            waiter.cancel()
            raise ResourceExhausted(
                f"{self._busy_message()} (waited {self.timeout_s:g} s in the admission queue)"
            ) from None
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                # The slot was handed to us as we were cancelled: pass it on.
                self._release()
            else:
                waiter.cancel()
            raise
        finally:
            self._prune()
            self._changed()
        return Slot(self)

    def _prune(self) -> None:
        while self._waiters and self._waiters[0].done():
            self._waiters.popleft()

    def _release(self) -> None:
        # Hand the slot straight to the oldest live waiter so newcomers cannot overtake the queue.
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                self._changed()
                return
        self._active -= 1
        self._changed()

    def start_draining(self) -> None:
        """Refuse new streams and every queued one with Unavailable; running streams keep their slots."""
        self._draining = True
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_exception(Unavailable("server is shutting down"))
        self._changed()

    async def wait_idle(self, timeout: float | None) -> bool:
        """Wait until no slot is held; False if the timeout passed first."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
            return True
        except asyncio.TimeoutError:
            return False

"""The output side of a job on its own thread: calls run one after another, in the order they were handed in.

Why a thread: x264 and the muxer release the GIL, so encoding frame n overlaps with detecting, reading and
re-shaping the faces of frame n+1 on another core (measured on a 2-core machine with the 720p clip: 240 frames
of encode plus face work took 4.84 s one after the other and 3.53 s side by side). Everything that touches the
output container (video frames, the audio written after each frame, progress) goes through this one thread,
so the container sees exactly the calls, in exactly the order, the job would have made itself.

The same class runs the job's finishing thread (the processor's deferred blends, which hand each frame on to the
encode thread): any ordered worker with a bounded queue and errors handed back.
"""

from __future__ import annotations

import contextvars
import logging
import queue
import threading
from collections.abc import Callable

from lipsync_service.errors import Cancelled

# How often a blocked hand-over wakes up to look for the worker's error or the job's cancel event.
_POLL_S = 0.1
_STOP = object()
# How long `stop` waits for a running call (one frame's encode, or a sink write) to end.
STOP_TIMEOUT_S = 30.0

log = logging.getLogger(__name__)


class EncodeThread:
    """Runs submitted calls in order on one thread, with at most `depth` calls waiting.

    The first exception a call raises stops the thread; it is raised again, in the submitting thread, by the
    next `submit` or `drain`. `stop` discards whatever waits and joins the thread: call it on every exit path.
    """

    def __init__(self, cancel: threading.Event, *, depth: int = 4, name: str = "encode") -> None:
        """Start the thread.

        Args:
            cancel: the job's cancel event: a blocked `submit` or `drain` raises Cancelled once it is set.
            depth: calls that may wait while one runs (bounds the frames held in memory).
            name: the thread's name.
        """
        self._cancel = cancel
        self._queue: queue.Queue[object] = queue.Queue(maxsize=max(1, depth))
        self._error: BaseException | None = None
        self._stopped = False
        # The worker logs with the submitter's context (the request id of the job).
        context = contextvars.copy_context()
        self._thread = threading.Thread(target=context.run, args=(self._loop,), name=name, daemon=True)
        self._thread.start()

    def submit(self, call: Callable[[], None]) -> None:
        """Queue a call; blocks while the queue is full.

        Raises:
            whatever an earlier call raised; Cancelled when the job is cancelled while waiting.
        """
        self._put(call)

    def drain(self) -> None:
        """Wait until every submitted call has run, then end the thread.

        Raises:
            whatever a call raised; Cancelled when the job is cancelled while waiting.
        """
        if self._stopped:
            self._raise_error()
            return
        self._put(_STOP)
        while self._thread.is_alive():
            self._check()
            self._thread.join(_POLL_S)
        self._stopped = True
        self._raise_error()

    def stop(self) -> bool:
        """Discard waiting calls, let the running one finish, and join the thread. Never raises.

        Returns:
            False when the running call did not end within STOP_TIMEOUT_S (a sink blocked on a client that
            stopped reading, until its stall watchdog ends it): the caller must then leave the output alone.
        """
        if self._stopped:
            return not self._thread.is_alive()
        self._stopped = True
        while True:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        # The worker may be blocked on a full queue no more: there is room for the stop mark now.
        self._queue.put(_STOP)
        self._thread.join(STOP_TIMEOUT_S)
        if self._thread.is_alive():
            log.error("the encode thread did not stop within %g s", STOP_TIMEOUT_S)
            return False
        return True

    def _put(self, item: object) -> None:
        while True:
            self._check()
            try:
                self._queue.put(item, timeout=_POLL_S)
                return
            except queue.Full:
                continue

    def _check(self) -> None:
        self._raise_error()
        if self._cancel.is_set():
            raise Cancelled("the job was cancelled")

    def _raise_error(self) -> None:
        if self._error is not None:
            raise self._error

    def _loop(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            if self._error is not None:
                continue  # after a failure the rest is only drained, never run
            try:
                item()  # type: ignore[operator]
            except BaseException as exc:  # noqa: BLE001 - handed to the submitting thread
                self._error = exc

"""The job's encode thread: order, back-pressure, errors and cancel reach the job thread; nothing lingers."""

from __future__ import annotations

import threading
import time

import pytest

from lipsync_service.errors import Cancelled, InvalidInput
from lipsync_service.media.encode_thread import EncodeThread


def test_calls_run_in_order_on_another_thread() -> None:
    seen: list[tuple[int, str]] = []
    worker = EncodeThread(threading.Event(), depth=2)
    for k in range(50):
        worker.submit(lambda k=k: seen.append((k, threading.current_thread().name)))
    worker.drain()
    assert [k for k, _ in seen] == list(range(50))
    assert {name for _, name in seen} == {"encode"}
    assert not any(t.name == "encode" and t.is_alive() for t in threading.enumerate())  # drain ends the thread


def test_a_failing_call_is_raised_in_the_submitting_thread_and_later_calls_never_run() -> None:
    ran: list[int] = []

    def fail() -> None:
        raise InvalidInput("the sink refused the bytes")

    worker = EncodeThread(threading.Event(), depth=1)
    worker.submit(fail)
    with pytest.raises(InvalidInput, match="sink refused"):
        for k in range(100):  # the error surfaces at a later submit (or at drain)
            worker.submit(lambda k=k: ran.append(k))
        worker.drain()
    assert len(ran) <= 1  # at most a call queued before the failure was seen; none after it
    assert worker.stop() is True


def test_cancel_unblocks_a_full_queue_and_stop_discards_what_waits() -> None:
    cancel = threading.Event()
    release = threading.Event()
    ran: list[int] = []
    worker = EncodeThread(cancel, depth=1)
    worker.submit(release.wait)  # the thread is busy
    worker.submit(lambda: ran.append(1))  # the queue is full
    threading.Timer(0.2, cancel.set).start()
    start = time.monotonic()
    with pytest.raises(Cancelled):
        worker.submit(lambda: ran.append(2))
    assert time.monotonic() - start < 2
    release.set()
    assert worker.stop() is True
    assert ran == []  # the waiting call was discarded, not run
    assert not any(t.name == "encode" and t.is_alive() for t in threading.enumerate())

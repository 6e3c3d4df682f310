"""The output buffer between the pipeline thread and the RPC (server/output.py)."""

from __future__ import annotations

import threading
import time

from lipsync_service.errors import Cancelled
from lipsync_service.server.output import OutputBuffer

# Output buffer ------------------------------------------------------------------------------------

def test_output_buffer_coalesces_splits_and_bounds():
    notified = []
    buf = OutputBuffer(100, lambda: notified.append(1))
    for part in (b"a" * 30, b"b" * 30, b"c" * 30):
        buf.put(part)
    assert len(notified) == 3 and buf.pending == 90
    assert buf.take(50) == b"a" * 30 + b"b" * 20  # small writes coalesce, a larger one splits
    assert buf.take(1000) == b"b" * 10 + b"c" * 30
    assert buf.take(10) == b""
    # A full buffer blocks the producer until the consumer takes some.
    buf.put(b"x" * 100)
    done = threading.Event()
    t = threading.Thread(target=lambda: (buf.put(b"y"), done.set()))
    t.start()
    assert not done.wait(0.1)
    buf.take(60)
    assert done.wait(2)
    t.join()
    # Closing wakes a blocked producer with Cancelled.
    buf.put(b"z" * 100)
    errors = []
    t = threading.Thread(target=lambda: _catch(errors, buf.put, b"w"))
    t.start()
    time.sleep(0.05)
    buf.close()
    t.join(2)
    assert len(errors) == 1 and isinstance(errors[0], Cancelled)


def _catch(errors, fn, *args):
    try:
        fn(*args)
    except Exception as exc:  # noqa: BLE001
        errors.append(exc)

"""Worker threads whose outcome lands in an asyncio future on the loop that started them."""

from __future__ import annotations

import asyncio
import contextvars
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from lipsync_service.errors import release_frames

T = TypeVar("T")


def _settle(fut: asyncio.Future, result: Any = None, error: BaseException | None = None) -> None:
    if fut.done():
        return
    if error is not None:
        fut.set_exception(error)
    else:
        fut.set_result(result)


def start_thread(fn: Callable[[], T], name: str) -> tuple[threading.Thread, asyncio.Future[T]]:
    """Run fn in a new thread with the caller's contextvars (request id); its outcome lands in a future.

    A dedicated thread rather than the loop's executor: it ends with the job, so nothing lingers.
    """
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[T] = loop.create_future()
    ctx = contextvars.copy_context()

    def target() -> None:
        try:
            result = ctx.run(fn)
        except BaseException as exc:  # noqa: BLE001 - handed to the event loop, which decides
            # The frames it passed through (the job, its decoder, encoder and processor) are done with.
            release_frames(exc)
            loop.call_soon_threadsafe(_settle, fut, None, exc)
        else:
            loop.call_soon_threadsafe(_settle, fut, result)

    thread = threading.Thread(target=target, name=name, daemon=True)
    thread.start()
    return thread, fut

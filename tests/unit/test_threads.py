"""Worker threads that carry the request context and report to the loop (server/threads.py)."""

from __future__ import annotations

import asyncio
import contextvars

import pytest

from lipsync_service.errors import InvalidInput
from lipsync_service.server.threads import start_thread

# Threads --------------------------------------------------------------------------------------------

def test_start_thread_carries_the_context_and_the_outcome():
    var: contextvars.ContextVar[str] = contextvars.ContextVar("v", default="-")

    async def main():
        var.set("req-1")
        thread, fut = start_thread(lambda: var.get(), "t")
        assert await fut == "req-1"
        thread.join()

        def boom():
            raise InvalidInput("bad")

        thread, fut = start_thread(boom, "t")
        with pytest.raises(InvalidInput, match="bad"):
            await fut
        thread.join()
    asyncio.run(main())

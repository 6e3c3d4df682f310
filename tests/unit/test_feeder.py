"""Upload backpressure into the job's input streams (server/feeder.py)."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from lipsync_service.errors import ResourceExhausted
from lipsync_service.media.pipe import ByteStream
from lipsync_service.server.budget import StreamBudget
from lipsync_service.server.feeder import Feeder

# Upload backpressure ------------------------------------------------------------------------------

def test_feeder_waits_for_a_reader_without_blocking_the_loop():
    async def main():
        stream = ByteStream(capacity=65536, name="video")
        feeder = Feeder(stream, StreamBudget(2**30))
        waits = []
        ticks = 0

        async def ticker():
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0.005)

        tick_task = asyncio.create_task(ticker())
        got = bytearray()

        def reader():
            while True:
                time.sleep(0.002)
                data = stream.read(8192)
                if not data:
                    return
                got.extend(data)

        t = threading.Thread(target=reader)
        t.start()
        payload = bytes(range(256)) * 1024  # 256 KiB through a 64 KiB pipe
        for i in range(0, len(payload), 16384):
            await feeder.write(payload[i:i + 16384], waits.append)
            assert stream.buffered <= 65536 + 16384
        stream.close()
        await asyncio.to_thread(t.join)
        tick_task.cancel()
        assert bytes(got) == payload
        assert True in waits  # it did wait for space ...
        assert ticks > 5  # ... while the event loop kept running
    asyncio.run(main())


def test_feeder_overflows_when_the_reader_waits_on_another_input(monkeypatch):
    import lipsync_service.server.feeder as feeder_module

    monkeypatch.setattr(feeder_module, "OVERFLOW_GRACE_S", 0.05)

    async def main():
        stream = ByteStream(capacity=65536, name="video")
        # The call's budget: 256 KiB (the limit's floor is for settings; the budget itself takes any).
        budget = StreamBudget(4 * 65536)
        feeder = Feeder(stream, budget)
        t0 = time.monotonic()
        for _ in range(12):  # 192 KiB with nobody reading: no deadlock
            await feeder.write(b"\0" * 16384, lambda _: None)
        assert time.monotonic() - t0 < 1.0
        assert stream.buffered == 12 * 16384
        with pytest.raises(ResourceExhausted, match="interleave the video and audio chunks") as info:
            for _ in range(20):
                await feeder.write(b"\0" * 16384, lambda _: None)
        assert stream.buffered == 16 * 16384  # up to the budget, not a byte more
        assert str(info.value).startswith("video: the upload runs ahead of what the job can use: this call would hold "
                                          "more than its 256 KiB of server memory (NV_AI4M_MAX_STREAM_MEMORY_BYTES; "
                                          "held now: upload buffered ahead of the job 256 KiB, 16 KiB more asked); "
                                          "interleave the video and audio chunks (send both as time advances)")
    asyncio.run(main())

"""Admission control: slot limit, bounded FIFO queue with timeout, immediate refusal, drain."""

from __future__ import annotations

import asyncio

import pytest

from lipsync_service.errors import ResourceExhausted, Unavailable
from lipsync_service.server.admission import Admission


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 10))


def test_grants_up_to_the_limit_then_refuses_beyond_the_queue():
    async def main():
        changes = []
        adm = Admission(2, 0, 1.0, on_change=lambda a, q: changes.append((a, q)))
        s1, s2 = await adm.acquire(), await adm.acquire()
        assert adm.active == 2
        with pytest.raises(ResourceExhausted) as err:
            await adm.acquire()
        assert str(err.value) == ("all 2 processing slots are busy; retry later or raise "
                                  "NV_AI4M_MAX_CONCURRENCY_PER_GPU")
        s1.release()
        s1.release()  # idempotent
        assert adm.active == 1
        s2.release()
        assert adm.active == 0 and changes[-1] == (0, 0) and (2, 0) in changes
    run(main())


def test_queue_is_fifo_and_hands_slots_over():
    async def main():
        adm = Admission(1, 3, 5.0)
        held = await adm.acquire()
        order = []

        async def waiter(name):
            slot = await adm.acquire()
            order.append(name)
            await asyncio.sleep(0.01)
            slot.release()

        tasks = [asyncio.create_task(waiter(n)) for n in "abc"]
        await asyncio.sleep(0.05)
        assert adm.queued == 3 and adm.active == 1
        # A newcomer beyond the queue is refused even though the queue is about to move.
        with pytest.raises(ResourceExhausted):
            await adm.acquire()
        held.release()
        await asyncio.gather(*tasks)
        assert order == ["a", "b", "c"] and adm.active == 0 and adm.queued == 0
    run(main())


def test_queued_caller_times_out():
    async def main():
        adm = Admission(1, 1, 0.1)
        held = await adm.acquire()
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        with pytest.raises(ResourceExhausted) as err:
            await adm.acquire()
        assert 0.09 < loop.time() - t0 < 1.0
        assert "(waited 0.1 s in the admission queue)" in str(err.value)
        assert adm.queued == 0 and adm.active == 1
        held.release()
        assert adm.active == 0
    run(main())


def test_cancelled_waiter_leaves_no_trace():
    async def main():
        adm = Admission(1, 2, 5.0)
        held = await adm.acquire()
        task = asyncio.create_task(adm.acquire())
        await asyncio.sleep(0.01)
        assert adm.queued == 1
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert adm.queued == 0
        held.release()
        assert adm.active == 0
        slot = await adm.acquire()  # still usable
        slot.release()
    run(main())


def test_drain_refuses_new_and_queued_and_waits_for_running():
    async def main():
        adm = Admission(1, 2, 5.0)
        running = await adm.acquire()
        queued = asyncio.create_task(adm.acquire())
        await asyncio.sleep(0.01)
        adm.start_draining()
        with pytest.raises(Unavailable, match="server is shutting down"):
            await queued
        with pytest.raises(Unavailable, match="server is shutting down"):
            await adm.acquire()
        assert await adm.wait_idle(0.05) is False
        asyncio.get_running_loop().call_later(0.05, running.release)
        assert await adm.wait_idle(2) is True
    run(main())

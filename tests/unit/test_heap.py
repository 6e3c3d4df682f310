"""The C heap is trimmed after calls: always when the server goes idle, at most once per interval while busy."""

from __future__ import annotations

import platform

import pytest

from lipsync_service.server import heap
from lipsync_service.server.heap import HeapTrimmer


def test_trimmed_when_idle_and_once_per_interval_while_busy(monkeypatch):
    calls: list[int] = []
    clock = [1000.0]
    monkeypatch.setattr(heap.time, "monotonic", lambda: clock[0])
    trimmer = HeapTrimmer(trim=lambda pad: calls.append(pad) or 1)
    assert trimmer.after_call(idle=False, interval_s=10)  # never trimmed before
    clock[0] += 3
    assert not trimmer.after_call(idle=False, interval_s=10)  # busy, 3 s later
    assert trimmer.after_call(idle=True, interval_s=10)  # idle: always
    clock[0] += 10
    assert trimmer.after_call(idle=False, interval_s=10)  # busy, a whole interval later
    assert not trimmer.after_call(idle=True, interval_s=0)  # turned off
    assert calls == [0, 0, 0] and trimmer.trims == 3


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="malloc_trim is glibc's")
def test_glibc_trim_is_found_and_runs():
    trimmer = HeapTrimmer()
    assert trimmer.after_call(idle=True, interval_s=10)

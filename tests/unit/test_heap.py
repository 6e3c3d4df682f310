"""The C heap is trimmed after calls: always when the server goes idle, at most once per interval while busy."""

from __future__ import annotations

import platform

import pytest

from lipsync_service.server import heap
from lipsync_service.server.heap import HeapTrimmer


def test_trimmed_when_idle_and_once_per_interval_while_busy(monkeypatch):
    clock = [1000.0]
    monkeypatch.setattr(heap.time, "monotonic", lambda: clock[0])
    trimmer = HeapTrimmer(trim=lambda pad: 1)
    assert trimmer.due(idle=False, interval_s=10)  # never trimmed before
    clock[0] += 3
    assert not trimmer.due(idle=False, interval_s=10)  # busy, 3 s later
    assert trimmer.due(idle=True, interval_s=10)  # idle: always
    clock[0] += 10
    assert trimmer.due(idle=False, interval_s=10)  # busy, a whole interval later
    assert not trimmer.due(idle=True, interval_s=0)  # turned off
    assert trimmer.trims == 3


def test_trim_collects_cycles_only_when_idle(monkeypatch):
    calls: list[int] = []
    collected: list[int] = []
    monkeypatch.setattr(heap.gc, "collect", lambda: collected.append(1) or 0)
    trimmer = HeapTrimmer(trim=lambda pad: calls.append(pad) or 1)
    trimmer.trim(idle=False)
    trimmer.trim(idle=True)
    assert calls == [0, 0] and collected == [1]


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="malloc_trim is glibc's")
def test_glibc_trim_is_found():
    trimmer = HeapTrimmer()
    assert trimmer.due(idle=True, interval_s=10)
    trimmer.trim(idle=False)


def test_the_arena_limit_is_set_where_glibc_takes_it():
    from lipsync_service.server.heap import limit_arenas

    assert limit_arenas(0) is False  # glibc's default kept
    if platform.libc_ver()[0] == "glibc":
        assert limit_arenas(64) is True  # a cap above what this test process uses changes nothing here

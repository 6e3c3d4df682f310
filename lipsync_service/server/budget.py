"""What one call's client can make the server hold in memory, checked against one per-call limit.

A client decides much of what a call holds: upload it sends ahead of what the job has read (all video before any
audio, or the other way round), speaker data for frames the video may not have, output it does not read. Each
of these is bounded by its own mechanism in normal use (backpressure, the frame count once the header states
it, the output buffer's size), but a client that sends inputs out of step or floods speaker data before the
video could otherwise make one call hold gigabytes. Every holder reports its size here; data that would take
the call past `NV_AI4M_MAX_STREAM_MEMORY_BYTES` is refused with RESOURCE_EXHAUSTED, naming what holds the memory.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from lipsync_service.errors import ResourceExhausted

_MIB = 2**20


def _mib(size: int) -> str:
    return f"{size / _MIB:.1f} MiB" if size >= _MIB else f"{-(-size // 1024)} KiB"


class StreamBudget:
    """The memory one call holds on its client's behalf, by holder, against a limit."""

    def __init__(self, limit: int) -> None:
        """Args:
            limit: bytes the call may hold (settings.max_stream_memory_bytes).
        """
        self.limit = limit
        self._holders: list[tuple[str, Callable[[], int]]] = []
        self._lock = threading.Lock()
        #: The most the call held at one check (for the request_finished line).
        self.peak = 0

    def hold(self, what: str, size: Callable[[], int]) -> None:
        """Count what `size()` returns (bytes, read at each check) as held by the call, under the name `what`."""
        with self._lock:
            self._holders.append((what, size))

    def held(self) -> dict[str, int]:
        """Bytes held now, by holder name (holders of one name added up)."""
        with self._lock:
            holders = list(self._holders)
        out: dict[str, int] = {}
        for what, size in holders:
            out[what] = out.get(what, 0) + max(0, size())
        return out

    def check(self, what: str, more: int, advice: str) -> None:
        """Refuse `more` bytes for `what` when they would take the call past its limit.

        Args:
            what: what would grow (named in the message).
            more: bytes it would add.
            advice: what the client can do instead (ends the message).

        Raises:
            ResourceExhausted: naming the limit, what the call holds and the advice.
        """
        held = self.held()
        total = sum(held.values()) + more
        self.peak = max(self.peak, total)
        if total <= self.limit:
            return
        parts = ", ".join(f"{name} {_mib(size)}" for name, size in sorted(held.items(), key=lambda kv: -kv[1])
                          if size)
        raise ResourceExhausted(
            f"{what}: this call would hold more than its {_mib(self.limit)} of server memory "
            f"(NV_AI4M_MAX_STREAM_MEMORY_BYTES; held now: {parts or 'nothing'}, {_mib(more)} more asked); {advice}")

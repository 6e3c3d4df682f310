"""Functional-test fixtures and session hooks: report how many fuzz cases ran (the issue asks for the count)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.functional.helpers import FUZZ_STATS, ServerThread, running_server


@pytest.fixture(scope="module")
def server() -> Iterator[ServerThread]:
    """One pass-through server shared by a test module."""
    with running_server() as srv:
        yield srv


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if FUZZ_STATS:
        outcomes = ", ".join(f"{k} {v}" for k, v in sorted(FUZZ_STATS.items()) if k != "count")
        terminalreporter.write_line(f"fuzz cases tried: {FUZZ_STATS.get('count', 0)} ({outcomes})")

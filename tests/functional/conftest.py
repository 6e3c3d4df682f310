"""Functional-test session hooks: report how many fuzz cases ran (the issue asks for the count)."""

from __future__ import annotations

import pytest

from tests.functional.helpers import FUZZ_STATS


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if FUZZ_STATS:
        outcomes = ", ".join(f"{k} {v}" for k, v in sorted(FUZZ_STATS.items()) if k != "count")
        terminalreporter.write_line(f"fuzz cases tried: {FUZZ_STATS.get('count', 0)} ({outcomes})")

"""Shared fixtures: where the public test media lives, and skipping cleanly when it is absent; a session check
that no shared-memory region of this process is left in /dev/shm."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
MEDIA_DIR = (REPO_ROOT.parent / "shared" / "media").resolve()


def media_path(name: str) -> Path:
    """Path of a file in ../shared/media, or skip the test saying why."""
    path = MEDIA_DIR / name
    if not path.exists():
        pytest.skip(f"test media {name} not found: expected ../shared/media beside the repository ({MEDIA_DIR})")
    return path


@pytest.fixture
def media() -> type:
    """Access to the shared test media: `media("talking_1.mp4")` returns a Path or skips."""
    return media_path


# Shared memory: every POSIX region the Triton backend creates is /dev/shm/lipsync_<pid>_<n>_{in,out} and must be
# unlinked when its thread's stream ends or the backend closes. The session fails if any of this process's is left.
_DEV_SHM = Path("/dev/shm")
_SHM_CREATED_DURING: dict[str, str] = {}  # region name -> the test during which it first appeared
_SHM_LEFT: list[str] = []


def _our_shm_regions() -> set[str]:
    if not _DEV_SHM.is_dir():
        return set()
    return {p.name for p in _DEV_SHM.glob(f"lipsync_{os.getpid()}_*")}


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None):
    before = _our_shm_regions()
    yield
    for name in _our_shm_regions() - before:
        _SHM_CREATED_DURING.setdefault(name, item.nodeid)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    left = sorted(_our_shm_regions())
    if not left:
        return
    for name in left:
        _SHM_LEFT.append(f"/dev/shm/{name} (created during {_SHM_CREATED_DURING.get(name, 'a fixture or hook')})")
        try:
            (_DEV_SHM / name).unlink()  # removed now, so the failure is reported once, not inherited by later runs
        except OSError:
            pass
    session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _SHM_LEFT:
        terminalreporter.section("shared memory left behind", sep="=", red=True, bold=True)
        terminalreporter.write_line(f"{len(_SHM_LEFT)} lipsync_* shared-memory region(s) of this test process were "
                                    "never unlinked (a TritonBackend not closed?); the session fails:")
        for line in _SHM_LEFT:
            terminalreporter.write_line(f"  {line}")

"""Shared fixtures: where the public test media lives, and skipping cleanly when it is absent."""

from __future__ import annotations

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

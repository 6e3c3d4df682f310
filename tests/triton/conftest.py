"""A real tritonserver (the nvidia-pytriton wheel's binary) serving the committed triton_repo on free ports."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from lipsync_service.errors import InferenceUnavailable

REPO_ROOT = Path(__file__).resolve().parents[2]
TRITON_REPO = REPO_ROOT / "triton_repo"


def _start_or_skip():  # -> LocalTriton
    pytest.importorskip("pytriton", reason="nvidia-pytriton (the triton extra) is not installed")
    from lipsync_service.inference.local_triton import LocalTriton

    try:
        server = LocalTriton(TRITON_REPO)
    except InferenceUnavailable as exc:
        pytest.skip(f"tritonserver cannot run here: {exc}")
    try:
        server.start(timeout_s=90)
    except InferenceUnavailable as exc:
        server.cleanup()
        pytest.skip(f"tritonserver did not start on this machine: {exc}")
    return server


@pytest.fixture(scope="module")
def triton_server() -> Iterator:
    """A running LocalTriton shared by a module's tests; stopped afterwards, also on failure."""
    server = _start_or_skip()
    try:
        yield server
    finally:
        server.cleanup()


@pytest.fixture
def own_triton_server() -> Iterator:
    """A LocalTriton for one test that stops and restarts it."""
    server = _start_or_skip()
    try:
        yield server
    finally:
        server.cleanup()

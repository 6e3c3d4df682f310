"""The Triton backend against a real tritonserver: same output as embedded ONNX Runtime, UNAVAILABLE and recovery."""

from __future__ import annotations

import numpy as np
import pytest

from lipsync_service.errors import InferenceUnavailable
from lipsync_service.inference import build_backend
from lipsync_service.inference.base import OutputContract
from lipsync_service.inference.onnxruntime import OnnxRuntimeBackend
from lipsync_service.inference.triton import TritonBackend
from lipsync_service.server.status import status_for
from lipsync_service.settings import Settings

from .conftest import TRITON_REPO

pytestmark = pytest.mark.triton


def _batch(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    face = rng.random((n, 6, 96, 96), dtype=np.float32)
    face[:, :3, 48:] = 0.0  # lower half of the target masked, as the pipeline sends it
    mel = np.clip(rng.normal(size=(n, 1, 80, 16)) * 2, -4, 4).astype(np.float32)
    return face, mel


@pytest.mark.parametrize("batch", [1, 8])
def test_triton_serves_the_default_lip_shape_model_as_onnxruntime_does(triton_server, batch: int) -> None:
    """The shipped default (lipsync_generator, lip_shape contract) through a real Triton, default settings."""
    settings = Settings(backend="triton", triton_url=triton_server.url, model_repository=TRITON_REPO)
    remote = build_backend(settings)
    local = OnnxRuntimeBackend.from_repository(TRITON_REPO, "lipsync_generator", max_batch_size=32)
    try:
        assert remote.spec.contract is local.spec.contract is OutputContract.LIP_SHAPE
        _, mel = _batch(batch, seed=batch)
        got, expected = remote.infer(None, mel), local.infer(None, mel)
        assert got.shape == (batch, 5)  # round 5: opening, width, closure, tuck, round
        assert float(np.abs(got - expected).max()) <= 1e-5
    finally:
        remote.close()
        local.close()


@pytest.mark.parametrize("batch", [1, 8])
def test_triton_equals_embedded_onnxruntime(triton_server, batch: int) -> None:
    settings = Settings(backend="triton", triton_url=triton_server.url, model_repository=TRITON_REPO,
                        model_name="opening_warp_rgb96")
    remote = build_backend(settings)
    local = OnnxRuntimeBackend.from_repository(TRITON_REPO, "opening_warp_rgb96", max_batch_size=32)
    try:
        assert remote.spec.face_size == local.spec.face_size == 96
        face, mel = _batch(batch, seed=batch)
        got, expected = remote.infer(face, mel), local.infer(face, mel)
        assert got.shape == (batch, 3, 96, 96)
        assert float(np.abs(got - expected).max()) <= 1e-5
    finally:
        remote.close()
        local.close()


def test_batches_larger_than_the_limit_are_split(triton_server) -> None:
    backend = TritonBackend(triton_server.url, "opening_warp_rgb96", max_batch_size=4)
    local = OnnxRuntimeBackend.from_repository(TRITON_REPO, "opening_warp_rgb96")
    face, mel = _batch(10, seed=3)
    assert float(np.abs(backend.infer(face, mel) - local.infer(face, mel)).max()) <= 1e-5
    backend.close()


def test_unknown_model_is_unavailable_at_start_up(triton_server) -> None:
    with pytest.raises(InferenceUnavailable, match="'no_such_model' is not ready"):
        TritonBackend(triton_server.url, "no_such_model")


def test_no_server_is_unavailable_at_start_up() -> None:
    from lipsync_service.inference.local_triton import free_port

    with pytest.raises(InferenceUnavailable, match="unreachable") as info:
        TritonBackend(f"127.0.0.1:{free_port()}", "opening_warp_rgb96", timeout_s=3)
    assert status_for(info.value).name == "UNAVAILABLE"


def test_server_stopped_mid_run_is_unavailable_then_recovers(own_triton_server) -> None:
    backend = TritonBackend(own_triton_server.url, "opening_warp_rgb96", timeout_s=10)
    face, mel = _batch(2)
    before = backend.infer(face, mel)
    own_triton_server.kill()
    with pytest.raises(InferenceUnavailable) as info:
        backend.infer(face, mel)
    assert status_for(info.value).name == "UNAVAILABLE"
    own_triton_server.start(timeout_s=90)
    after = backend.infer(face, mel)
    assert float(np.abs(after - before).max()) <= 1e-6
    backend.close()


def test_a_call_past_the_timeout_is_unavailable(triton_server) -> None:
    backend = TritonBackend(triton_server.url, "opening_warp_rgb96", timeout_s=30)
    backend._timeout_s = 0.001  # start-up used the normal deadline; now no batch can finish in time
    face, mel = _batch(32)
    with pytest.raises(InferenceUnavailable, match="not answering"):
        backend.infer(face, mel)
    backend._timeout_s = 30
    assert backend.infer(face[:1], mel[:1]).shape == (1, 3, 96, 96)
    backend.close()


def test_server_killed_while_streams_are_calling(own_triton_server) -> None:
    import threading
    import time

    backend = TritonBackend(own_triton_server.url, "opening_warp_rgb96", timeout_s=10)
    face, mel = _batch(8)
    outcome: list[BaseException | None] = []

    def stream() -> None:
        try:
            for _ in range(10_000):
                backend.infer(face, mel)
            outcome.append(None)
        except BaseException as exc:  # recorded for the assertion below
            outcome.append(exc)

    workers = [threading.Thread(target=stream) for _ in range(2)]
    for worker in workers:
        worker.start()
    time.sleep(1.5)
    own_triton_server.kill()
    for worker in workers:
        worker.join(timeout=30)
    assert len(outcome) == 2
    assert all(isinstance(exc, InferenceUnavailable) for exc in outcome), outcome
    own_triton_server.start(timeout_s=90)
    assert backend.infer(face, mel).shape == (8, 3, 96, 96)
    backend.close()

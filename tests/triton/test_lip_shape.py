"""The lip_shape contract on a real tritonserver: detected from the config (stated or not), outputs equal ONNX
Runtime's, batches split at the model's limit, shared memory sized for [B, 2], names that fit no contract refused."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from lipsync_service.errors import InferenceError
from lipsync_service.inference.base import LIP_SHAPE_SIZE, MEL_BINS, MEL_STEPS, OutputContract
from lipsync_service.inference.onnxruntime import OnnxRuntimeBackend
from lipsync_service.inference.triton import TritonBackend

from .conftest import LIP_SHAPE_MAX_BATCH, LIP_SHAPE_MODEL, LIP_SHAPE_UNSTATED, ODD_NAMES_MODEL
from .tiny_models import lip_shape_reference, mel_batch, ort_lip_shape

pytestmark = pytest.mark.triton

DEV_SHM = Path("/dev/shm")


def _onnx(server, model: str) -> Path:
    return server.model_repository / model / "1" / "model.onnx"


@pytest.mark.parametrize("model", [LIP_SHAPE_MODEL, LIP_SHAPE_UNSTATED])
@pytest.mark.parametrize("shm", ["on", "off"])
def test_lip_shape_model_is_detected_and_equals_onnxruntime(lip_shape_server, model: str, shm: str) -> None:
    if shm == "on" and not DEV_SHM.is_dir():
        pytest.skip("no /dev/shm on this machine")
    backend = TritonBackend(lip_shape_server.url, model, max_batch_size=16, shm=shm)
    try:
        spec = backend.spec
        assert spec.contract is OutputContract.LIP_SHAPE
        assert (spec.face_size, spec.max_batch_size) == (0, LIP_SHAPE_MAX_BATCH)  # the config's limit wins
        assert "lip_shape" in spec.description
        for batch in (1, LIP_SHAPE_MAX_BATCH):
            mel = mel_batch(batch, seed=batch)
            got = backend.infer(None, mel)
            assert got.dtype == np.float32 and got.shape == (batch, LIP_SHAPE_SIZE)
            assert float(np.abs(got - ort_lip_shape(_onnx(lip_shape_server, model), mel)).max()) <= 1e-6
    finally:
        backend.close()


@pytest.mark.parametrize("shm", ["on", "off"])
def test_batches_larger_than_the_model_limit_are_split_and_joined_in_order(lip_shape_server, shm: str) -> None:
    if shm == "on" and not DEV_SHM.is_dir():
        pytest.skip("no /dev/shm on this machine")
    backend = TritonBackend(lip_shape_server.url, LIP_SHAPE_MODEL, shm=shm)
    mel = mel_batch(3 * LIP_SHAPE_MAX_BATCH - 1, seed=5)  # 4 + 4 + 3: a partial last batch reuses the regions
    try:
        got = backend.infer(None, mel)
    finally:
        backend.close()
    assert got.shape == (len(mel), LIP_SHAPE_SIZE)
    assert float(np.abs(got - ort_lip_shape(_onnx(lip_shape_server, LIP_SHAPE_MODEL), mel)).max()) <= 1e-6
    assert float(np.abs(got - lip_shape_reference(mel)).max()) <= 1e-4  # item i is mel i's answer


@pytest.mark.skipif(not DEV_SHM.is_dir(), reason="no /dev/shm on this machine")
def test_shared_memory_regions_are_sized_for_the_lip_shape_tensors(lip_shape_server) -> None:
    backend = TritonBackend(lip_shape_server.url, LIP_SHAPE_MODEL, shm="on")
    backend.infer(None, mel_batch(2))
    sizes = {p.name.rsplit("_", 1)[1]: p.stat().st_size for p in DEV_SHM.glob(f"lipsync_{os.getpid()}_*")}
    backend.close()
    # Inputs: mel alone; output: [max_batch, 2] float32 (not [max_batch, 3, S, S]).
    expected = {"in": MEL_BINS * MEL_STEPS * 4, "out": LIP_SHAPE_SIZE * 4}
    assert sizes == {region: LIP_SHAPE_MAX_BATCH * size for region, size in expected.items()}


def test_a_face_for_a_lip_shape_model_is_refused_before_sending(lip_shape_server) -> None:
    backend = TritonBackend(lip_shape_server.url, LIP_SHAPE_MODEL, shm="off")
    try:
        with pytest.raises(InferenceError, match="takes no face input"):
            backend.infer(np.zeros((1, 6, 96, 96), np.float32), mel_batch(1))
        with pytest.raises(InferenceError, match=r"\[B, 1, 80, 16\]"):
            backend.infer(None, mel_batch(2)[:, :, :40])
    finally:
        backend.close()


def test_names_that_fit_no_contract_fail_at_load(lip_shape_server) -> None:
    with pytest.raises(InferenceError, match=r"'odd_names'.*outputs \['mouth'\].*fit no generator contract"):
        TritonBackend(lip_shape_server.url, ODD_NAMES_MODEL)


def test_embedded_backend_reads_the_same_repository(lip_shape_server) -> None:
    """The repository Triton serves also loads in ONNX Runtime, with the same contract and limit."""
    for model in (LIP_SHAPE_MODEL, LIP_SHAPE_UNSTATED):
        local = OnnxRuntimeBackend.from_repository(lip_shape_server.model_repository, model)
        assert (local.spec.contract, local.spec.max_batch_size) == (OutputContract.LIP_SHAPE, LIP_SHAPE_MAX_BATCH)
        local.close()
    with pytest.raises(InferenceError, match="fit no generator contract"):
        OnnxRuntimeBackend.from_repository(lip_shape_server.model_repository, ODD_NAMES_MODEL)

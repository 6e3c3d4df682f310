"""The lip_shape contract on a real tritonserver: detected from the config (stated or not), 2 or 5 columns, outputs
equal ONNX Runtime's, batches split at the model's limit, shared memory sized for [B, C], names that fit no contract
and a model file whose width differs from its config refused."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from lipsync_service.errors import InferenceError, InferenceUnavailable
from lipsync_service.inference.base import LIP_SHAPE_SIZE, LIP_SHAPE_VISEME_SIZE, MEL_BINS, MEL_STEPS, OutputContract
from lipsync_service.inference.onnxruntime import OnnxRuntimeBackend
from lipsync_service.inference.triton import TritonBackend

from .conftest import (
    LIP_SHAPE_MAX_BATCH,
    LIP_SHAPE_MODEL,
    LIP_SHAPE_UNSTATED,
    LIP_SHAPE_VISEMES,
    ODD_NAMES_MODEL,
)
from .tiny_models import lip_shape_reference, mel_batch, ort_lip_shape

pytestmark = pytest.mark.triton

DEV_SHM = Path("/dev/shm")


def _onnx(server, model: str) -> Path:
    return server.model_repository / model / "1" / "model.onnx"


COLUMNS = {LIP_SHAPE_MODEL: LIP_SHAPE_SIZE, LIP_SHAPE_UNSTATED: LIP_SHAPE_SIZE,
           LIP_SHAPE_VISEMES: LIP_SHAPE_VISEME_SIZE}


@pytest.mark.parametrize("model", [LIP_SHAPE_MODEL, LIP_SHAPE_UNSTATED, LIP_SHAPE_VISEMES])
@pytest.mark.parametrize("shm", ["on", "off"])
def test_lip_shape_model_is_detected_and_equals_onnxruntime(lip_shape_server, model: str, shm: str) -> None:
    if shm == "on" and not DEV_SHM.is_dir():
        pytest.skip("no /dev/shm on this machine")
    backend = TritonBackend(lip_shape_server.url, model, max_batch_size=16, shm=shm)
    columns = COLUMNS[model]
    try:
        spec = backend.spec
        assert spec.contract is OutputContract.LIP_SHAPE
        assert (spec.face_size, spec.shape_columns, spec.max_batch_size) == (0, columns, LIP_SHAPE_MAX_BATCH)
        assert f"lip_shape [B, {columns}]" in spec.description
        for batch in (1, LIP_SHAPE_MAX_BATCH):
            mel = mel_batch(batch, seed=batch)
            got = backend.infer(None, mel)
            assert got.dtype == np.float32 and got.shape == (batch, columns)
            assert float(np.abs(got - ort_lip_shape(_onnx(lip_shape_server, model), mel)).max()) <= 1e-6
        if columns == LIP_SHAPE_VISEME_SIZE:  # the viseme columns are probabilities
            assert got[:, LIP_SHAPE_SIZE:].min() > 0.0 and got[:, LIP_SHAPE_SIZE:].max() < 1.0
    finally:
        backend.close()


@pytest.mark.parametrize("model", [LIP_SHAPE_MODEL, LIP_SHAPE_VISEMES])
@pytest.mark.parametrize("shm", ["on", "off"])
def test_batches_larger_than_the_model_limit_are_split_and_joined_in_order(lip_shape_server, shm: str,
                                                                           model: str) -> None:
    if shm == "on" and not DEV_SHM.is_dir():
        pytest.skip("no /dev/shm on this machine")
    backend = TritonBackend(lip_shape_server.url, model, shm=shm)
    mel = mel_batch(3 * LIP_SHAPE_MAX_BATCH - 1, seed=5)  # 4 + 4 + 3: a partial last batch reuses the regions
    try:
        got = backend.infer(None, mel)
    finally:
        backend.close()
    assert got.shape == (len(mel), COLUMNS[model])
    assert float(np.abs(got - ort_lip_shape(_onnx(lip_shape_server, model), mel)).max()) <= 1e-6
    assert float(np.abs(got - lip_shape_reference(mel, COLUMNS[model])).max()) <= 1e-4  # item i is mel i's answer


@pytest.mark.skipif(not DEV_SHM.is_dir(), reason="no /dev/shm on this machine")
@pytest.mark.parametrize("model", [LIP_SHAPE_MODEL, LIP_SHAPE_VISEMES])
def test_shared_memory_regions_are_sized_for_the_lip_shape_tensors(lip_shape_server, model: str) -> None:
    backend = TritonBackend(lip_shape_server.url, model, shm="on")
    backend.infer(None, mel_batch(2))
    sizes = {p.name.rsplit("_", 1)[1]: p.stat().st_size for p in DEV_SHM.glob(f"lipsync_{os.getpid()}_*")}
    backend.close()
    # Inputs: mel alone; output: [max_batch, C] float32 (not [max_batch, 3, S, S]).
    expected = {"in": MEL_BINS * MEL_STEPS * 4, "out": COLUMNS[model] * 4}
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
    for model in (LIP_SHAPE_MODEL, LIP_SHAPE_UNSTATED, LIP_SHAPE_VISEMES):
        local = OnnxRuntimeBackend.from_repository(lip_shape_server.model_repository, model)
        assert (local.spec.contract, local.spec.shape_columns, local.spec.max_batch_size) == (
            OutputContract.LIP_SHAPE, COLUMNS[model], LIP_SHAPE_MAX_BATCH)
        local.close()
    with pytest.raises(InferenceError, match="fit no generator contract"):
        OnnxRuntimeBackend.from_repository(lip_shape_server.model_repository, ODD_NAMES_MODEL)



def test_a_model_file_wider_than_its_config_is_refused(tmp_path) -> None:
    """A 5-column model.onnx under a config that declares 2 columns: the Python-backend model will not load (and
    Triton, which stops when a model fails to load, says why), and the embedded backend refuses the folder."""
    from google.protobuf import text_format

    from lipsync_service.inference.local_triton import LocalTriton
    from lipsync_service.inference.repository import CONFIG_FILE, Target, read_model_config, write_model

    from .tiny_models import write_lip_shape_onnx

    pytest.importorskip("pytriton", reason="nvidia-pytriton (the triton extra) is not installed")
    repo = tmp_path / "models"
    onnx_path = write_lip_shape_onnx(tmp_path / "visemes.onnx", columns=LIP_SHAPE_VISEME_SIZE)
    write_model(Target.PYTHON_ONNX, onnx_path, repo, "wide", max_batch=LIP_SHAPE_MAX_BATCH, gpu=False, ort_threads=1)
    config = read_model_config(repo / "wide")
    config.output[0].dims[:] = [LIP_SHAPE_SIZE]
    (repo / "wide" / CONFIG_FILE).write_text(text_format.MessageToString(config))
    with pytest.raises(InferenceError, match="declares 2 lip_shape columns"):
        OnnxRuntimeBackend.from_repository(repo, "wide")
    server = LocalTriton(repo)
    try:
        with pytest.raises(InferenceUnavailable, match=r"'lip_shape' has dims \[5\], config.pbtxt declares \[2\]"):
            server.start(timeout_s=90)
    finally:
        server.cleanup()

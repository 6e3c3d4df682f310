"""The embedded ONNX Runtime backend and the backend factory, on the committed default model (no torch needed)."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from lipsync_service.errors import InferenceError, InferenceUnavailable
from lipsync_service.inference import build_backend
from lipsync_service.inference.onnxruntime import OnnxRuntimeBackend
from lipsync_service.server.status import status_for
from lipsync_service.settings import DEFAULT_MODEL_REPOSITORY, Settings


def _inputs(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.random((n, 6, 96, 96), dtype=np.float32), rng.normal(size=(n, 1, 80, 16)).astype(np.float32)


def test_default_settings_give_the_committed_model() -> None:
    backend = build_backend(Settings(ort_intra_op_threads=1))
    spec = backend.spec
    assert (spec.name, spec.face_size, spec.max_batch_size, spec.channel_order) == ("lipsync_generator", 96, 16, "bgr")
    assert spec.description  # the ONNX metadata text (trained weights: models/MODEL_CARD.md)
    face, mel = _inputs(2)
    out = backend.infer(face, mel)
    assert out.dtype == np.float32 and out.shape == (2, 3, 96, 96)
    assert 0.0 <= float(out.min()) and float(out.max()) <= 1.0
    backend.close()


def test_large_batches_are_split_and_give_the_same_result_per_item() -> None:
    backend = OnnxRuntimeBackend.from_repository(DEFAULT_MODEL_REPOSITORY, "lipsync_generator", max_batch_size=4)
    face, mel = _inputs(10, seed=1)
    whole = backend.infer(face, mel)
    single = np.concatenate([backend.infer(face[i : i + 1], mel[i : i + 1]) for i in range(10)])
    assert whole.shape == (10, 3, 96, 96)
    assert float(np.abs(whole - single).max()) < 1e-5


def test_wrong_shapes_are_an_inference_error() -> None:
    backend = OnnxRuntimeBackend.from_repository(DEFAULT_MODEL_REPOSITORY, "lipsync_generator")
    face, mel = _inputs(2)
    with pytest.raises(InferenceError, match=r"\[B, 6, 96, 96\]"):
        backend.infer(face[:, :, :64, :64], mel)
    with pytest.raises(InferenceError):
        backend.infer(face, mel[:1])


def test_missing_model_is_unavailable_with_the_setting_to_fix(tmp_path) -> None:
    with pytest.raises(InferenceUnavailable, match="NV_AI4M_LS_MODEL_NAME") as info:
        build_backend(Settings(model_repository=tmp_path, model_name="nothing"))
    assert status_for(info.value).name == "UNAVAILABLE"


def test_latest_version_is_used_unless_pinned(tmp_path) -> None:
    shutil.copytree(DEFAULT_MODEL_REPOSITORY / "lipsync_generator", tmp_path / "g")
    shutil.copytree(tmp_path / "g" / "1", tmp_path / "g" / "7")
    (tmp_path / "g" / "7" / "model.onnx").write_bytes(b"not an onnx file")
    with pytest.raises(InferenceUnavailable, match="cannot load ONNX model .*/7/model.onnx"):
        OnnxRuntimeBackend.from_repository(tmp_path, "g")
    assert OnnxRuntimeBackend.from_repository(tmp_path, "g", version="1").spec.face_size == 96
    with pytest.raises(InferenceUnavailable, match="version 3"):
        OnnxRuntimeBackend.from_repository(tmp_path, "g", version="3")


def test_tensorrt_backend_without_gpu_is_unavailable() -> None:
    try:
        import tensorrt  # noqa: F401

        pytest.skip("tensorrt is installed; covered by the GPU tests")
    except ImportError:
        pass
    with pytest.raises(InferenceUnavailable, match="tensorrt and pycuda"):
        build_backend(Settings(backend="tensorrt"))


def test_serving_path_does_not_import_torch() -> None:
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from lipsync_service.inference import build_backend\n"
        "from lipsync_service.settings import Settings\n"
        "import lipsync_service.cli.models, lipsync_service.inference.triton, lipsync_service.inference.tensorrt\n"
        "build_backend(Settings(ort_intra_op_threads=1)).close()\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)

"""TensorRT engine build and runner: cache-key logic everywhere, the real build and parity only with CUDA."""

from __future__ import annotations

import numpy as np
import pytest

from lipsync_service.errors import InferenceUnavailable
from lipsync_service.inference.tensorrt import engine_cache_key, engine_cache_path, file_sha256

NEEDS_GPU = "needs CUDA and TensorRT"


def test_cache_key_changes_with_every_field() -> None:
    base = ("ab" * 32, "10.3.0", "NVIDIA H100 80GB HBM3", 16, True)
    key = engine_cache_key(*base)
    assert key.startswith("abababababab-trt10.3.0-nvidia-h100-80gb-hbm3-b16-fp16-")
    assert engine_cache_key(*base) == key
    for i, other in enumerate(["cd" * 32, "10.4.0", "NVIDIA L4", 32, False]):
        changed = list(base)
        changed[i] = other
        assert engine_cache_key(*changed) != key
    assert "/" not in key and " " not in key


def test_cache_path_and_file_hash(tmp_path) -> None:
    model = tmp_path / "m.onnx"
    model.write_bytes(b"abc")
    assert file_sha256(model) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    assert engine_cache_path(tmp_path, "k") == tmp_path / "k.engine"


def _gpu_available() -> bool:
    try:
        import pycuda.driver as cuda
        import tensorrt  # noqa: F401

        cuda.init()
        return cuda.Device.count() > 0
    except Exception:
        return False


def test_without_gpu_the_backend_says_why(tmp_path) -> None:
    if _gpu_available():
        pytest.skip("a GPU is present; the refusal path is not reachable")
    from lipsync_service.inference.tensorrt import build_engine

    with pytest.raises(InferenceUnavailable, match="CUDA|tensorrt|GPU"):
        build_engine(tmp_path / "m.onnx", 8)


@pytest.mark.gpu
@pytest.mark.skipif(not _gpu_available(), reason=NEEDS_GPU)
def test_engine_build_cache_and_parity_with_onnxruntime(tmp_path) -> None:
    from lipsync_service.inference.onnxruntime import OnnxRuntimeBackend
    from lipsync_service.inference.repository import ONNX_FILE, model_version_dir
    from lipsync_service.inference.tensorrt import TensorRTBackend, build_engine
    from lipsync_service.settings import DEFAULT_MODEL_REPOSITORY

    onnx_path = model_version_dir(DEFAULT_MODEL_REPOSITORY, "opening_warp_rgb96") / ONNX_FILE
    engine = build_engine(onnx_path, 8, fp16=False, cache_dir=tmp_path)
    mtime = engine.stat().st_mtime_ns
    assert build_engine(onnx_path, 8, fp16=False, cache_dir=tmp_path) == engine
    assert engine.stat().st_mtime_ns == mtime  # reused, not rebuilt
    trt_backend = TensorRTBackend(engine)
    ort_backend = OnnxRuntimeBackend(onnx_path)
    rng = np.random.default_rng(0)
    for batch in (1, 8, 11):
        face = rng.random((batch, 6, 96, 96), dtype=np.float32)
        mel = rng.normal(size=(batch, 1, 80, 16)).astype(np.float32)
        assert float(np.abs(trt_backend.infer(face, mel) - ort_backend.infer(face, mel)).max()) < 1e-3
    trt_backend.close()


class _FakeEngine:
    """The part of a tensorrt.ICudaEngine that engine_contract reads: I/O tensor names and modes."""

    def __init__(self, inputs: list[str], outputs: list[str]) -> None:
        self._names = [*inputs, *outputs]
        self._inputs = set(inputs)

    @property
    def num_io_tensors(self) -> int:
        return len(self._names)

    def get_tensor_name(self, index: int) -> str:
        return self._names[index]

    def get_tensor_mode(self, name: str) -> str:
        return "in" if name in self._inputs else "out"


class _FakeTrt:
    class TensorIOMode:
        INPUT = "in"
        OUTPUT = "out"


def test_engine_contract_comes_from_the_engines_tensor_names() -> None:
    from lipsync_service.errors import InferenceError
    from lipsync_service.inference.base import OutputContract
    from lipsync_service.inference.tensorrt import engine_contract

    assert engine_contract(_FakeEngine(["face", "mel"], ["output"]), _FakeTrt) is OutputContract.RGB_FACE
    assert engine_contract(_FakeEngine(["mel"], ["lip_shape"]), _FakeTrt) is OutputContract.LIP_SHAPE
    with pytest.raises(InferenceError, match=r"inputs \['mel'\] and outputs \['output'\]"):
        engine_contract(_FakeEngine(["mel"], ["output"]), _FakeTrt)


@pytest.mark.gpu
@pytest.mark.skipif(not _gpu_available(), reason=NEEDS_GPU)
@pytest.mark.parametrize("columns", [2, 5])
def test_lip_shape_engine_is_detected_and_matches_onnxruntime(tmp_path, columns: int) -> None:
    from lipsync_service.inference.base import OutputContract
    from lipsync_service.inference.tensorrt import TensorRTBackend, build_engine
    from tests.triton.tiny_models import mel_batch, ort_lip_shape, write_lip_shape_onnx

    onnx_path = write_lip_shape_onnx(tmp_path / "shape.onnx", columns=columns)
    backend = TensorRTBackend(build_engine(onnx_path, 4, fp16=False, cache_dir=tmp_path), name="shape")
    try:
        spec = backend.spec
        assert (spec.contract, spec.face_size, spec.shape_columns, spec.max_batch_size) == (
            OutputContract.LIP_SHAPE, 0, columns, 4)
        for batch in (1, 4, 11):  # 11: split 4 + 4 + 3 and joined in order
            mel = mel_batch(batch, seed=batch)
            got = backend.infer(None, mel)
            assert got.shape == (batch, columns)
            assert float(np.abs(got - ort_lip_shape(onnx_path, mel)).max()) < 1e-3
    finally:
        backend.close()

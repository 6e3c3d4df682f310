"""ONNX export: dynamic batch, contract names, parity with PyTorch within 1e-4 (fp32)."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnx")

from lipsync_models.export import export_onnx  # noqa: E402
from lipsync_models.generator import GeneratorConfig, build_generator  # noqa: E402
from lipsync_models.wav2lip import Wav2Lip  # noqa: E402
from lipsync_service.inference.onnxruntime import OnnxRuntimeBackend  # noqa: E402
from lipsync_service.inference.repository import inspect_onnx  # noqa: E402


def _randomise_batchnorm(model: torch.nn.Module) -> None:
    """Non-trivial running statistics, so the parity check covers BatchNorm folding."""
    gen = torch.Generator().manual_seed(1)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.copy_(torch.randn(module.running_mean.shape, generator=gen) * 0.1)
            module.running_var.copy_(torch.rand(module.running_var.shape, generator=gen) + 0.5)


def _parity(model: torch.nn.Module, path, size: int, tolerance: float = 1e-4) -> None:
    backend = OnnxRuntimeBackend(path, max_batch_size=8)
    assert backend.spec.face_size == size
    rng = np.random.default_rng(0)
    for batch in (1, 3):
        face = rng.random((batch, 6, size, size), dtype=np.float32)
        mel = rng.normal(size=(batch, 1, 80, 16)).astype(np.float32) * 2
        with torch.no_grad():
            expected = model(torch.from_numpy(face), torch.from_numpy(mel)).numpy()
        got = backend.infer(face, mel)
        assert got.shape == (batch, 3, size, size)
        assert float(np.abs(got - expected).max()) < tolerance


@pytest.mark.parametrize("size", [96, 192])
def test_our_generator_exports_with_gru_and_matches_pytorch(tmp_path, size: int) -> None:
    import onnx

    model = build_generator(GeneratorConfig.for_face_size(size), seed=2)
    _randomise_batchnorm(model)
    path = export_onnx(model, tmp_path / "gen.onnx", size, description="test generator")
    ops = {node.op_type for node in onnx.load(str(path)).graph.node}
    assert "GRU" in ops
    contract = inspect_onnx(path)
    assert (contract.face_size, contract.description) == (size, "test generator")
    _parity(model, path, size)


def test_wav2lip_exports_and_matches_pytorch(tmp_path) -> None:
    model = Wav2Lip().eval()
    _randomise_batchnorm(model)
    path = export_onnx(model, tmp_path / "wav2lip.onnx", 96)
    _parity(model, path, 96)


def test_fp16_weight_storage_halves_the_file_and_keeps_float32_io(tmp_path) -> None:
    import onnx

    model = build_generator(GeneratorConfig.for_face_size(96), seed=3)
    _randomise_batchnorm(model)
    full = export_onnx(model, tmp_path / "fp32.onnx", 96, description="g")
    half = export_onnx(model, tmp_path / "fp16.onnx", 96, description="g", fp16_weights=True)
    assert half.stat().st_size < 0.6 * full.stat().st_size
    graph = onnx.load(str(half)).graph
    assert any(init.data_type == onnx.TensorProto.FLOAT16 for init in graph.initializer)
    assert {i.type.tensor_type.elem_type for i in list(graph.input) + list(graph.output)} == {onnx.TensorProto.FLOAT}
    assert inspect_onnx(half).description == "g"
    # Weights rounded to float16, computation in float32: within about one 8-bit grey level of PyTorch.
    _parity(model, half, 96, tolerance=4e-3)

"""The embedded ONNX Runtime backend and the backend factory, on the committed default model (no torch needed)."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from lipsync_service.errors import InferenceError, InferenceUnavailable
from lipsync_service.inference import build_backend
from lipsync_service.inference.base import OutputContract
from lipsync_service.inference.onnxruntime import OnnxRuntimeBackend
from lipsync_service.server.status import status_for
from lipsync_service.settings import DEFAULT_MODEL_REPOSITORY, Settings


def _inputs(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.random((n, 6, 96, 96), dtype=np.float32), rng.normal(size=(n, 1, 80, 16)).astype(np.float32)


def test_default_settings_give_the_committed_lip_shape_model() -> None:
    backend = build_backend(Settings(ort_intra_op_threads=1))
    spec = backend.spec
    assert (spec.name, spec.contract, spec.max_batch_size) == ("lipsync_generator", OutputContract.LIP_SHAPE, 16)
    assert spec.description  # the ONNX metadata text (trained weights: models/MODEL_CARD.md)
    _, mel = _inputs(3)
    out = backend.infer(None, mel)
    # Round 5: opening and width z, then the probabilities of a closure, a tuck and rounding.
    assert spec.shape_columns == 5
    assert out.dtype == np.float32 and out.shape == (3, 5)
    assert float(np.abs(out[:, :2]).max()) <= 3.0
    assert float(out[:, 2:].min()) >= 0.0 and float(out[:, 2:].max()) <= 1.0
    # Silence and speech ask for different mouths.
    silence = np.full((1, 1, 80, 16), -4.0, np.float32)
    assert float(backend.infer(None, silence)[0, 0]) < float(backend.infer(None, mel[:1] * 0 + 1.0)[0, 0])
    backend.close()


def test_the_previous_lip_shape_model_still_serves_two_columns() -> None:
    backend = build_backend(Settings(ort_intra_op_threads=1, model_name="lip_shape_round4"))
    assert (backend.spec.contract, backend.spec.shape_columns) == (OutputContract.LIP_SHAPE, 2)
    _, mel = _inputs(2)
    out = backend.infer(None, mel)
    assert out.dtype == np.float32 and out.shape == (2, 2) and float(np.abs(out).max()) <= 3.0
    backend.close()


def test_the_previous_rgb_model_still_serves() -> None:
    backend = build_backend(Settings(ort_intra_op_threads=1, model_name="opening_warp_rgb96"))
    spec = backend.spec
    assert (spec.name, spec.face_size, spec.channel_order, spec.contract) == (
        "opening_warp_rgb96", 96, "bgr", OutputContract.RGB_FACE)
    face, mel = _inputs(2)
    out = backend.infer(face, mel)
    assert out.dtype == np.float32 and out.shape == (2, 3, 96, 96)
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    backend.close()


def test_large_batches_are_split_and_give_the_same_result_per_item() -> None:
    backend = OnnxRuntimeBackend.from_repository(DEFAULT_MODEL_REPOSITORY, "opening_warp_rgb96", max_batch_size=4)
    face, mel = _inputs(10, seed=1)
    whole = backend.infer(face, mel)
    single = np.concatenate([backend.infer(face[i : i + 1], mel[i : i + 1]) for i in range(10)])
    assert whole.shape == (10, 3, 96, 96)
    assert float(np.abs(whole - single).max()) < 1e-5


def test_wrong_shapes_are_an_inference_error() -> None:
    backend = OnnxRuntimeBackend.from_repository(DEFAULT_MODEL_REPOSITORY, "opening_warp_rgb96")
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
    shutil.copytree(DEFAULT_MODEL_REPOSITORY / "opening_warp_rgb96", tmp_path / "g")
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


# The lip_shape contract: mel [B, 1, 80, 16] -> lip_shape [B, 2], on a tiny model built with onnx.helper.


@pytest.mark.parametrize("columns", [2, 5])
def test_lip_shape_model_is_detected_and_equals_onnxruntime(tmp_path, columns: int) -> None:
    from lipsync_service.inference.base import OutputContract
    from tests.triton.tiny_models import lip_shape_reference, mel_batch, ort_lip_shape, write_lip_shape_onnx

    path = write_lip_shape_onnx(tmp_path / "shape" / "1" / "model.onnx", columns=columns)
    backend = OnnxRuntimeBackend(path, max_batch_size=4, intra_op_threads=1)
    spec = backend.spec
    assert (spec.name, spec.contract, spec.face_size, spec.shape_columns, spec.max_batch_size) == (
        "shape", OutputContract.LIP_SHAPE, 0, columns, 4)
    assert spec.output_dims == (columns,)
    assert spec.description == f"shape: tiny lip shape (test) (onnxruntime, lip_shape [B, {columns}])"
    mel = mel_batch(11, seed=2)  # 4 + 4 + 3
    got = backend.infer(None, mel)
    assert got.dtype == np.float32 and got.shape == (11, columns)
    assert float(np.abs(got - ort_lip_shape(path, mel)).max()) <= 1e-6
    singles = np.concatenate([backend.infer(None, mel[i : i + 1]) for i in range(11)])
    assert float(np.abs(got - singles).max()) <= 1e-6  # split and joined in order
    assert float(np.abs(got - lip_shape_reference(mel, columns)).max()) <= 1e-4
    backend.close()


@pytest.mark.parametrize("columns", [1, 3, 4, 6])
def test_a_lip_shape_width_other_than_2_or_5_is_refused_at_load(tmp_path, columns: int) -> None:
    from lipsync_service.errors import InvalidInput
    from lipsync_service.inference.repository import Target, inspect_onnx, write_model
    from tests.triton.tiny_models import write_lip_shape_onnx

    path = write_lip_shape_onnx(tmp_path / "wide.onnx", columns=columns)
    with pytest.raises(InferenceUnavailable, match=rf"lip_shape=\['B', {columns}\].*lip_shape \[B, 2 or 5\]"):
        OnnxRuntimeBackend(path)
    with pytest.raises(InvalidInput, match="do not match the contract lip_shape"):
        inspect_onnx(path)
    with pytest.raises(InvalidInput, match="do not match the contract lip_shape"):
        write_model(Target.PYTHON_ONNX, path, tmp_path / "repo", "wide", gpu=False)


def test_each_contract_refuses_the_other_contracts_inputs(tmp_path) -> None:
    from tests.triton.tiny_models import mel_batch, write_lip_shape_onnx

    shape = OnnxRuntimeBackend(write_lip_shape_onnx(tmp_path / "m.onnx"))
    face, mel = _inputs(2)
    with pytest.raises(InferenceError, match="takes no face input"):
        shape.infer(face, mel)
    with pytest.raises(InferenceError, match=r"mel \(2, 1, 80, 8\)"):
        shape.infer(None, mel_batch(2)[..., :8])
    rgb = OnnxRuntimeBackend.from_repository(DEFAULT_MODEL_REPOSITORY, "opening_warp_rgb96")
    with pytest.raises(InferenceError, match="rgb_face contract.*a face batch is required"):
        rgb.infer(None, mel)


def test_names_that_fit_no_contract_fail_at_load(tmp_path) -> None:
    from tests.triton.tiny_models import write_lip_shape_onnx

    path = write_lip_shape_onnx(tmp_path / "odd.onnx", output_name="mouth", contract_meta=False)
    with pytest.raises(InferenceError, match=r"inputs \['mel'\] and outputs \['mouth'\], which fit no generator"):
        OnnxRuntimeBackend(path)


def test_repository_states_the_contract_and_tensor_names_decide_without_it(tmp_path) -> None:
    from google.protobuf import text_format

    from lipsync_service.inference.base import CONTRACT_PARAMETER, OutputContract
    from lipsync_service.inference.repository import (
        CONFIG_FILE,
        Target,
        config_contract,
        read_model_config,
        write_model,
    )
    from tests.triton.tiny_models import write_lip_shape_onnx

    onnx_path = write_lip_shape_onnx(tmp_path / "src.onnx")
    folder = write_model(Target.PYTHON_ONNX, onnx_path, tmp_path / "repo", "shape", max_batch=8, gpu=False)
    config = read_model_config(folder)
    assert config.parameters[CONTRACT_PARAMETER].string_value == "lip_shape"
    assert [(t.name, list(t.dims)) for t in config.input] == [("mel", [1, 80, 16])]
    assert [(t.name, list(t.dims)) for t in config.output] == [("lip_shape", [2])]
    assert config_contract(config) is OutputContract.LIP_SHAPE
    assert OnnxRuntimeBackend.from_repository(tmp_path / "repo", "shape").spec.max_batch_size == 8
    del config.parameters[CONTRACT_PARAMETER]  # a config written by hand: the tensor names decide
    (folder / CONFIG_FILE).write_text(text_format.MessageToString(config))
    assert config_contract(config) is OutputContract.LIP_SHAPE
    assert OnnxRuntimeBackend.from_repository(tmp_path / "repo", "shape").spec.contract is OutputContract.LIP_SHAPE
    config.parameters[CONTRACT_PARAMETER].string_value = "rgb_face"  # stated, but the tensors say otherwise
    (folder / CONFIG_FILE).write_text(text_format.MessageToString(config))
    with pytest.raises(InferenceError, match="states lipsync_contract 'rgb_face' but its tensors are those of"):
        OnnxRuntimeBackend.from_repository(tmp_path / "repo", "shape")


def test_a_five_column_model_gets_a_five_column_config_and_a_mismatch_is_refused(tmp_path) -> None:
    from google.protobuf import text_format

    from lipsync_service.inference.repository import CONFIG_FILE, Target, config_sizes, read_model_config, write_model
    from tests.triton.tiny_models import write_lip_shape_onnx

    wide = write_lip_shape_onnx(tmp_path / "visemes.onnx", columns=5)
    folder = write_model(Target.PYTHON_ONNX, wide, tmp_path / "repo", "visemes", max_batch=8, gpu=False)
    config = read_model_config(folder)
    assert [(t.name, list(t.dims)) for t in config.output] == [("lip_shape", [5])]
    assert (config_sizes(config).face_size, config_sizes(config).shape_columns) == (0, 5)
    assert OnnxRuntimeBackend.from_repository(tmp_path / "repo", "visemes").spec.shape_columns == 5
    config.output[0].dims[:] = [2]  # the config promises 2 columns, the file returns 5
    (folder / CONFIG_FILE).write_text(text_format.MessageToString(config))
    with pytest.raises(InferenceError, match="declares 2 lip_shape columns but .* returns 5"):
        OnnxRuntimeBackend.from_repository(tmp_path / "repo", "visemes")
    config.output[0].dims[:] = [3]  # no lip_shape width at all
    (folder / CONFIG_FILE).write_text(text_format.MessageToString(config))
    with pytest.raises(InferenceError, match=r"config dims .*lip_shape=\[3\] break the lip_shape contract"):
        OnnxRuntimeBackend.from_repository(tmp_path / "repo", "visemes")


def test_rgb_models_keep_the_rgb_contract() -> None:
    from lipsync_service.inference.base import OutputContract
    from lipsync_service.inference.repository import inspect_onnx, model_version_dir

    onnx_path = model_version_dir(DEFAULT_MODEL_REPOSITORY, "opening_warp_rgb96") / "model.onnx"
    found = inspect_onnx(onnx_path)
    assert (found.contract, found.face_size) == (OutputContract.RGB_FACE, 96)

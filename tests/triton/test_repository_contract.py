"""Contract tests: committed config.pbtxt files parse with Triton's schema and match the service and the ONNX."""

from __future__ import annotations

import onnxruntime as ort
import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from lipsync_service.inference.base import CONTRACT_PARAMETER, MEL_BINS, MEL_STEPS, OutputContract, sizes_of
from lipsync_service.inference.onnxruntime import OnnxRuntimeBackend
from lipsync_service.inference.repository import (
    ONNX_FILE,
    Target,
    config_contract,
    inspect_onnx,
    make_model_config,
    read_model_config,
)
from lipsync_service.settings import DEFAULT_MODEL_REPOSITORY

from .conftest import TRITON_REPO

CONFIGS = sorted(TRITON_REPO.glob("*/config.pbtxt"))


def test_committed_repository_holds_the_default_model_and_the_previous_one() -> None:
    """lipsync_generator (the default, lip_shape contract) and opening_warp_rgb96 (the previous default, rgb_face)."""
    assert TRITON_REPO == DEFAULT_MODEL_REPOSITORY
    assert [p.parent.name for p in CONFIGS] == ["lipsync_generator", "opening_warp_rgb96"]
    expected = (("lipsync_generator", OutputContract.LIP_SHAPE), ("opening_warp_rgb96", OutputContract.RGB_FACE))
    for name, contract in expected:
        assert (TRITON_REPO / name / "1" / "model.py").is_file()
        config = text_format.Parse((TRITON_REPO / name / "config.pbtxt").read_text(), mc.ModelConfig())
        assert config.parameters[CONTRACT_PARAMETER].string_value == contract.value


@pytest.mark.parametrize("path", CONFIGS, ids=[p.parent.name for p in CONFIGS])
def test_config_parses_and_matches_the_contract_and_the_onnx_file(path) -> None:
    config = text_format.Parse(path.read_text(), mc.ModelConfig())
    assert config.name == path.parent.name
    assert config.max_batch_size >= 1
    assert config.dynamic_batching.max_queue_delay_microseconds > 0
    assert config.instance_group and all(g.count >= 1 for g in config.instance_group)
    assert all(t.data_type == mc.TYPE_FP32 for t in [*config.input, *config.output])


def test_every_model_states_its_contract_agrees_with_its_onnx_and_loads_embedded() -> None:
    """Each model folder: config.pbtxt states a contract, the ONNX's tensor names and shapes agree, it loads."""
    checked = []
    for model_dir in sorted(p for p in TRITON_REPO.iterdir() if p.is_dir()):
        config = read_model_config(model_dir)
        assert CONTRACT_PARAMETER in config.parameters, f"{model_dir.name}: config.pbtxt states no contract"
        stated = OutputContract(config.parameters[CONTRACT_PARAMETER].string_value)
        assert config_contract(config) is stated
        sizes = sizes_of(stated, {t.name: list(t.dims) for t in [*config.input, *config.output]})
        assert sizes is not None, f"{model_dir.name}: config dims break {stated.signature()}"
        assert [t.name for t in config.input] == list(stated.inputs)
        assert [t.name for t in config.output] == [stated.output]
        versions = sorted(p for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit())
        assert versions, f"{model_dir.name} has no version folder"
        for version in versions:
            onnx_file = version / ONNX_FILE
            assert onnx_file.is_file(), f"{onnx_file} missing"
            found = inspect_onnx(onnx_file)  # names decide the contract; shapes checked with a dynamic batch axis
            assert (found.contract, found.face_size, found.shape_columns) == (
                stated, sizes.face_size, sizes.shape_columns), version
            session = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
            own = {t.name: t.shape for t in [*session.get_inputs(), *session.get_outputs()]}
            for tensor in [*config.input, *config.output]:
                assert own[tensor.name][1:] == list(tensor.dims), tensor.name
            backend = OnnxRuntimeBackend.from_repository(TRITON_REPO, model_dir.name, version.name, intra_op_threads=1)
            spec = backend.spec
            assert (spec.contract, spec.face_size, spec.shape_columns) == (stated, sizes.face_size, sizes.shape_columns)
            backend.close()
        checked.append(model_dir.name)
    assert checked, f"no model folder found in {TRITON_REPO}"


@pytest.mark.parametrize("target", list(Target))
def test_generated_configs_round_trip_through_the_schema(target: Target) -> None:
    config = make_model_config(target, "m", 128, 32, instances=3, gpu=True, description="d")
    parsed = text_format.Parse(text_format.MessageToString(config), mc.ModelConfig())
    assert parsed == config
    kind = parsed.instance_group[0].kind
    expected_kind = mc.ModelInstanceGroup.KIND_CPU if target is Target.PYTHON_ONNX else mc.ModelInstanceGroup.KIND_GPU
    assert kind == expected_kind
    assert list(parsed.dynamic_batching.preferred_batch_size) == [4, 8, 16, 32]
    assert list(parsed.input[0].dims) == [6, 128, 128]
    assert parsed.parameters[CONTRACT_PARAMETER].string_value == "rgb_face"
    if target is Target.TENSORRT_PLAN:
        assert parsed.platform == "tensorrt_plan" and parsed.default_model_filename == "model.plan"


@pytest.mark.parametrize("columns", [2, 5])
@pytest.mark.parametrize("target", list(Target))
def test_lip_shape_configs_have_the_lip_shape_tensors(target: Target, columns: int) -> None:
    config = make_model_config(target, "m", 0, 8, contract=OutputContract.LIP_SHAPE, shape_columns=columns)
    parsed = text_format.Parse(text_format.MessageToString(config), mc.ModelConfig())
    assert [(t.name, list(t.dims)) for t in parsed.input] == [("mel", [1, MEL_BINS, MEL_STEPS])]
    assert [(t.name, list(t.dims)) for t in parsed.output] == [("lip_shape", [columns])]
    assert parsed.parameters[CONTRACT_PARAMETER].string_value == "lip_shape"
    assert config_contract(parsed) is OutputContract.LIP_SHAPE


def test_python_backend_models_are_the_current_template() -> None:
    from lipsync_service.inference.repository import PYTHON_MODEL_SOURCE

    for model_py in TRITON_REPO.glob("*/[0-9]*/model.py"):
        assert model_py.read_text() == PYTHON_MODEL_SOURCE.read_text(), f"{model_py} is stale: rerun build-repo"


@pytest.mark.parametrize("path", CONFIGS, ids=[p.parent.name for p in CONFIGS])
def test_committed_config_describes_the_shipped_weights(path) -> None:
    """Triton reports model_info from config.pbtxt, the embedded backend from the ONNX file: they must agree."""
    onnx = pytest.importorskip("onnx", reason="reading ONNX metadata needs the onnx package (the train extra)")

    config = text_format.Parse(path.read_text(), mc.ModelConfig())
    onnx_model = onnx.load(str(path.parent / "1" / "model.onnx"), load_external_data=False)
    meta = {p.key: p.value for p in onnx_model.metadata_props}
    assert config.parameters["description"].string_value == (meta.get("lipsync.description") or meta["description"])

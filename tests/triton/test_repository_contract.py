"""Contract tests: committed config.pbtxt files parse with Triton's schema and match the service and the ONNX."""

from __future__ import annotations

import onnxruntime as ort
import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from lipsync_service.inference.base import INPUT_FACE, INPUT_MEL, MEL_BINS, MEL_STEPS, OUTPUT_FACE
from lipsync_service.inference.repository import Target, make_model_config
from lipsync_service.settings import DEFAULT_MODEL_REPOSITORY

from .conftest import TRITON_REPO

CONFIGS = sorted(TRITON_REPO.glob("*/config.pbtxt"))


def test_committed_repository_holds_the_default_model() -> None:
    assert TRITON_REPO == DEFAULT_MODEL_REPOSITORY
    assert [p.parent.name for p in CONFIGS] == ["lipsync_generator"]
    assert (TRITON_REPO / "lipsync_generator" / "1" / "model.py").is_file()


@pytest.mark.parametrize("path", CONFIGS, ids=[p.parent.name for p in CONFIGS])
def test_config_parses_and_matches_the_contract_and_the_onnx_file(path) -> None:
    config = text_format.Parse(path.read_text(), mc.ModelConfig())
    assert config.name == path.parent.name
    assert config.max_batch_size >= 1
    assert config.dynamic_batching.max_queue_delay_microseconds > 0
    assert config.instance_group and all(g.count >= 1 for g in config.instance_group)
    inputs = {t.name: t for t in config.input}
    outputs = {t.name: t for t in config.output}
    assert set(inputs) == {INPUT_FACE, INPUT_MEL} and set(outputs) == {OUTPUT_FACE}
    assert all(t.data_type == mc.TYPE_FP32 for t in [*config.input, *config.output])
    size = inputs[INPUT_FACE].dims[-1]
    assert list(inputs[INPUT_FACE].dims) == [6, size, size]
    assert list(inputs[INPUT_MEL].dims) == [1, MEL_BINS, MEL_STEPS]
    assert list(outputs[OUTPUT_FACE].dims) == [3, size, size]
    for version in [p for p in path.parent.iterdir() if p.is_dir() and p.name.isdigit()]:
        onnx_file = version / "model.onnx"
        if not onnx_file.exists():
            continue
        session = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
        own = {i.name: i.shape for i in session.get_inputs()} | {o.name: o.shape for o in session.get_outputs()}
        for name, tensor in {**inputs, **outputs}.items():
            assert own[name][1:] == list(tensor.dims), name
            assert isinstance(own[name][0], str), f"{name}: batch axis must be dynamic"


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
    if target is Target.TENSORRT_PLAN:
        assert parsed.platform == "tensorrt_plan" and parsed.default_model_filename == "model.plan"


def test_python_backend_models_are_the_current_template() -> None:
    from lipsync_service.inference.repository import PYTHON_MODEL_SOURCE

    for model_py in TRITON_REPO.glob("*/[0-9]*/model.py"):
        assert model_py.read_text() == PYTHON_MODEL_SOURCE.read_text(), f"{model_py} is stale: rerun build-repo"


def test_committed_config_describes_the_shipped_weights() -> None:
    """Triton reports model_info from config.pbtxt, the embedded backend from the ONNX file: they must agree."""
    import onnx

    config = text_format.Parse((TRITON_REPO / "lipsync_generator" / "config.pbtxt").read_text(), mc.ModelConfig())
    onnx_model = onnx.load(str(TRITON_REPO / "lipsync_generator" / "1" / "model.onnx"), load_external_data=False)
    meta = {p.key: p.value for p in onnx_model.metadata_props}
    assert config.parameters["description"].string_value == meta["lipsync.description"]

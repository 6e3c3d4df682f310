"""Triton-style model repositories: finding a model's files, reading and writing config.pbtxt, the three targets."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from lipsync_service.errors import InvalidInput
from lipsync_service.inference.base import INPUT_FACE, INPUT_MEL, MEL_BINS, MEL_STEPS, OUTPUT_FACE

CONFIG_FILE = "config.pbtxt"
ONNX_FILE = "model.onnx"
PLAN_FILE = "model.plan"
PYTHON_FILE = "model.py"
DEFAULT_VERSION = "1"
# The Python-backend model is this file, copied beside model.onnx.
PYTHON_MODEL_SOURCE = Path(__file__).resolve().parent / "triton_python_model.py"
# Keys of the ONNX metadata written by lipsync_models.export.
META_FACE_SIZE = "lipsync.face_size"
META_DESCRIPTION = "lipsync.description"
META_CHANNEL_ORDER = "lipsync.channel_order"


class Target(str, Enum):
    """What serves the model: TensorRT plan, ONNX Runtime backend, or Python backend running ONNX Runtime."""

    TENSORRT_PLAN = "tensorrt_plan"
    ONNXRUNTIME_ONNX = "onnxruntime_onnx"
    PYTHON_ONNX = "python_onnx"


@dataclass(frozen=True)
class OnnxContract:
    """What an ONNX generator file declares about itself.

    Attributes:
        face_size: S of its [B, 6, S, S] input.
        description: metadata text for ServiceInfo.model_info.
        channel_order: "bgr" unless the metadata says otherwise.
    """

    face_size: int
    description: str
    channel_order: str = "bgr"


def latest_version(model_dir: Path) -> str:
    """The highest numbered version folder of a model.

    Raises:
        InvalidInput: no numbered version folder exists.
    """
    folders = list(model_dir.iterdir()) if model_dir.is_dir() else []
    versions = [int(p.name) for p in folders if p.is_dir() and p.name.isdigit()]
    if not versions:
        raise InvalidInput(f"model folder {model_dir} has no numbered version folder (e.g. {model_dir}/1)")
    return str(max(versions))


def model_version_dir(repository: Path, name: str, version: str = "") -> Path:
    """<repository>/<name>/<version>, the latest version when version is empty.

    Raises:
        InvalidInput: the model or the version does not exist.
    """
    model_dir = Path(repository) / name
    if not model_dir.is_dir():
        raise InvalidInput(
            f"model {name!r} not found in the model repository {repository} "
            "(set NV_AI4M_LS_MODEL_REPOSITORY / NV_AI4M_LS_MODEL_NAME)"
        )
    version = version or latest_version(model_dir)
    path = model_dir / version
    if not path.is_dir():
        raise InvalidInput(f"version {version} of model {name!r} not found: {path} does not exist")
    return path


def read_model_config(model_dir: Path) -> mc.ModelConfig:
    """Parse <model_dir>/config.pbtxt with Triton's own schema.

    Raises:
        InvalidInput: missing or malformed file.
    """
    path = Path(model_dir) / CONFIG_FILE
    if not path.is_file():
        raise InvalidInput(f"{path} not found")
    try:
        return text_format.Parse(path.read_text(), mc.ModelConfig())
    except text_format.ParseError as exc:
        raise InvalidInput(f"{path} is not a valid Triton model config: {exc}") from exc


def inspect_onnx(path: Path) -> OnnxContract:
    """Check an ONNX file against the generator contract and read its face size and description.

    Args:
        path: the .onnx file.

    Returns:
        Its contract.

    Raises:
        InvalidInput: unreadable file, or tensor names/shapes not those of inference/base.py.
    """
    import onnxruntime as ort

    try:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as exc:  # ONNX Runtime raises several private exception types
        raise InvalidInput(f"cannot load ONNX model {path}: {exc}") from exc
    inputs = {i.name: i for i in session.get_inputs()}
    outputs = {o.name: o for o in session.get_outputs()}
    if set(inputs) != {INPUT_FACE, INPUT_MEL} or OUTPUT_FACE not in outputs:
        raise InvalidInput(
            f"{path} has inputs {sorted(inputs)} and outputs {sorted(outputs)}; "
            f"the generator contract needs inputs {INPUT_FACE!r}, {INPUT_MEL!r} and output {OUTPUT_FACE!r}"
        )
    face_shape = list(inputs[INPUT_FACE].shape)
    mel_shape = list(inputs[INPUT_MEL].shape)
    out_shape = list(outputs[OUTPUT_FACE].shape)
    size = face_shape[2] if len(face_shape) == 4 else None
    if (
        not isinstance(size, int)
        or face_shape[1:] != [6, size, size]
        or mel_shape[1:] != [1, MEL_BINS, MEL_STEPS]
        or out_shape[1:] != [3, size, size]
        or isinstance(face_shape[0], int)
    ):
        raise InvalidInput(
            f"{path} shapes face={face_shape} mel={mel_shape} output={out_shape} do not match the contract "
            f"face [batch, 6, S, S], mel [batch, 1, {MEL_BINS}, {MEL_STEPS}], output [batch, 3, S, S] "
            "with a dynamic batch axis"
        )
    meta = session.get_modelmeta().custom_metadata_map
    return OnnxContract(
        face_size=int(size),
        description=meta.get(META_DESCRIPTION, Path(path).stem),
        channel_order=meta.get(META_CHANNEL_ORDER, "bgr"),
    )


def preferred_batch_sizes(max_batch: int) -> list[int]:
    """Batch sizes the dynamic batcher aims for: powers of two from 4 up to the maximum, and the maximum."""
    sizes = [b for b in (4, 8, 16, 32, 64, 128) if b < max_batch]
    return sizes + [max_batch]


def make_model_config(
    target: Target,
    name: str,
    face_size: int,
    max_batch: int,
    instances: int = 1,
    gpu: bool = True,
    queue_delay_us: int = 2000,
    description: str = "",
    ort_threads: int = 0,
) -> mc.ModelConfig:
    """The config.pbtxt message for a generator model.

    Args:
        target: what serves it.
        name: the model name (folder name).
        face_size: S.
        max_batch: max_batch_size (dims below exclude the batch axis, as Triton expects).
        instances: model instances per device.
        gpu: KIND_GPU (else KIND_CPU) for onnxruntime_onnx; tensorrt_plan is always GPU, python always CPU.
        queue_delay_us: how long the dynamic batcher waits to fill a batch.
        description: model_info text, stored as a parameter.
        ort_threads: intra-op threads of the Python backend's ONNX Runtime session (0: its default).

    Returns:
        The ModelConfig message.
    """
    config = mc.ModelConfig(name=name, max_batch_size=max_batch)
    if target is Target.TENSORRT_PLAN:
        config.platform = "tensorrt_plan"
        config.default_model_filename = PLAN_FILE
        kind = mc.ModelInstanceGroup.KIND_GPU
    elif target is Target.ONNXRUNTIME_ONNX:
        config.platform = "onnxruntime_onnx"
        config.default_model_filename = ONNX_FILE
        kind = mc.ModelInstanceGroup.KIND_GPU if gpu else mc.ModelInstanceGroup.KIND_CPU
    else:
        config.backend = "python"
        kind = mc.ModelInstanceGroup.KIND_CPU
        config.parameters["ort_intra_op_threads"].string_value = str(ort_threads)
    fp32 = mc.TYPE_FP32
    config.input.add(name=INPUT_FACE, data_type=fp32, dims=[6, face_size, face_size])
    config.input.add(name=INPUT_MEL, data_type=fp32, dims=[1, MEL_BINS, MEL_STEPS])
    config.output.add(name=OUTPUT_FACE, data_type=fp32, dims=[3, face_size, face_size])
    config.dynamic_batching.preferred_batch_size.extend(preferred_batch_sizes(max_batch))
    config.dynamic_batching.max_queue_delay_microseconds = queue_delay_us
    config.instance_group.add(kind=kind, count=instances)
    if description:
        config.parameters["description"].string_value = description
    return config


def write_model(
    target: Target,
    onnx_path: Path,
    out: Path,
    name: str,
    max_batch: int = 16,
    instances: int = 1,
    gpu: bool = True,
    queue_delay_us: int = 2000,
    version: str = DEFAULT_VERSION,
    plan_path: Path | None = None,
    ort_threads: int = 0,
) -> Path:
    """Write <out>/<name>/config.pbtxt and <out>/<name>/<version>/ with the target's files.

    Args:
        target: what serves it.
        onnx_path: the generator's ONNX file (its contract is checked).
        out: the repository folder.
        name: model name.
        max_batch: max_batch_size.
        instances: instances per device.
        gpu: see make_model_config.
        queue_delay_us: dynamic batcher delay.
        version: version folder name.
        plan_path: the TensorRT engine for tensorrt_plan (built from onnx_path with build_engine).
        ort_threads: Python backend ONNX Runtime threads.

    Returns:
        The model folder.

    Raises:
        InvalidInput: the ONNX file breaks the contract, or a plan is missing for tensorrt_plan.
    """
    if max_batch < 1 or instances < 1:
        raise InvalidInput("--max-batch and --instances must be at least 1")
    contract = inspect_onnx(Path(onnx_path))
    model_dir = Path(out) / name
    version_dir = model_dir / version
    version_dir.mkdir(parents=True, exist_ok=True)
    if target is Target.TENSORRT_PLAN:
        if plan_path is None or not Path(plan_path).is_file():
            raise InvalidInput("the tensorrt_plan target needs a built engine (see `models build-engine`)")
        shutil.copyfile(plan_path, version_dir / PLAN_FILE)
    else:
        if Path(onnx_path).resolve() != (version_dir / ONNX_FILE).resolve():
            shutil.copyfile(onnx_path, version_dir / ONNX_FILE)
        if target is Target.PYTHON_ONNX:
            shutil.copyfile(PYTHON_MODEL_SOURCE, version_dir / PYTHON_FILE)
    config = make_model_config(
        target,
        name,
        contract.face_size,
        max_batch,
        instances=instances,
        gpu=gpu,
        queue_delay_us=queue_delay_us,
        description=contract.description,
        ort_threads=ort_threads,
    )
    (model_dir / CONFIG_FILE).write_text(text_format.MessageToString(config))
    return model_dir

"""Triton-style model repositories: finding a model's files, reading and writing config.pbtxt, the three targets.

A model has one of two output contracts (inference/base.py OutputContract), told apart by its tensor names;
config.pbtxt also states it in the parameter `lipsync_contract`.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from lipsync_service.errors import InferenceError, InvalidInput
from lipsync_service.inference.base import (
    CONTRACT_PARAMETER,
    LIP_SHAPE_SIZE,
    OutputContract,
    TensorSizes,
    contract_of,
    sizes_of,
)

if TYPE_CHECKING:
    import onnxruntime as ort

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
# Written by lipsync_models.training.shape for lip_shape models.
META_DESCRIPTION_PLAIN = "description"


class Target(str, Enum):
    """What serves the model: TensorRT plan, ONNX Runtime backend, or Python backend running ONNX Runtime."""

    TENSORRT_PLAN = "tensorrt_plan"
    ONNXRUNTIME_ONNX = "onnxruntime_onnx"
    PYTHON_ONNX = "python_onnx"


@dataclass(frozen=True)
class OnnxContract:
    """What an ONNX generator file declares about itself.

    Attributes:
        face_size: S of its [B, 6, S, S] input (0 for LIP_SHAPE).
        description: metadata text for ServiceInfo.model_info.
        channel_order: "bgr" unless the metadata says otherwise.
        contract: which output contract its tensor names give.
        shape_columns: columns of a LIP_SHAPE output (2 or 5; 0 for RGB_FACE).
    """

    face_size: int
    description: str
    channel_order: str = "bgr"
    contract: OutputContract = OutputContract.RGB_FACE
    shape_columns: int = 0


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
    """Check an ONNX file against the generator contracts and read its contract, face size and description.

    Args:
        path: the .onnx file.

    Returns:
        Its contract.

    Raises:
        InvalidInput: unreadable file, or tensor shapes not those of its contract (inference/base.py).
        InferenceError: tensor names that fit no contract.
    """
    import onnxruntime as ort

    try:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as exc:  # ONNX Runtime raises several private exception types
        raise InvalidInput(f"cannot load ONNX model {path}: {exc}") from exc
    return session_contract(session, path)


def session_contract(session: ort.InferenceSession, path: Path) -> OnnxContract:
    """The contract of an open onnxruntime.InferenceSession, from its input and output names and shapes.

    Raises:
        InvalidInput: shapes (or a `lipsync_contract` metadata entry) that disagree with the names' contract.
        InferenceError: tensor names that fit no contract.
    """
    inputs = {i.name: list(i.shape) for i in session.get_inputs()}
    outputs = {o.name: list(o.shape) for o in session.get_outputs()}
    try:
        contract = contract_of(inputs, outputs)
    except InferenceError as exc:
        raise InferenceError(f"{path}: {exc}") from exc
    shapes = {**inputs, **outputs}
    used = {name: shapes[name] for name in contract.dims(0)}
    sizes = sizes_of(contract, {name: shape[1:] for name, shape in used.items()})
    if sizes is None or any(not shape or isinstance(shape[0], int) for shape in used.values()):
        found = ", ".join(f"{name}={shape}" for name, shape in used.items())
        raise InvalidInput(
            f"{path} shapes {found} do not match the contract {contract.value}: {contract.signature()} "
            "with a dynamic batch axis B"
        )
    meta = session.get_modelmeta().custom_metadata_map
    stated = meta.get(CONTRACT_PARAMETER)
    if stated is not None and stated != contract.value:
        raise InvalidInput(f"{path} states the contract {stated!r} but its tensors are those of {contract.value!r}")
    return OnnxContract(
        face_size=sizes.face_size,
        description=meta.get(META_DESCRIPTION) or meta.get(META_DESCRIPTION_PLAIN) or Path(path).stem,
        channel_order=meta.get(META_CHANNEL_ORDER, "bgr"),
        contract=contract,
        shape_columns=sizes.shape_columns,
    )


def config_contract(config: mc.ModelConfig) -> OutputContract:
    """The contract of a Triton model config: its tensor names decide; a `lipsync_contract` parameter must agree.
    (Its sizes: config_sizes.)

    Raises:
        InferenceError: names that fit no contract, or a stated contract that is unknown or disagrees with them.
    """
    contract = contract_of([t.name for t in config.input], [t.name for t in config.output])
    if CONTRACT_PARAMETER in config.parameters:
        stated = config.parameters[CONTRACT_PARAMETER].string_value
        if stated != contract.value:
            raise InferenceError(
                f"model {config.name!r} states {CONTRACT_PARAMETER} {stated!r} but its tensors are those of "
                f"{contract.value!r} ({contract.signature()})"
            )
    return contract


def config_sizes(config: mc.ModelConfig) -> TensorSizes:
    """The face size and lip-shape columns a Triton model config declares (its dims, batch axis excluded).

    Raises:
        InferenceError: names that fit no contract, or dims that break it (e.g. a lip_shape width other than 2 or 5).
    """
    contract = config_contract(config)
    sizes = sizes_of(contract, {t.name: list(t.dims) for t in [*config.input, *config.output]})
    if sizes is None:
        found = ", ".join(f"{t.name}={list(t.dims)}" for t in [*config.input, *config.output])
        raise InferenceError(
            f"model {config.name!r}: config dims {found} break the {contract.value} contract ({contract.signature()})"
        )
    return sizes


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
    contract: OutputContract = OutputContract.RGB_FACE,
    shape_columns: int = LIP_SHAPE_SIZE,
) -> mc.ModelConfig:
    """The config.pbtxt message for a generator model of either contract.

    Args:
        target: what serves it.
        name: the model name (folder name).
        face_size: S (ignored for LIP_SHAPE).
        max_batch: max_batch_size (dims below exclude the batch axis, as Triton expects).
        instances: model instances per device.
        gpu: KIND_GPU (else KIND_CPU) for onnxruntime_onnx; tensorrt_plan is always GPU, python always CPU.
        queue_delay_us: how long the dynamic batcher waits to fill a batch.
        description: model_info text, stored as a parameter.
        ort_threads: intra-op threads of the Python backend's ONNX Runtime session (0: its default).
        contract: the model's contract: its tensors, and the `lipsync_contract` parameter.
        shape_columns: columns of a LIP_SHAPE output (2 or 5; ignored for RGB_FACE).

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
    for tensor, dims in contract.dims(face_size, shape_columns).items():
        tensors = config.input if tensor in contract.inputs else config.output
        tensors.add(name=tensor, data_type=mc.TYPE_FP32, dims=list(dims))
    config.parameters[CONTRACT_PARAMETER].string_value = contract.value
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

    The config's tensors and its `lipsync_contract` parameter follow the ONNX file's contract.

    Args:
        target: what serves it.
        onnx_path: the generator's ONNX file (its contract is detected and checked).
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
        InvalidInput: the ONNX file breaks its contract, or a plan is missing for tensorrt_plan.
        InferenceError: its tensor names fit no contract.
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
        contract=contract.contract,
        shape_columns=contract.shape_columns or LIP_SHAPE_SIZE,
    )
    (model_dir / CONFIG_FILE).write_text(text_format.MessageToString(config))
    return model_dir


# Tags and NIM_TAGS_SELECTOR -------------------------------------------------------------------------------------

#: A model's tags are the config.pbtxt parameters named tag.<key> (string values), e.g. tag.language = "de".
TAG_PREFIX = "tag."
#: The selector key that matches a model's name when the model has no tag of that name.
NAME_KEY = "name"
SELECTOR_ENV = "NIM_TAGS_SELECTOR"


class ModelSelectionError(InvalidInput):
    """NIM_TAGS_SELECTOR is malformed, or matches no model or several: the service cannot start as configured.

    Raised at start-up, for the operator (it names the local model repository); a client never sees it.
    """


@dataclass(frozen=True)
class TaggedModel:
    """A model of a repository and its tags (None: its config could not be read, so it cannot be selected)."""

    name: str
    tags: tuple[tuple[str, str], ...] | None

    def text(self) -> str:
        if self.tags is None:
            return f"{self.name} (config not readable or model not loaded)"
        pairs = ", ".join(f"{k}={v}" for k, v in self.tags)
        return f"{self.name} ({pairs or 'no tags'})"


def model_tags(config: mc.ModelConfig) -> tuple[tuple[str, str], ...]:
    """The tags of a model config (parameters named tag.<key>), sorted by key."""
    return tuple(sorted((key[len(TAG_PREFIX):], param.string_value) for key, param in config.parameters.items()
                        if key.startswith(TAG_PREFIX) and len(key) > len(TAG_PREFIX)))


def parse_tags_selector(text: str) -> dict[str, str]:
    """NIM_TAGS_SELECTOR as a mapping: comma-separated key=value pairs (spaces around each part ignored).

    Raises:
        ModelSelectionError: a pair without "=" or with an empty key, or one key given two values.
    """
    pairs: dict[str, str] = {}
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        key, sep, value = (s.strip() for s in part.partition("="))
        if not sep or not key:
            raise ModelSelectionError(
                f"{SELECTOR_ENV}={text!r}: {part!r} is not a key=value pair; give comma-separated pairs, "
                "e.g. language=de")
        if pairs.get(key, value) != value:
            raise ModelSelectionError(f"{SELECTOR_ENV}={text!r}: {key!r} is given two values")
        pairs[key] = value
    return pairs


def repository_models(repository: Path) -> list[TaggedModel]:
    """The models of a local repository (folders with a config.pbtxt or a numbered version folder), by name."""
    root = Path(repository)
    folders = sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    models = []
    for folder in folders:
        if (folder / CONFIG_FILE).is_file():
            try:
                models.append(TaggedModel(folder.name, model_tags(read_model_config(folder))))
            except InvalidInput:
                models.append(TaggedModel(folder.name, None))
        elif any(p.is_dir() and p.name.isdigit() for p in folder.iterdir()):
            models.append(TaggedModel(folder.name, ()))
    return models


def _matches(model: TaggedModel, selector: dict[str, str]) -> bool:
    if model.tags is None:
        return False
    tags = dict(model.tags)
    for key, value in selector.items():
        if key in tags:
            if tags[key] != value:
                return False
        elif key != NAME_KEY or model.name != value:
            return False
    return True


def select_model(models: list[TaggedModel], selector: dict[str, str], preferred: str, where: str) -> str:
    """The model whose tags match every pair of the selector.

    A pair key=value matches a model with the tag key=value; the key "name" also matches the model's own name
    when it has no tag of that name. When several models match, `preferred` (NV_AI4M_LS_MODEL_NAME) wins if it
    is one of them.

    Args:
        models: the repository's models and tags.
        selector: parse_tags_selector's result (not empty).
        preferred: the configured model name.
        where: the repository, for the message (e.g. "the model repository /models" or "Triton at host:port").

    Raises:
        ModelSelectionError: no model matches, or several do and `preferred` is not one of them; the message
            lists every model and its tags.
    """
    wanted = ",".join(f"{k}={v}" for k, v in selector.items())
    found = [m.name for m in models if _matches(m, selector)]
    if len(found) == 1:
        return found[0]
    if preferred in found:
        return preferred
    available = "; ".join(m.text() for m in models) or "none"
    if not found:
        raise ModelSelectionError(
            f"{SELECTOR_ENV}={wanted} matches no model in {where}; available models and their tags: {available}. "
            "Tags are config.pbtxt parameters named tag.<key>, e.g. "
            'parameters { key: "tag.language" value { string_value: "de" } }')
    raise ModelSelectionError(
        f"{SELECTOR_ENV}={wanted} matches several models in {where}: {', '.join(found)}; add a pair that tells "
        f"them apart, or set NV_AI4M_LS_MODEL_NAME to one of them. Available models and their tags: {available}")

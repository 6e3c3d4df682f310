"""The generator contracts (docs/models-contract.md#generator-contract, #lip-shape) and the interface every
inference backend implements."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import TypeVar

import numpy as np

from lipsync_service.errors import InferenceError

# Tensor names of the Triton model `lipsync_generator` and of the ONNX graph.
INPUT_FACE = "face"
INPUT_MEL = "mel"
OUTPUT_FACE = "output"
OUTPUT_LIP_SHAPE = "lip_shape"
MEL_BINS = 80
MEL_STEPS = 16
# Columns of a lip_shape output: the two z-scores, optionally followed by three viseme probabilities.
LIP_SHAPE_COLUMNS = ("opening_z", "width_z", "closure", "tuck", "round")
LIP_SHAPE_SIZE = 2
LIP_SHAPE_VISEME_SIZE = len(LIP_SHAPE_COLUMNS)
LIP_SHAPE_WIDTHS = (LIP_SHAPE_SIZE, LIP_SHAPE_VISEME_SIZE)
# The config.pbtxt parameter (and ONNX metadata key) that states a model's contract.
CONTRACT_PARAMETER = "lipsync_contract"
# A face size: the number of pixels, or a name for it in text.
_Size = TypeVar("_Size", bound=int | str)


class OutputContract(str, Enum):
    """What a generator model takes and returns; read from its tensor names."""

    RGB_FACE = "rgb_face"  # face + mel -> output [B, 3, S, S]
    LIP_SHAPE = "lip_shape"  # mel -> lip_shape [B, C], C = 2 or 5

    @property
    def inputs(self) -> tuple[str, ...]:
        """Input tensor names, in the order they are sent."""
        return (INPUT_FACE, INPUT_MEL) if self is OutputContract.RGB_FACE else (INPUT_MEL,)

    @property
    def output(self) -> str:
        """The output tensor name."""
        return OUTPUT_FACE if self is OutputContract.RGB_FACE else OUTPUT_LIP_SHAPE

    def dims(self, face_size: _Size, columns: int | _Size = LIP_SHAPE_SIZE) -> dict[str, tuple[int | _Size, ...]]:
        """Per-item dims (without the batch axis) of every tensor, inputs first.

        face_size is ignored for LIP_SHAPE, columns (the lip_shape output's width, 2 or 5) for RGB_FACE; a name
        such as "S" in place of a size gives the dims for display.
        """
        dims: dict[str, tuple[int | _Size, ...]] = {INPUT_MEL: (1, MEL_BINS, MEL_STEPS)}
        if self is OutputContract.RGB_FACE:
            dims = {INPUT_FACE: (6, face_size, face_size), **dims, OUTPUT_FACE: (3, face_size, face_size)}
        else:
            dims[OUTPUT_LIP_SHAPE] = (columns,)
        return dims

    def signature(self, face_size: int | str = "S", columns: int | str = "2 or 5") -> str:
        """The tensors as text, e.g. "mel [B, 1, 80, 16] -> lip_shape [B, 2 or 5]"."""
        dims = {name: ", ".join(str(d) for d in shape)
                for name, shape in self.dims(face_size, columns).items()}
        inputs = " + ".join(f"{name} [B, {dims[name]}]" for name in self.inputs)
        return f"{inputs} -> {self.output} [B, {dims[self.output]}]"


@dataclass(frozen=True)
class ModelSpec:
    """What a generator model expects, read from the model itself at start-up.

    Attributes:
        name: model name (Triton) or file stem (embedded).
        face_size: S of the [B, 6, S, S] face input; 0 for LIP_SHAPE models.
        max_batch_size: the largest batch the backend accepts.
        channel_order: "bgr" for Wav2Lip checkpoints and our own models.
        description: short text for ServiceInfo.model_info.
        contract: what the model takes and returns.
        shape_columns: LIP_SHAPE: columns of each output row, LIP_SHAPE_SIZE (opening_z, width_z) or
            LIP_SHAPE_VISEME_SIZE (those, then closure, tuck, round); left at 0 it becomes LIP_SHAPE_SIZE.
            RGB_FACE: 0.
    """

    name: str
    face_size: int
    max_batch_size: int
    channel_order: str = "bgr"
    description: str = ""
    contract: OutputContract = OutputContract.RGB_FACE
    shape_columns: int = 0

    def __post_init__(self) -> None:
        if self.contract is OutputContract.LIP_SHAPE and not self.shape_columns:
            object.__setattr__(self, "shape_columns", LIP_SHAPE_SIZE)
        elif self.contract is OutputContract.RGB_FACE:
            object.__setattr__(self, "shape_columns", 0)
        if self.contract is OutputContract.LIP_SHAPE and self.shape_columns not in LIP_SHAPE_WIDTHS:
            raise InferenceError(
                f"a lip_shape model has {' or '.join(map(str, LIP_SHAPE_WIDTHS))} output columns, "
                f"not {self.shape_columns}"
            )

    @property
    def output_dims(self) -> tuple[int, ...]:
        """Per-item dims of the output tensor (without the batch axis)."""
        return tuple(int(d) for d in self.contract.dims(self.face_size, self.shape_columns)[self.contract.output])


def contract_of(input_names: Iterable[str], output_names: Iterable[str]) -> OutputContract:
    """Which contract a model has, from its tensor names; raises InferenceError naming what was found when neither fits.

    The inputs must be exactly the contract's; its output must be among the model's outputs.
    """
    inputs, outputs = sorted(input_names), sorted(output_names)
    for contract in OutputContract:
        if inputs == sorted(contract.inputs) and contract.output in outputs:
            return contract
    expected = "; ".join(f"{c.value}: {c.signature()}" for c in OutputContract)
    raise InferenceError(
        f"the model has inputs {inputs} and outputs {outputs}, which fit no generator contract ({expected})"
    )


@dataclass(frozen=True)
class TensorSizes:
    """The free sizes of a contract, as a model's tensor dims give them.

    Attributes:
        face_size: S of an RGB_FACE model; 0 for LIP_SHAPE.
        shape_columns: columns of a LIP_SHAPE model's output (2 or 5); 0 for RGB_FACE.
    """

    face_size: int
    shape_columns: int


def sizes_label(contract: OutputContract, sizes: TensorSizes) -> str:
    """The sizes as the backends' descriptions show them: "S=96", or "lip_shape [B, 5]"."""
    if contract is OutputContract.RGB_FACE:
        return f"S={sizes.face_size}"
    return f"{contract.value} [B, {sizes.shape_columns}]"


def sizes_of(contract: OutputContract, dims: Mapping[str, Sequence]) -> TensorSizes | None:
    """The face size and output columns that a model's per-item tensor dims (batch axis removed) imply; None when
    the dims break the contract (for LIP_SHAPE: an output width other than 2 or 5)."""
    size = columns = 0
    if contract is OutputContract.RGB_FACE:
        face = list(dims.get(INPUT_FACE, ()))
        last = face[-1] if len(face) == 3 else None
        if not isinstance(last, int) or last <= 0:
            return None
        size = last
    else:
        out = list(dims.get(OUTPUT_LIP_SHAPE, ()))
        columns = out[0] if len(out) == 1 else -1
        if columns not in LIP_SHAPE_WIDTHS:
            return None
    expected = contract.dims(size, columns)
    if all(list(dims.get(name, ())) == list(shape) for name, shape in expected.items()):
        return TensorSizes(size, columns)
    return None


class GeneratorBackend(ABC):
    """Runs the generator on batches. Implementations: ONNX Runtime, Triton, TensorRT.

    Errors are translated at this boundary: InferenceUnavailable when the server cannot be
    reached, InferenceError for a failed request.
    """

    @property
    @abstractmethod
    def spec(self) -> ModelSpec:
        """The loaded model's contract."""

    @abstractmethod
    def infer(self, face: np.ndarray | None, mel: np.ndarray) -> np.ndarray:
        """Run the generator on any number of items; the backend splits them at its own batch limit.

        Args:
            face: RGB_FACE: float32 [B, 6, S, S] in [0, 1] (masked target crop, then reference crop);
                LIP_SHAPE: None.
            mel: float32 [B, 1, 80, 16].

        Returns:
            RGB_FACE: float32 [B, 3, S, S] in [0, 1]; LIP_SHAPE: float32 [B, C] (opening_z, width_z, and when
            C = 5 closure, tuck, round; spec.shape_columns is C).

        Raises:
            InferenceUnavailable: the backend cannot be reached.
            InferenceError: the request failed.
        """

    def close(self) -> None:  # noqa: B027 - optional: a backend that holds nothing keeps this no-op
        """Release sessions, channels and device memory."""


def check_batch(face: np.ndarray | None, mel: np.ndarray, face_size: int) -> None:
    """Refuse arrays that break the generator contract, naming the expected shapes; face None checks mel alone.

    Raises:
        InferenceError: shapes differ from [B, 6, S, S] / [B, 1, 80, 16] with one B >= 1.
    """
    mel_ok = mel.ndim == 4 and mel.shape[1:] == (1, MEL_BINS, MEL_STEPS) and mel.shape[0] > 0
    if face is None:
        if not mel_ok:
            raise InferenceError(
                f"generator input shape mel {mel.shape} does not match [B, 1, {MEL_BINS}, {MEL_STEPS}] with B >= 1"
            )
        return
    if not mel_ok or face.ndim != 4 or face.shape[1:] != (6, face_size, face_size) or face.shape[0] != mel.shape[0]:
        raise InferenceError(
            f"generator input shapes face {face.shape} / mel {mel.shape} do not match "
            f"[B, 6, {face_size}, {face_size}] / [B, 1, {MEL_BINS}, {MEL_STEPS}] with the same B >= 1"
        )


def check_request(spec: ModelSpec, face: np.ndarray | None, mel: np.ndarray) -> None:
    """check_batch, after checking that a face is given exactly when the model's contract takes one.

    Raises:
        InferenceError: a face for a LIP_SHAPE model, none for an RGB_FACE model, or shapes that break the contract.
    """
    takes_face = INPUT_FACE in spec.contract.inputs
    if takes_face != (face is not None):
        raise InferenceError(
            f"model {spec.name!r} has the {spec.contract.value} contract ({spec.contract.signature()}): "
            f"{'a face batch is required' if takes_face else 'it takes no face input (pass face=None)'}"
        )
    check_batch(face, mel, spec.face_size)


def model_feeds(face: np.ndarray | None, mel: np.ndarray) -> dict[str, np.ndarray]:
    """The input tensors by name, C-contiguous float32, in contract order (face first when given)."""
    feeds = {} if face is None else {INPUT_FACE: np.ascontiguousarray(face, dtype=np.float32)}
    feeds[INPUT_MEL] = np.ascontiguousarray(mel, dtype=np.float32)
    return feeds


def run_in_batches(face: np.ndarray | None, mel: np.ndarray, limit: int,
                   run: Callable[[np.ndarray | None, np.ndarray], np.ndarray]) -> np.ndarray:
    """Call run on consecutive slices of at most limit items and join the outputs in order (face may be None).

    The backend is the one place that knows its batch limit (the model config's max_batch_size), so
    callers hand it all their items and this splits them once.
    """
    total = mel.shape[0]
    if total <= limit:
        return run(face, mel)
    parts = [run(None if face is None else face[i : i + limit], mel[i : i + limit]) for i in range(0, total, limit)]
    return np.concatenate(parts)

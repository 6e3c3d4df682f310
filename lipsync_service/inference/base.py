"""The generator contract (docs/models-contract.md#generator-contract) and the interface every inference backend implements."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

# Tensor names of the Triton model `lipsync_generator` and of the ONNX graph.
INPUT_FACE = "face"
INPUT_MEL = "mel"
OUTPUT_FACE = "output"
MEL_BINS = 80
MEL_STEPS = 16


@dataclass(frozen=True)
class ModelSpec:
    """What a generator model expects, read from the model itself at start-up.

    Attributes:
        name: model name (Triton) or file stem (embedded).
        face_size: S of the [B, 6, S, S] face input.
        max_batch_size: the largest batch the backend accepts.
        channel_order: "bgr" for Wav2Lip checkpoints and our own models.
        description: short text for ServiceInfo.model_info.
    """

    name: str
    face_size: int
    max_batch_size: int
    channel_order: str = "bgr"
    description: str = ""


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
    def infer(self, face: np.ndarray, mel: np.ndarray) -> np.ndarray:
        """Run the generator on any number of faces; the backend splits them at its own batch limit.

        Args:
            face: float32 [B, 6, S, S] in [0, 1] (masked target crop, then reference crop).
            mel: float32 [B, 1, 80, 16].

        Returns:
            float32 [B, 3, S, S] in [0, 1].

        Raises:
            InferenceUnavailable: the backend cannot be reached.
            InferenceError: the request failed.
        """

    def close(self) -> None:
        """Release sessions, channels and device memory."""


def check_batch(face: np.ndarray, mel: np.ndarray, face_size: int) -> None:
    """Refuse arrays that break the generator contract, naming the expected shapes.

    Raises:
        InferenceError: shapes differ from [B, 6, S, S] / [B, 1, 80, 16] with one B >= 1.
    """
    from lipsync_service.errors import InferenceError

    if (
        face.ndim != 4
        or face.shape[1:] != (6, face_size, face_size)
        or mel.ndim != 4
        or mel.shape[1:] != (1, MEL_BINS, MEL_STEPS)
        or face.shape[0] != mel.shape[0]
        or face.shape[0] == 0
    ):
        raise InferenceError(
            f"generator input shapes face {face.shape} / mel {mel.shape} do not match "
            f"[B, 6, {face_size}, {face_size}] / [B, 1, {MEL_BINS}, {MEL_STEPS}] with the same B >= 1"
        )


def run_in_batches(face: np.ndarray, mel: np.ndarray, limit: int,
                   run: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> np.ndarray:
    """Call run on consecutive slices of at most limit faces and join the outputs in order.

    The backend is the one place that knows its batch limit (the model config's max_batch_size), so
    callers hand it all their faces and this splits them once.
    """
    if face.shape[0] <= limit:
        return run(face, mel)
    parts = [run(face[i : i + limit], mel[i : i + limit]) for i in range(0, face.shape[0], limit)]
    return np.concatenate(parts)

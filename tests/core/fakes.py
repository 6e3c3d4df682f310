"""Test doubles for the core tests: in-memory speech and a generator backend that is not a model."""

from __future__ import annotations

import numpy as np

from lipsync_service.inference.base import GeneratorBackend, ModelSpec, OutputContract
from lipsync_service.media.types import MODEL_SAMPLE_RATE


class ArraySpeech:
    """SpeechAudio over a numpy array; with streaming=True the duration is unknown until the end is waited for."""

    sample_rate = MODEL_SAMPLE_RATE

    def __init__(self, samples: np.ndarray, streaming: bool = False) -> None:
        self.samples = np.asarray(samples, dtype=np.float32)
        self._ended = not streaming
        self.waited_until = 0.0

    def wait_for(self, end_s: float) -> None:
        self.waited_until = max(self.waited_until, end_s)
        if end_s * self.sample_rate >= len(self.samples):
            self._ended = True

    def read(self, start_s: float, end_s: float) -> np.ndarray:
        a = int(round(start_s * self.sample_rate))
        b = int(round(end_s * self.sample_rate))
        out = np.zeros(max(0, b - a), np.float32)
        lo, hi = max(a, 0), min(b, len(self.samples))
        if hi > lo:
            out[lo - a : hi - a] = self.samples[lo:hi]
        return out

    @property
    def duration_s(self) -> float | None:
        return len(self.samples) / self.sample_rate if self._ended else None


class EchoBackend(GeneratorBackend):
    """Returns the reference half of its input, brightened by the mel's mean; a test stand-in, not a model."""

    def __init__(self, face_size: int = 96, max_batch_size: int = 4, gain: float = 0.0) -> None:
        self._spec = ModelSpec(name="echo", face_size=face_size, max_batch_size=max_batch_size,
                               description="echo test backend")
        self.gain = gain
        self.batches: list[int] = []

    @property
    def spec(self) -> ModelSpec:
        return self._spec

    def infer(self, face: np.ndarray, mel: np.ndarray) -> np.ndarray:
        assert face.dtype == np.float32 and mel.dtype == np.float32
        assert face.shape[1:] == (6, self._spec.face_size, self._spec.face_size)
        assert mel.shape[1:] == (1, 80, 16) and len(mel) == len(face)
        assert len(face) <= self._spec.max_batch_size
        self.batches.append(len(face))
        shift = self.gain * (mel.mean(axis=(1, 2, 3)) + 4.0) / 8.0
        return np.clip(face[:, 3:6] + shift[:, None, None, None], 0.0, 1.0).astype(np.float32)


class ShapeBackend(GeneratorBackend):
    """A lip-shape backend whose opening follows the mel window's mean level; a test stand-in, not a model.

    With columns=5 the viseme columns follow the level too (closure falls, tuck and round rise with it), so every
    row differs; `returned` keeps every row it answered.
    """

    def __init__(self, max_batch_size: int = 4, gain: float = 3.0, columns: int = 2) -> None:
        self._spec = ModelSpec(name="shape", face_size=0, max_batch_size=max_batch_size,
                               description="shape test backend", contract=OutputContract.LIP_SHAPE,
                               shape_columns=columns)
        self.gain = gain
        self.columns = columns
        self.batches: list[int] = []
        self.returned: list[np.ndarray] = []

    @property
    def spec(self) -> ModelSpec:
        return self._spec

    def infer(self, face: np.ndarray | None, mel: np.ndarray) -> np.ndarray:
        assert face is None and mel.dtype == np.float32 and mel.shape[1:] == (1, 80, 16)
        self.batches.append(len(mel))
        level = (mel.mean(axis=(1, 2, 3)) + 2.0) / 2.0
        opening = np.clip(self.gain * level, -3.0, 3.0)
        rows = [opening, np.zeros_like(opening)]
        if self.columns > 2:
            p = 1.0 / (1.0 + np.exp(-level))
            rows += [1.0 - p, 0.5 * p, 0.25 + 0.5 * p][: self.columns - 2]
        out = np.stack(rows, axis=1).astype(np.float32)
        self.returned.extend(out)
        return out

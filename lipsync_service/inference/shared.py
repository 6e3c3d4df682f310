"""The process's one generator backend, shared by every stream, with a per-stream handle."""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np

from lipsync_service.errors import InferenceUnavailable
from lipsync_service.inference.base import (
    MEL_BINS,
    MEL_STEPS,
    GeneratorBackend,
    ModelSpec,
    OutputContract,
)

# observe(seconds, batch_size) after each successful generator call.
InferenceObserver = Callable[[float, int], None]


class SharedBackend(GeneratorBackend):
    """The process's one generator backend, called concurrently by every stream.

    Every backend is safe to call from several threads (ONNX Runtime sessions are; Triton keeps one client
    per thread; TensorRT serialises on a lock), so one model copy serves all streams. This wrapper also
    reports each call to the metrics and tells the server when the inference server is unreachable.
    """

    def __init__(self, inner: GeneratorBackend, observe: InferenceObserver | None = None,
                 on_unavailable: Callable[[InferenceUnavailable], None] | None = None) -> None:
        """Args:
            inner: the real backend (owned: closed by close()).
            observe: called with (seconds, batch size) after each successful call.
            on_unavailable: called (from the calling thread) when a call finds the backend unreachable.
        """
        self._inner = inner
        self._observe = observe
        self._on_unavailable = on_unavailable

    @property
    def spec(self) -> ModelSpec:
        return self._inner.spec

    def infer(self, face: np.ndarray | None, mel: np.ndarray) -> np.ndarray:
        t0 = time.perf_counter()
        try:
            out = self._inner.infer(face, mel)
        except InferenceUnavailable as exc:
            if self._on_unavailable is not None:
                self._on_unavailable(exc)
            raise
        if self._observe is not None:
            self._observe(time.perf_counter() - t0, int(mel.shape[0]))
        return out

    def probe(self) -> None:
        """One generator call on a blank batch of one (of the model's contract), from a thread of its own: does the
        backend answer?

        Raises:
            InferenceUnavailable: it does not (yet).
            InferenceError: it answers with an error.
        """
        spec = self.spec
        face = None
        if spec.contract is OutputContract.RGB_FACE:
            face = np.zeros((1, 6, spec.face_size, spec.face_size), np.float32)
        mel = np.zeros((1, 1, MEL_BINS, MEL_STEPS), np.float32)
        try:
            self._inner.infer(face, mel)
        finally:
            self.release_thread()

    def release_thread(self) -> None:
        """Free what the backend holds for the calling thread (Triton: its client and channel)."""
        release = getattr(self._inner, "release_thread", None)
        if release is not None:
            release()

    def borrow(self) -> GeneratorBackend:
        """A handle for one stream: calls go to this backend, close() releases only the stream's share."""
        return _StreamHandle(self)

    def close(self) -> None:
        self._inner.close()


class _StreamHandle(GeneratorBackend):
    """One stream's view of the shared backend."""

    def __init__(self, shared: SharedBackend) -> None:
        self._shared = shared

    @property
    def spec(self) -> ModelSpec:
        return self._shared.spec

    def infer(self, face: np.ndarray | None, mel: np.ndarray) -> np.ndarray:
        return self._shared.infer(face, mel)

    def close(self) -> None:
        # The processor closes its backend from the job's worker thread, which ends with the stream.
        self._shared.release_thread()

"""Which FrameProcessor a job gets, and the one generator backend per process that all streams share."""

from __future__ import annotations

import importlib
import threading
import time
from collections.abc import Callable

import numpy as np

from lipsync_service.errors import InferenceUnavailable
from lipsync_service.inference.base import MEL_BINS, MEL_STEPS, GeneratorBackend, ModelSpec
from lipsync_service.lipsync.processor import FrameProcessor, PassThroughProcessor
from lipsync_service.logs import get_logger
from lipsync_service.settings import Settings

log = get_logger(__name__)

PASSTHROUGH = "passthrough"
NEURAL = "neural"

# observe(seconds, batch_size) after each successful generator call.
InferenceObserver = Callable[[float, int], None]


def _neural_builder() -> Callable[..., FrameProcessor] | None:
    """core.processor.build_processor, or None while the core is not installed."""
    try:
        module = importlib.import_module("lipsync_service.core.processor")
    except ModuleNotFoundError as exc:
        # Only the core module itself being absent means "not built yet"; a missing dependency inside
        # it is a real error that must surface.
        if exc.name != "lipsync_service.core.processor":
            raise
        return None
    return getattr(module, "build_processor", None)


def uses_backend(settings: Settings) -> bool:
    """True when settings.processor needs a generator backend (the neural core, when installed)."""
    return settings.processor.strip().lower() == NEURAL and _neural_builder() is not None


def build_processor(settings: Settings, backend: GeneratorBackend | None = None) -> FrameProcessor:
    """A processor for one job.

    Args:
        settings: settings.processor chooses: "passthrough", or "neural" (the lip-sync core; falls back to
            pass-through with a warning while the core is not part of this installation).
        backend: the generator backend for the neural processor (closed with the processor); built from
            the settings when None.

    Raises:
        ValueError: an unknown settings.processor value.
        LipsyncError: the core could not build its processor (e.g. the inference backend is unavailable).
    """
    kind = settings.processor.strip().lower()
    if kind == PASSTHROUGH:
        return PassThroughProcessor()
    if kind != NEURAL:
        raise ValueError(f"NV_AI4M_LS_PROCESSOR={settings.processor!r} is not known: use {NEURAL} or {PASSTHROUGH}")
    builder = _neural_builder()
    if builder is None:
        log.warning("the lip-sync core (lipsync_service.core.processor) is not available: "
                    "frames pass through unchanged")
        return PassThroughProcessor()
    return builder(settings) if backend is None else builder(settings, backend=backend)


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

    def infer(self, face: np.ndarray, mel: np.ndarray) -> np.ndarray:
        t0 = time.perf_counter()
        try:
            out = self._inner.infer(face, mel)
        except InferenceUnavailable as exc:
            if self._on_unavailable is not None:
                self._on_unavailable(exc)
            raise
        if self._observe is not None:
            self._observe(time.perf_counter() - t0, int(face.shape[0]))
        return out

    def probe(self) -> None:
        """One generator call on a blank batch of one, from a thread of its own: does the backend answer?

        Raises:
            InferenceUnavailable: it does not (yet).
            InferenceError: it answers with an error.
        """
        size = self.spec.face_size
        face = np.zeros((1, 6, size, size), np.float32)
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

    def infer(self, face: np.ndarray, mel: np.ndarray) -> np.ndarray:
        return self._shared.infer(face, mel)

    def close(self) -> None:
        # The processor closes its backend from the job's worker thread, which ends with the stream.
        self._shared.release_thread()


class ProcessorFactory:
    """Makes one processor per stream, all sharing one generator backend built at warm-up.

    `warm_up` builds the backend and a first processor at start-up so errors show early; that processor is
    handed to the first stream rather than thrown away. Per-stream state (tracking, look-ahead, batches)
    lives in each processor; only the backend is shared.
    """

    def __init__(self, settings: Settings, build: Callable[..., FrameProcessor] = build_processor, *,
                 backend_builder: Callable[[Settings], GeneratorBackend] | None = None,
                 observe: InferenceObserver | None = None) -> None:
        """Args:
            settings: the service settings.
            build: makes a processor: build(settings), or build(settings, backend=handle) when the settings
                need a generator backend.
            backend_builder: makes the shared backend (default: lipsync_service.inference.build_backend).
            observe: called with (seconds, batch size) after each generator call.
        """
        self._settings = settings
        self._build = build
        self._needs_backend = uses_backend(settings)
        self._backend_builder = backend_builder
        self._observe = observe
        self._backend: SharedBackend | None = None
        self._spare: FrameProcessor | None = None
        self._lock = threading.Lock()  # streams create processors from their own threads
        self.model_info = "none"
        #: Set by the server: called from a stream's thread when the inference backend is unreachable.
        self.on_backend_unavailable: Callable[[InferenceUnavailable], None] | None = None

    def _unavailable(self, exc: InferenceUnavailable) -> None:
        hook = self.on_backend_unavailable
        if hook is not None:
            hook(exc)

    def _shared_backend(self) -> SharedBackend | None:
        """The shared backend, built on first use (call with the lock held)."""
        if self._needs_backend and self._backend is None:
            builder = self._backend_builder
            if builder is None:
                from lipsync_service.inference import build_backend as builder
            shared = SharedBackend(builder(self._settings), self._observe, self._unavailable)
            # The start-up checks ran on this (short-lived) thread: let go of its connection.
            shared.release_thread()
            self._backend = shared
            log.info("generator backend %s shared by all streams", shared.spec.description or shared.spec.name)
        return self._backend

    def _make(self) -> FrameProcessor:
        with self._lock:
            backend = self._shared_backend()
        if backend is None:
            return self._build(self._settings)
        return self._build(self._settings, backend=backend.borrow())

    def warm_up(self) -> None:
        """Build the shared backend and a first processor now (blocking; run it off the event loop).

        Raises:
            LipsyncError: the processor or its backend could not be built.
        """
        with self._lock:
            if self._spare is not None:
                return
        spare = self._make()
        with self._lock:
            if self._spare is None:
                self._spare, spare = spare, None
                self.model_info = self._spare.model_info
        if spare is not None:
            spare.close()

    def create(self) -> FrameProcessor:
        """A processor for a new stream (blocking: the first may build the backend)."""
        with self._lock:
            spare, self._spare = self._spare, None
        processor = spare if spare is not None else self._make()
        self.model_info = processor.model_info
        return processor

    def probe(self) -> None:
        """Check that the shared backend answers (blocking); a no-op without one.

        Raises:
            InferenceUnavailable: the backend is unreachable.
            LipsyncError: it answered with an error.
        """
        with self._lock:
            backend = self._backend
        if backend is not None:
            backend.probe()

    def close(self) -> None:
        """Close the spare processor and the shared backend (server shutdown)."""
        with self._lock:
            spare, self._spare = self._spare, None
            backend, self._backend = self._backend, None
        if spare is not None:
            spare.close()
        if backend is not None:
            backend.close()

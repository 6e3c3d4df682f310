"""Which FrameProcessor a job gets, and the factory that gives each stream one over a shared backend."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from lipsync_service.core.processor import FrameProcessor, PassThroughProcessor
from lipsync_service.errors import InferenceUnavailable
from lipsync_service.inference.base import GeneratorBackend, ModelSpec
from lipsync_service.inference.shared import InferenceObserver, SharedBackend
from lipsync_service.settings import Settings

log = logging.getLogger(__name__)

PASSTHROUGH = "passthrough"
NEURAL = "neural"


def uses_backend(settings: Settings) -> bool:
    """True when settings.processor needs a generator backend (the neural processor)."""
    return settings.processor.strip().lower() == NEURAL


def build_processor(settings: Settings, backend: GeneratorBackend | None = None) -> FrameProcessor:
    """A processor for one job.

    Args:
        settings: settings.processor chooses: "passthrough", or "neural" (the lip-sync processor).
        backend: the generator backend for the neural processor (closed with the processor); built from
            the settings when None.

    Raises:
        ValueError: an unknown settings.processor value.
        LipsyncError: the neural processor could not be built (e.g. the inference backend is unavailable).
    """
    kind = settings.processor.strip().lower()
    if kind == PASSTHROUGH:
        return PassThroughProcessor()
    if kind != NEURAL:
        raise ValueError(f"NV_AI4M_LS_PROCESSOR={settings.processor!r} is not known: use {NEURAL} or {PASSTHROUGH}")
    from lipsync_service.core.neural import build_neural_processor

    return build_neural_processor(settings, backend)


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
        #: The shared backend's model (None until built, and for a processor without a model).
        self.model_spec: ModelSpec | None = None
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
                from lipsync_service.inference import build_backend

                builder = build_backend
            shared = SharedBackend(builder(self._settings), self._observe, self._unavailable)
            # The start-up checks ran on this (short-lived) thread: let go of its connection.
            shared.release_thread()
            self._backend = shared
            self.model_spec = shared.spec
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
                self._spare = spare
                self.model_info = spare.model_info
                return
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

"""Which FrameProcessor a job gets: settings.processor -> pass-through or the neural lip-sync core."""

from __future__ import annotations

import importlib
import threading
from collections.abc import Callable

from lipsync_service.lipsync.processor import FrameProcessor, PassThroughProcessor
from lipsync_service.logs import get_logger
from lipsync_service.settings import Settings

log = get_logger(__name__)

PASSTHROUGH = "passthrough"
NEURAL = "neural"


def _neural_builder() -> Callable[[Settings], FrameProcessor] | None:
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


def build_processor(settings: Settings) -> FrameProcessor:
    """A processor for one job.

    Args:
        settings: settings.processor chooses: "passthrough", or "neural" (the lip-sync core; falls back to
            pass-through with a warning while the core is not part of this installation).

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
    return builder(settings)


class ProcessorFactory:
    """Makes one processor per stream; `warm_up` builds the first one at start-up so errors show early.

    The processor built by warm-up is handed to the first stream rather than thrown away, because
    building one may load a model.
    """

    def __init__(self, settings: Settings,
                 build: Callable[[Settings], FrameProcessor] = build_processor) -> None:
        self._settings = settings
        self._build = build
        self._spare: FrameProcessor | None = None
        self._lock = threading.Lock()  # streams create processors from their own threads
        self.model_info = "none"

    def warm_up(self) -> None:
        """Build a processor now (blocking; run it off the event loop).

        Raises:
            LipsyncError: the processor or its backend could not be built.
        """
        with self._lock:
            if self._spare is None:
                self._spare = self._build(self._settings)
                self.model_info = self._spare.model_info

    def create(self) -> FrameProcessor:
        """A processor for a new stream (blocking: it may load a model)."""
        with self._lock:
            spare, self._spare = self._spare, None
        processor = spare if spare is not None else self._build(self._settings)
        self.model_info = processor.model_info
        return processor

    def close(self) -> None:
        with self._lock:
            spare, self._spare = self._spare, None
        if spare is not None:
            spare.close()

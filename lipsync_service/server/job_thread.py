"""The call's pipeline job, run in a thread of its own, its written frames counted in the metrics as they go."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from lipsync_service.core.factory import ProcessorFactory
from lipsync_service.logs import call_log as log
from lipsync_service.media.pipe import ByteStream
from lipsync_service.server.intake import Intake
from lipsync_service.server.metrics import Metrics
from lipsync_service.server.threads import start_thread
from lipsync_service.settings import Settings

if TYPE_CHECKING:
    from lipsync_service.job import JobConfig
    from lipsync_service.pipeline import JobInputs, JobResult

# Seconds a worker thread gets to stop after cancellation before we give up waiting (it is a daemon).
_JOIN_TIMEOUT_S = 30.0


class JobThread:
    """Runs one call's job off the event loop, once the intake has its inputs; `done` holds its outcome."""

    def __init__(self, settings: Settings, processors: ProcessorFactory, metrics: Metrics,
                 sink: Callable[[bytes], None], on_done: Callable[[], None], name: str) -> None:
        self._settings = settings
        self._processors = processors
        self._metrics = metrics
        self._sink = sink  # receives the output MP4 bytes (blocks while the client reads slower)
        self._on_done = on_done
        self._name = name
        self.cancel = threading.Event()  # set to stop the job (it then raises Cancelled)
        self.done: asyncio.Future[JobResult] | None = None  # None until started
        self.frames_reported = 0  # output frames already counted in frames_processed
        self._thread: threading.Thread | None = None
        self._inputs: JobInputs | None = None  # until the thread takes them
        self._cfg: JobConfig | None = None

    def start(self, video: ByteStream | Path, intake: Intake) -> None:
        from lipsync_service import pipeline

        assert intake.cfg is not None and intake.speech is not None
        self._inputs = pipeline.JobInputs(video=video, speech=intake.speech, background=intake.background,
                                          speakers=intake.speakers)
        self._cfg = intake.cfg
        self._thread, self.done = start_thread(self._work, self._name)
        self.done.add_done_callback(lambda _: self._on_done())

    def _work(self) -> JobResult:
        # A method, not a closure: a failed job's traceback keeps the functions it ran alive (clearing a frame
        # keeps its function), and a closure would keep what it captured, the client's inputs among them.
        from lipsync_service import pipeline

        inputs, self._inputs = self._inputs, None
        assert inputs is not None and self._cfg is not None
        processor = self._processors.create()
        job = pipeline.Job(self._cfg, self._settings, processor, self._sink, self.cancel, progress=self._progress)
        return job.run(inputs)

    def join(self) -> None:
        """Wait for the thread to end once `cancel` is set; blocks, so call it off the event loop."""
        thread = self._thread
        if thread is not None:
            thread.join(_JOIN_TIMEOUT_S)
            if thread.is_alive():
                log.error("the job thread did not stop within %g s", _JOIN_TIMEOUT_S)

    def _progress(self, frames: int) -> None:
        # Called from the pipeline thread with the number of output frames written so far.
        delta = frames - self.frames_reported
        if delta > 0:
            self.frames_reported = frames
            self._metrics.frames_processed.inc(delta)

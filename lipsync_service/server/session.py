"""One Lipsync call: admission and keepalives while queued, the job thread, the response stream, cleanup."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import grpc
from google.protobuf import empty_pb2

from lipsync_service import FEATURE_NAME, __version__
from lipsync_service._proto.nvidia.ai4m.common.v1 import common_pb2
from lipsync_service._proto.nvidia.ai4m.lipsync.v1 import lipsync_pb2
from lipsync_service.client.stream import CallSummary
from lipsync_service.core.factory import ProcessorFactory
from lipsync_service.errors import InputTimeout, release_frames
from lipsync_service.logs import call_log as log
from lipsync_service.logs import request_id_var
from lipsync_service.server.admission import Admission, Slot
from lipsync_service.server.budget import StreamBudget
from lipsync_service.server.heap import HEAP
from lipsync_service.server.intake import Intake
from lipsync_service.server.job_thread import JobThread
from lipsync_service.server.metrics import Metrics
from lipsync_service.server.output import OutputBuffer, OutputWatchdog
from lipsync_service.server.request_log import log_request_finished
from lipsync_service.server.status import status_for
from lipsync_service.server.threads import start_thread
from lipsync_service.settings import Settings

if TYPE_CHECKING:
    from lipsync_service.pipeline import JobResult


# How long a call that failed after its upload ended waits for gRPC to report a client's cancel (see
# Session._recheck_cancelled) before its own status goes out.
CANCEL_SETTLE_S = 0.2


def _response(**kw: Any) -> lipsync_pb2.LipsyncResponse:
    return lipsync_pb2.LipsyncResponse(**kw)


# gRPC clients refuse trailers over 8 KiB by default (the whole call then fails with RESOURCE_EXHAUSTED, its
# output already received): ours stay within half of that, status and message included. Each entry costs its
# key, its value and 32 bytes (HPACK's accounting).
TRAILER_BYTES = 4096
_ENTRY_OVERHEAD = 32


def fit_trailers(summary: CallSummary) -> list[tuple[str, str]]:
    """The summary's trailing metadata within TRAILER_BYTES: the last re-drawn runs, then the last notices, give
    way first, and one line says how many were left out (the request_finished log line keeps the first 20 runs)."""
    def size(pairs: list[tuple[str, str]]) -> int:
        return sum(len(k) + len(v) + _ENTRY_OVERHEAD for k, v in pairs)

    pairs = summary.to_metadata()
    dropped = 0
    while size(pairs) > TRAILER_BYTES - 512 and (summary.redrawn or summary.notices):
        (summary.redrawn or summary.notices).pop()
        dropped += 1
        pairs = summary.to_metadata()
    if dropped:
        summary.notices.append(f"{dropped} more notes left out of this reply's trailers (the server's log has the "
                               "first 20 re-drawn runs)")
        pairs = summary.to_metadata()
    return pairs


class Session:
    """Serves one Lipsync call from first request to last response; see docs/protocol.md."""

    def __init__(self, settings: Settings, processors: ProcessorFactory, admission: Admission, metrics: Metrics,
                 *, client_session_id: str = "", context: grpc.aio.ServicerContext | None = None) -> None:
        self.settings = settings
        self.processors = processors
        self.admission = admission
        self.metrics = metrics
        self.client_session_id = client_session_id
        self.context = context
        self.request_id = uuid.uuid4().hex
        self.outcome = grpc.StatusCode.OK
        self.error_message = ""

        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake = asyncio.Event()  # set when there may be something to send, or the reader or job ended
        self._started = time.monotonic()
        self._first_chunk_at: float | None = None
        self._admitted_at: float | None = None
        self._messages: deque[lipsync_pb2.LipsyncResponse] = deque()
        self._output = OutputBuffer(max(settings.stream_buffer_bytes, 4 * settings.output_chunk_bytes),
                                    self._notify_threadsafe)
        self._job = JobThread(settings, processors, metrics, self._output.put, self._wake.set,
                              f"lipsync-job-{self.request_id[:8]}")
        self._budget = StreamBudget(settings.max_stream_memory_bytes)
        self._budget.hold("output not yet read by the client", lambda: self._output.pending)
        self._intake = Intake(settings, self._post, lambda video: self._job.start(video, self._intake), self._budget)
        self._watchdog: OutputWatchdog | None = None

        self._reader: asyncio.Task[None] | None = None
        self._acquire: asyncio.Future[Slot] | None = None
        self._slot: Slot | None = None
        self._result: JobResult | None = None

    # Event-loop wake-ups -------------------------------------------------------------------------

    def _notify_threadsafe(self) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(self._wake.set)
            except RuntimeError:
                pass  # loop shutting down: nobody is waiting any more

    def _post(self, response: lipsync_pb2.LipsyncResponse) -> None:
        self._messages.append(response)
        self._wake.set()

    # The response stream -------------------------------------------------------------------------

    async def run(
        self, requests: AsyncIterator[lipsync_pb2.LipsyncRequest]
    ) -> AsyncIterator[lipsync_pb2.LipsyncResponse]:
        """The response stream of the call.

        Args:
            requests: the client's request stream.

        Yields:
            service_info, the config echo, video chunks and keepalives, in that order of first appearance.

        Raises:
            LipsyncError: anything that ends the call with a non-OK status (mapped by server/status.py).
        """
        self._loop = asyncio.get_running_loop()
        # Each call runs in a task of its own, so the id set here tags exactly this call's log lines (and
        # the threads it starts, which copy the context). Never reset: the generator may be closed from
        # another task's context.
        request_id_var.set(self.request_id)
        log.debug("stream opened (client session %r)", self.client_session_id)
        watchdog = self._watchdog = OutputWatchdog(self.settings, self.context, asyncio.current_task())
        watchdog.start(f"lipsync-stall-{self.request_id}")
        try:
            yield _response(service_info=common_pb2.ServiceInfo(
                feature_name=FEATURE_NAME, feature_version=__version__, model_info=self.processors.model_info,
                server_request_id=self.request_id, client_session_id=self.client_session_id))
            # Keepalives while queued, so proxies keep a waiting call open.
            self._acquire = asyncio.ensure_future(self.admission.acquire())
            while True:
                done, _ = await asyncio.wait({self._acquire}, timeout=self.settings.keepalive_interval_s)
                if done:
                    self._slot = self._acquire.result()
                    self._admitted_at = time.monotonic()
                    break
                yield _response(keepalive=empty_pb2.Empty())
            self._intake.last_input = time.monotonic()
            self._reader = asyncio.create_task(self._intake.read(requests), name=f"lipsync-reader-{self.request_id}")
            self._reader.add_done_callback(lambda _: self._wake.set())
            async for response in self._respond():
                watchdog.writing()
                yield response
                watchdog.written()
            self._send_summary()
        except BaseException as exc:
            self._record_failure(exc)
            raise
        finally:
            try:
                await self._cleanup()
            finally:
                await self._recheck_cancelled()
                self._finish_log()

    async def _respond(self) -> AsyncIterator[lipsync_pb2.LipsyncResponse]:
        keepalive_s = self.settings.keepalive_interval_s
        stall_s = self.settings.input_queue_timeout_s
        intake = self._intake
        last_sent = time.monotonic()
        while True:
            self._wake.clear()
            sent = False
            while self._messages:
                yield self._messages.popleft()
                sent = True
            chunk = self._output.take(self.settings.output_chunk_bytes)
            if chunk:
                if self._first_chunk_at is None:
                    self._first_chunk_at = time.monotonic()
                    self.metrics.time_to_first_chunk_seconds.observe(self._first_chunk_at - self._started)
                yield _response(video_file_data=chunk)
                sent = True
            if sent:
                last_sent = time.monotonic()
                continue
            # Reader errors first: a job failing because we aborted its inputs is a consequence, not the cause.
            if self._reader is not None and self._reader.done() and not self._reader.cancelled():
                error = self._reader.exception()
                if error is not None:
                    raise error
            if self._job.done is not None and self._job.done.done():
                self._result = self._job.done.result()  # raises the job's error
                if self._output.pending == 0:
                    return
                continue
            now = time.monotonic()
            if (not intake.done and not intake.waiting_for_space
                    and now - intake.last_input > stall_s):
                raise InputTimeout(
                    f"no data received for {stall_s:g} s; send the rest of the input or half-close the stream "
                    "(timeout set by NV_AI4M_LS_INPUT_QUEUE_TIMEOUT_S)")
            if now - last_sent >= keepalive_s:
                yield _response(keepalive=empty_pb2.Empty())
                last_sent = time.monotonic()
                continue
            wait = keepalive_s - (now - last_sent)
            if not intake.done:
                wait = min(wait, max(0.01, stall_s - (now - intake.last_input)))
            try:
                await asyncio.wait_for(self._wake.wait(), wait)
            except asyncio.TimeoutError:
                pass

    # End of the call -----------------------------------------------------------------------------

    def _send_summary(self) -> None:
        """Put the job's frame counts, cut input and notices in the call's trailing metadata."""
        result = self._result
        if self.context is None or result is None:
            return
        cut = result.cut
        summary = CallSummary(
            frames=result.frames, frames_without_face=result.frames_without_face,
            frames_not_lipsynced=result.frames_not_lipsynced, frames_bypassed=result.frames_bypassed,
            speech_cut_s=cut.seconds if cut is not None and cut.track == "speech" else None,
            video_cut_s=cut.seconds if cut is not None and cut.track == "video" else None,
            notices=result.notices(), shots=result.shots, redrawn=[r.describe() for r in result.redrawn])
        self.context.set_trailing_metadata(tuple(fit_trailers(summary)))

    def _record_failure(self, exc: BaseException) -> None:
        stall = self._watchdog.stall if self._watchdog is not None else None
        if stall is not None:
            self.outcome = status_for(stall)
            self.error_message = str(stall)
        elif isinstance(exc, (asyncio.CancelledError, GeneratorExit)) or self._client_cancelled():
            # A cancelled call also ends the request stream, and the reader may report that as a truncated
            # upload before the cancellation reaches this task: the client's cancel is the cause either way.
            self.outcome = grpc.StatusCode.CANCELLED
            self.error_message = "the client cancelled the call or went away"
        else:
            self.outcome = status_for(exc)
            self.error_message = str(exc)

    async def _recheck_cancelled(self) -> None:
        """After cleanup (which waited for the job's thread): a failure that followed the client's cancel, and was
        raised before gRPC reported the cancel, is the cancel. The failure's status has not gone out yet (it is
        sent once this generator ends), and a call that ended on its own is not reported cancelled."""
        failed = self.outcome not in (grpc.StatusCode.OK, grpc.StatusCode.CANCELLED)
        stalled = self._watchdog is not None and self._watchdog.stall is not None
        if not failed or stalled:
            return
        if self._intake.done and not self._client_cancelled():
            # gRPC ends the request stream of a cancelled call as it ends a half-closed one, and reports the cancel
            # itself separately, sometimes after cleanup (seen on a loaded machine): a failure that followed the
            # end of the upload waits a moment for it. The slot is already free; only this status waits. (Now and
            # then gRPC never reports such a cancel, even 3 s later: that call cannot be told from a half-closed,
            # truncated upload, and is answered and counted as one.)
            deadline = time.monotonic() + CANCEL_SETTLE_S
            while not self._client_cancelled() and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
        if self._client_cancelled():
            self.outcome = grpc.StatusCode.CANCELLED
            self.error_message = "the client cancelled the call or went away"

    def _client_cancelled(self) -> bool:
        return self.context is not None and self.context.cancelled()

    async def _cleanup(self) -> None:
        """Stop everything this call started; safe to run after success, failure or cancellation."""
        self._job.cancel.set()
        if self._watchdog is not None:
            self._watchdog.stop()
        self._output.close()
        self._intake.abort()
        try:
            if self._reader is not None and not self._reader.done():
                self._reader.cancel()
                try:
                    await self._reader
                except BaseException:  # noqa: BLE001 - its outcome was already reported or is moot
                    pass
            elif self._reader is not None and not self._reader.cancelled():
                release_frames(self._reader.exception())  # mark retrieved; its frames hold what the client sent
            # Joining blocks, so it happens in a short-lived thread of its own.
            tracks = self._intake.tracks()

            def join() -> None:
                for track in tracks:
                    track.close()
                self._job.join()
                self._intake.release()

            joiner, joined = start_thread(join, f"lipsync-cleanup-{self.request_id[:8]}")
            await asyncio.shield(joined)
            joiner.join()
            done = self._job.done
            if done is not None and done.done() and not done.cancelled():
                # Mark it retrieved (a failure was already raised if it mattered), and let the job's thread's last
                # frame go: it holds the job's inputs, and this session keeps the exception.
                release_frames(done.exception())
        finally:
            self._intake.video.remove_spool()
            await self._release_admission()
            self._release_memory()

    def _release_memory(self) -> None:
        """Give what the call freed back to the system, after its slot is free (server/heap.py)."""
        idle = self.admission.active == 0
        if HEAP.due(idle=idle, interval_s=self.settings.heap_trim_interval_s):
            # Nothing waits for it: a plain thread, not one that reports to the event loop.
            threading.Thread(target=HEAP.trim, kwargs={"idle": idle}, name="lipsync-heap-trim", daemon=True).start()

    async def _release_admission(self) -> None:
        acquire = self._acquire
        if acquire is not None and not acquire.done():
            acquire.cancel()
            try:
                await acquire
            except BaseException:  # noqa: BLE001 - cancelled or refused: no slot was taken
                pass
        if acquire is not None and acquire.done() and not acquire.cancelled() and acquire.exception() is None:
            self._slot = acquire.result()
        if self._slot is not None:
            self._slot.release()
            self._slot = None

    def _finish_log(self) -> None:
        intake = self._intake
        mode = intake.video.mode
        log_request_finished(
            self.metrics, request_id=self.request_id, client_session_id=self.client_session_id,
            outcome=self.outcome, message=self.error_message, started=self._started,
            admitted_at=self._admitted_at, first_chunk_at=self._first_chunk_at,
            video_mode=mode.value if mode is not None else None,
            input_bytes={"video": intake.video.bytes, "speech": intake.speech_bytes,
                         "background": intake.background_bytes},
            output_bytes=self._output.total, frames_reported=self._job.frames_reported, result=self._result,
            ignored_encoder_hints=intake.cfg.video_encoding.custom.ignored_hints() if intake.cfg is not None else {},
            memory_peak_bytes=self._budget.peak)

"""One Lipsync call: admission, request intake (config, chunks, speaker data), the pipeline thread, responses."""

from __future__ import annotations

import asyncio
import contextvars
import json
import os
import tempfile
import threading
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import empty_pb2

from lipsync_service import __version__, FEATURE_NAME
from lipsync_service import config as job_config
from lipsync_service._proto.nvidia.ai4m.common.v1 import common_pb2
from lipsync_service._proto.nvidia.ai4m.lipsync.v1 import lipsync_pb2
from lipsync_service.server.admission import Admission, Slot
from lipsync_service.errors import (Cancelled, InputTimeout, InvalidInput, LipsyncError, OutputStalled,
                                    ResourceExhausted)
from lipsync_service.logs import get_logger, request_id_var
from lipsync_service.media.audio import AudioTrack
from lipsync_service.media.pipe import ByteStream
from lipsync_service.media.probe import classify_mp4
from lipsync_service.server.metrics import Metrics
from lipsync_service.core.factory import ProcessorFactory
from lipsync_service.server.status import status_for
from lipsync_service.settings import Settings
from lipsync_service.speakers import SpeakerData, frames_from_proto

log = get_logger(__name__)

# Seconds a full input buffer may see no reads before we conclude its reader waits on another input
# (e.g. all video sent before any audio) and let it grow beyond capacity rather than deadlock.
OVERFLOW_GRACE_S = 1.0
# How far beyond capacity such an out-of-order upload may run, as a multiple of the buffer size.
OVERFLOW_FACTOR = 64
# Longest poll interval while waiting for buffer space.
_MAX_POLL_S = 0.02
# Seconds a worker thread gets to stop after cancellation before we give up waiting (it is a daemon).
_JOIN_TIMEOUT_S = 30.0


def _response(**kw: Any) -> lipsync_pb2.LipsyncResponse:
    return lipsync_pb2.LipsyncResponse(**kw)


def _settle(fut: asyncio.Future, result: Any = None, error: BaseException | None = None) -> None:
    if fut.done():
        return
    if error is not None:
        fut.set_exception(error)
    else:
        fut.set_result(result)


def start_thread(fn: Callable[[], Any], name: str) -> tuple[threading.Thread, asyncio.Future]:
    """Run fn in a new thread with the caller's contextvars (request id); its outcome lands in a future.

    A dedicated thread rather than the loop's executor: it ends with the job, so nothing lingers.
    """
    loop = asyncio.get_running_loop()
    fut: asyncio.Future = loop.create_future()
    ctx = contextvars.copy_context()

    def target() -> None:
        try:
            result = ctx.run(fn)
        except BaseException as exc:  # noqa: BLE001 - handed to the event loop, which decides
            loop.call_soon_threadsafe(_settle, fut, None, exc)
        else:
            loop.call_soon_threadsafe(_settle, fut, result)

    thread = threading.Thread(target=target, name=name, daemon=True)
    thread.start()
    return thread, fut


class OutputBuffer:
    """Encoded MP4 bytes on their way from the pipeline thread to the RPC, bounded in size.

    The pipeline's sink (`put`) blocks while the client reads slower than we encode; the event loop
    drains it with `take`.
    """

    def __init__(self, capacity: int, notify: Callable[[], None]) -> None:
        self._capacity = capacity
        self._notify = notify
        self._chunks: deque[bytes] = deque()
        self._size = 0
        self._closed = False
        self._cond = threading.Condition()
        self.total = 0

    def put(self, data: bytes) -> None:
        """Pipeline side: queue bytes, waiting for room. Raises Cancelled once the call has ended."""
        if not data:
            return
        with self._cond:
            self._cond.wait_for(lambda: self._size < self._capacity or self._closed)
            if self._closed:
                raise Cancelled("the call ended while output was being written")
            self._chunks.append(bytes(data))
            self._size += len(data)
            self.total += len(data)
        self._notify()

    def take(self, max_bytes: int) -> bytes:
        """Loop side: up to max_bytes of queued output (b'' if none), coalescing small writes."""
        with self._cond:
            parts: list[bytes] = []
            got = 0
            while self._chunks and got < max_bytes:
                head = self._chunks[0]
                room = max_bytes - got
                if len(head) <= room:
                    parts.append(self._chunks.popleft())
                    got += len(head)
                else:
                    parts.append(head[:room])
                    self._chunks[0] = head[room:]
                    got += room
            self._size -= got
            self._cond.notify_all()
            return b"".join(parts)

    @property
    def pending(self) -> int:
        with self._cond:
            return self._size

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._chunks.clear()
            self._size = 0
            self._cond.notify_all()


class _Feeder:
    """Writes upload chunks into a ByteStream with backpressure that never blocks the event loop."""

    def __init__(self, stream: ByteStream) -> None:
        self.stream = stream
        self._limit = stream.capacity * OVERFLOW_FACTOR
        self._overflow_mark: int | None = None
        self._warned = False

    def _consumed(self) -> int:
        return self.stream.total_written - self.stream.buffered

    async def write(self, data: bytes, on_wait: Callable[[bool], None]) -> None:
        stream = self.stream
        if stream.closed:
            return  # aborted by a failing job: the session is ending anyway
        if self._overflow_mark is not None and self._consumed() > self._overflow_mark:
            self._overflow_mark = None  # the reader moves again: back to normal backpressure
        if self._overflow_mark is None and not stream.has_space():
            on_wait(True)
            try:
                await self._wait_space()
            finally:
                on_wait(False)
        if self._overflow_mark is not None and stream.buffered + len(data) > self._limit:
            raise ResourceExhausted(
                f"{stream.name}: the upload runs more than {self._limit // 2**20} MiB ahead of what the job can "
                "use; interleave the video and audio chunks (send both as time advances)")
        if not stream.closed:
            stream.write(data)

    async def _wait_space(self) -> None:
        stream = self.stream
        delay = 0.001
        consumed = self._consumed()
        since = time.monotonic()
        while not stream.has_space() and not stream.closed:
            await asyncio.sleep(delay)
            delay = min(delay * 2, _MAX_POLL_S)
            now_consumed = self._consumed()
            if now_consumed != consumed:
                consumed, since = now_consumed, time.monotonic()
            elif time.monotonic() - since > OVERFLOW_GRACE_S:
                # The reader is parked on another input that sits behind this one in the request stream.
                self._overflow_mark = consumed
                if not self._warned:
                    self._warned = True
                    log.warning("%s input buffer full and not being read for %.1f s: buffering beyond %d bytes "
                                "(the client sends inputs out of step)", stream.name, OVERFLOW_GRACE_S,
                                stream.capacity)
                return


class Session:
    """Serves one Lipsync call from first request to last response; see SPEC section 2."""

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
        self._wake = asyncio.Event()
        self._cancel = threading.Event()
        self._started = time.monotonic()
        self._first_chunk_at: float | None = None
        self._admitted_at: float | None = None
        self._last_input = time.monotonic()
        self._waiting_for_space = False
        self._input_done = False
        self._messages: deque[lipsync_pb2.LipsyncResponse] = deque()
        self._output = OutputBuffer(max(settings.stream_buffer_bytes, 4 * settings.output_chunk_bytes),
                                    self._notify_threadsafe)

        self._cfg: job_config.JobConfig | None = None
        self._speech: AudioTrack | None = None
        self._speech_feed: _Feeder | None = None
        self._background: AudioTrack | None = None
        self._background_feed: _Feeder | None = None
        self._background_bytes = 0
        self._speech_bytes = 0
        self._speakers: SpeakerData | None = None

        self._video_mode: str | None = None  # None until classified, then "streaming" or "transactional"
        self._video_head = bytearray()
        self._video_bytes = 0
        self._video_feed: _Feeder | None = None
        self._spool: Any = None  # the open NamedTemporaryFile
        self._spool_path: Path | None = None

        self._reader: asyncio.Task | None = None
        self._worker: threading.Thread | None = None
        self._worker_done: asyncio.Future | None = None
        self._acquire: asyncio.Future | None = None
        self._slot: Slot | None = None
        self._result: Any = None
        self._frames_reported = 0
        # Output stall watch: when the write of the response being sent started (None between writes).
        self._task: asyncio.Task | None = None
        self._writing_since: float | None = None
        self._watchdog: asyncio.Task | None = None
        self._stall: OutputStalled | None = None

    # Event-loop wake-ups -------------------------------------------------------------------------

    def _notify_threadsafe(self) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(self._wake.set)
            except RuntimeError:
                pass  # loop shutting down: nobody is waiting any more

    def _progress(self, frames: int) -> None:
        # Called from the pipeline thread with the number of output frames written so far.
        delta = frames - self._frames_reported
        if delta > 0:
            self._frames_reported = frames
            self.metrics.frames_processed.inc(delta)

    # The response stream -------------------------------------------------------------------------

    async def run(self, requests: AsyncIterator[lipsync_pb2.LipsyncRequest]) -> AsyncIterator[lipsync_pb2.LipsyncResponse]:
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
        log.info("stream opened (client session %r)", self.client_session_id)
        self._task = asyncio.current_task()
        self._watchdog = asyncio.create_task(self._watch_output(), name=f"lipsync-stall-{self.request_id}")
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
            self._last_input = time.monotonic()
            self._reader = asyncio.create_task(self._read_requests(requests), name=f"lipsync-reader-{self.request_id}")
            self._reader.add_done_callback(lambda _: self._wake.set())
            async for response in self._respond():
                self._writing_since = time.monotonic()
                yield response
                self._writing_since = None
        except BaseException as exc:
            self._record_failure(exc)
            raise
        finally:
            try:
                await self._cleanup()
            finally:
                self._finish_log()

    async def _watch_output(self) -> None:
        """End the call when one response write stays blocked past output_stall_timeout_s.

        gRPC's flow control parks the write (and, behind it, the pipeline) while the client does not read;
        a client that half-closed and then stopped reading on a live connection is never caught by the
        input stall timeout or by transport keepalives, so without this it would hold its slot forever.
        """
        limit = self.settings.output_stall_timeout_s
        tick = min(1.0, limit / 4)
        while True:
            await asyncio.sleep(tick)
            since = self._writing_since
            if since is None or time.monotonic() - since <= limit:
                continue
            self._stall = OutputStalled(
                f"the client has not read the responses for {limit:g} s; the call is ended to free its slot "
                "(read the response stream while sending; limit set by NV_AI4M_OUTPUT_STALL_TIMEOUT_S)")
            log.warning("%s", self._stall)
            if self.context is not None:
                # Queue the final status first, so the client gets our code and message once it reads again;
                # the write ahead of it is stuck, so do not wait for it to go out.
                try:
                    await asyncio.wait_for(self.context.abort(status_for(self._stall), str(self._stall)), 0.1)
                except Exception:  # noqa: BLE001 - AbortError, or the timeout: either way the status is queued
                    pass
            if self._task is not None:
                # The handler task is parked in gRPC's write: cancelling it is the only way to end the call
                # (the client, once it reads again, sees DEADLINE_EXCEEDED; the log line has our message).
                self._task.cancel()
            return

    async def _respond(self) -> AsyncIterator[lipsync_pb2.LipsyncResponse]:
        keepalive_s = self.settings.keepalive_interval_s
        stall_s = self.settings.input_queue_timeout_s
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
            if self._worker_done is not None and self._worker_done.done():
                self._result = self._worker_done.result()  # raises the job's error
                if self._output.pending == 0:
                    return
                continue
            now = time.monotonic()
            if (not self._input_done and not self._waiting_for_space
                    and now - self._last_input > stall_s):
                raise InputTimeout(
                    f"no data received for {stall_s:g} s; send the rest of the input or half-close the stream "
                    "(timeout set by NV_AI4M_LS_INPUT_QUEUE_TIMEOUT_S)")
            if now - last_sent >= keepalive_s:
                yield _response(keepalive=empty_pb2.Empty())
                last_sent = time.monotonic()
                continue
            wait = keepalive_s - (now - last_sent)
            if not self._input_done:
                wait = min(wait, max(0.01, stall_s - (now - self._last_input)))
            try:
                await asyncio.wait_for(self._wake.wait(), wait)
            except asyncio.TimeoutError:
                pass

    # The request stream --------------------------------------------------------------------------

    async def _read_requests(self, requests: AsyncIterator[lipsync_pb2.LipsyncRequest]) -> None:
        first = True
        async for request in requests:
            self._last_input = time.monotonic()
            kind = request.WhichOneof("lipsync_request")
            if kind == "config":
                if not first:
                    raise InvalidInput("config must be the first message of the stream, and come only once; "
                                       "it arrived after input data or a previous config")
                self._configure(request.config)
            else:
                if first:
                    self._configure(None)
                if kind == "input":
                    await self._take_input(request.input)
            first = False
            self._last_input = time.monotonic()
        if first:
            self._configure(None)
        self._input_done = True
        await self._end_of_input()

    def _configure(self, msg: lipsync_pb2.LipsyncConfig | None) -> None:
        cfg = job_config.from_proto(msg)
        self._cfg = cfg
        self._messages.append(_response(config=job_config.to_proto(cfg)))
        self._wake.set()
        s = self.settings
        speech_stream = ByteStream(s.stream_buffer_bytes, name="speech audio")
        self._speech_feed = _Feeder(speech_stream)
        # Started at once so a transactional job's audio is consumed while the video is spooled.
        self._speech = AudioTrack(speech_stream, cfg.input_audio_codec, name="speech", max_duration_s=s.max_duration_s)
        self._speech.start()
        if cfg.background is not None:
            bg_stream = ByteStream(s.stream_buffer_bytes, name="background audio")
            self._background_feed = _Feeder(bg_stream)
            self._background = AudioTrack(bg_stream, cfg.background.codec, name="background",
                                          max_duration_s=s.max_duration_s)
            self._background.start()
        if cfg.speaker_info_provided:
            self._speakers = SpeakerData()
        log.info("config: %s", cfg)

    def _set_waiting(self, waiting: bool) -> None:
        self._waiting_for_space = waiting
        if not waiting:
            # Time spent waiting on our own buffers is not the client's stall.
            self._last_input = time.monotonic()

    async def _take_input(self, data: lipsync_pb2.LipsyncInputData) -> None:
        size = data.ByteSize()
        if size > self.settings.max_message_bytes:
            raise ResourceExhausted(
                f"an input message of {size} bytes is over the limit of {self.settings.max_message_bytes} bytes; "
                "send the media in smaller chunks (the reference client uses 64 KiB)")
        if data.HasField("video_file_data") and data.video_file_data:
            await self._take_video(data.video_file_data)
        if data.HasField("audio_file_data") and data.audio_file_data:
            assert self._speech_feed is not None
            self._speech_bytes += len(data.audio_file_data)
            await self._speech_feed.write(data.audio_file_data, self._set_waiting)
        if data.HasField("background_audio_file_data") and data.background_audio_file_data:
            if self._background_feed is None:
                raise InvalidInput(
                    "background audio data arrived, but the config did not announce it: set "
                    "background_audio_config.is_background_audio_provided (and its codec and volume)")
            self._background_bytes += len(data.background_audio_file_data)
            await self._background_feed.write(data.background_audio_file_data, self._set_waiting)
        if len(data.per_frame_speaker_infos):
            if self._speakers is None:
                raise InvalidInput("speaker data arrived, but the config has is_speaker_info_provided false; "
                                   "set it to true to send per-frame speaker info")
            for frame in frames_from_proto(data.per_frame_speaker_infos):
                self._speakers.add(frame)

    async def _take_video(self, data: bytes) -> None:
        s = self.settings
        self._video_bytes += len(data)
        if self._video_mode == "streaming":
            assert self._video_feed is not None
            await self._video_feed.write(data, self._set_waiting)
            return
        if self._video_mode == "transactional":
            self._spool_write(data)
            return
        self._video_head += data
        layout = classify_mp4(bytes(self._video_head))
        if layout == "need_more":
            if len(self._video_head) < s.stream_buffer_bytes:
                return
            # A header this long before the index: not worth holding in memory; spool it.
            layout = "transactional"
        head, self._video_head = bytes(self._video_head), bytearray()
        if layout == "streamable":
            self._video_mode = "streaming"
            log.info("video is streamable: processing while it uploads")
            stream = ByteStream(s.stream_buffer_bytes, name="video")
            self._video_feed = _Feeder(stream)
            stream.write(head)
            self._start_job(stream)
        else:
            self._video_mode = "transactional"
            log.info("video is not streamable (index at the end): spooling it until the upload completes")
            self._spool_open()
            self._spool_write(head)

    def _spool_open(self) -> None:
        directory = self.settings.spool_dir
        try:
            if directory is not None:
                Path(directory).mkdir(parents=True, exist_ok=True)
            self._spool = tempfile.NamedTemporaryFile(dir=directory, prefix="lipsync-spool-", suffix=".mp4",
                                                      delete=False)
        except OSError as exc:
            raise ResourceExhausted(f"cannot create a spool file for the upload in {directory or tempfile.gettempdir()}: "
                                    f"{exc.strerror or exc}") from exc
        self._spool_path = Path(self._spool.name)

    def _spool_write(self, data: bytes) -> None:
        limit = self.settings.max_spool_bytes
        if self._spool.tell() + len(data) > limit:
            raise ResourceExhausted(
                f"video: a non-streamable MP4 is spooled to disk and this one is over the limit of {limit} bytes; "
                "move its index to the front (ffmpeg -i in.mp4 -c copy -movflags +faststart out.mp4) so it streams")
        try:
            self._spool.write(data)
        except OSError as exc:
            raise ResourceExhausted(f"video: spooling the upload failed: {exc.strerror or exc}") from exc

    async def _end_of_input(self) -> None:
        assert self._cfg is not None
        log.info("input complete: video %d bytes, speech %d bytes, background %d bytes",
                 self._video_bytes, self._speech_bytes, self._background_bytes)
        for feed in (self._speech_feed, self._background_feed, self._video_feed):
            if feed is not None:
                feed.stream.close()
        if self._speakers is not None:
            self._speakers.close()
        if self._video_bytes == 0:
            raise InvalidInput("no video data received: send the MP4 in input.video_file_data messages "
                               "before half-closing the stream")
        if self._speech_bytes == 0:
            raise InvalidInput("no speech audio received: send the WAV or MP3 in input.audio_file_data messages")
        if self._background_feed is not None and self._background_bytes == 0:
            raise InvalidInput("background_audio_config.is_background_audio_provided is true, but no "
                               "background_audio_file_data arrived")
        if self._video_mode is None:
            # The upload ended before its layout could be told: let the demuxer judge the whole file.
            self._video_mode = "transactional"
            self._spool_open()
            head, self._video_head = bytes(self._video_head), bytearray()
            self._spool_write(head)
        if self._video_mode == "transactional":
            try:
                self._spool.close()
            except OSError as exc:
                raise ResourceExhausted(f"video: spooling the upload failed: {exc.strerror or exc}") from exc
            self._start_job(self._spool_path)

    # The job -------------------------------------------------------------------------------------

    def _start_job(self, video: ByteStream | Path) -> None:
        from lipsync_service import pipeline

        assert self._cfg is not None and self._speech is not None
        inputs = pipeline.JobInputs(video=video, speech=self._speech, background=self._background,
                                    speakers=self._speakers)
        cfg, settings = self._cfg, self.settings

        def work() -> Any:
            processor = self.processors.create()
            job = pipeline.Job(cfg, settings, processor, self._output.put, self._cancel, progress=self._progress)
            return job.run(inputs)

        self._worker, self._worker_done = start_thread(work, f"lipsync-job-{self.request_id[:8]}")
        self._worker_done.add_done_callback(lambda _: self._wake.set())

    # End of the call -----------------------------------------------------------------------------

    def _record_failure(self, exc: BaseException) -> None:
        if self._stall is not None:
            self.outcome = status_for(self._stall)
            self.error_message = str(self._stall)
        elif isinstance(exc, (asyncio.CancelledError, GeneratorExit)):
            self.outcome = grpc.StatusCode.CANCELLED
            self.error_message = "the client cancelled the call or went away"
        else:
            self.outcome = status_for(exc)
            self.error_message = str(exc)

    async def _cleanup(self) -> None:
        """Stop everything this call started; safe to run after success, failure or cancellation."""
        self._cancel.set()
        watchdog, self._watchdog = self._watchdog, None
        if watchdog is not None and watchdog is not asyncio.current_task():
            watchdog.cancel()
        self._output.close()
        for feed in (self._video_feed, self._speech_feed, self._background_feed):
            if feed is not None:
                feed.stream.abort(Cancelled(f"{feed.stream.name}: the call ended"))
        if self._speakers is not None:
            self._speakers.close()
        try:
            if self._reader is not None and not self._reader.done():
                self._reader.cancel()
                try:
                    await self._reader
                except BaseException:  # noqa: BLE001 - its outcome was already reported or is moot
                    pass
            elif self._reader is not None and not self._reader.cancelled():
                self._reader.exception()  # mark retrieved
            # Joining blocks, so it happens in a short-lived thread of its own.
            tracks = [t for t in (self._speech, self._background) if t is not None]
            worker = self._worker

            def join() -> None:
                for track in tracks:
                    track.close()
                if worker is not None:
                    worker.join(_JOIN_TIMEOUT_S)
                    if worker.is_alive():
                        log.error("the job thread did not stop within %g s", _JOIN_TIMEOUT_S)

            joiner, joined = start_thread(join, f"lipsync-cleanup-{self.request_id[:8]}")
            await asyncio.shield(joined)
            joiner.join()
            if self._worker_done is not None and self._worker_done.done() and not self._worker_done.cancelled():
                self._worker_done.exception()  # mark retrieved; a failure was already raised if it mattered
        finally:
            self._remove_spool()
            await self._release_admission()

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

    def _remove_spool(self) -> None:
        if self._spool is not None:
            try:
                self._spool.close()
            except OSError:
                pass
        if self._spool_path is not None:
            try:
                os.unlink(self._spool_path)
            except FileNotFoundError:
                pass
            except OSError as exc:
                log.error("could not remove spool file %s: %s", self._spool_path, exc)
            self._spool_path = None

    def _finish_log(self) -> None:
        elapsed = time.monotonic() - self._started
        self.metrics.streams_total.labels(code=self.outcome.name).inc()
        self.metrics.request_seconds.observe(elapsed)
        stages: dict[str, float] = {}
        frames = self._frames_reported
        if self._result is not None:
            stages = dict(getattr(self._result, "stage_seconds", {}) or {})
            frames = getattr(self._result, "frames", frames)
            for stage, seconds in stages.items():
                self.metrics.stage_seconds.labels(stage=stage).observe(seconds)
                if frames:
                    self.metrics.stage_frame_seconds.labels(stage=stage).observe(seconds / frames)
            if frames > self._frames_reported:
                self.metrics.frames_processed.inc(frames - self._frames_reported)
        record = {
            "event": "request_finished",
            "request_id": self.request_id,
            "client_session_id": self.client_session_id,
            "outcome": self.outcome.name,
            "message": self.error_message,
            "duration_s": round(elapsed, 3),
            "queued_s": None if self._admitted_at is None else round(self._admitted_at - self._started, 3),
            "time_to_first_chunk_s": None if self._first_chunk_at is None else round(self._first_chunk_at - self._started, 3),
            "video_mode": self._video_mode,
            "input_bytes": {"video": self._video_bytes, "speech": self._speech_bytes, "background": self._background_bytes},
            "output_bytes": self._output.total,
            "frames": frames,
            "stage_seconds": {k: round(v, 3) for k, v in stages.items()},
        }
        log.info("%s", json.dumps(record, sort_keys=True))

"""Client side of the Lipsync RPC: request stream (config, speaker batches, interleaved chunks) and responses."""

from __future__ import annotations

import io
import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Union

import grpc

from lipsync_service._proto.nvidia.ai4m.common.v1 import common_pb2
from lipsync_service._proto.nvidia.ai4m.lipsync.v1 import lipsync_pb2, lipsync_pb2_grpc
from lipsync_service.speakers import FrameSpeakers

CHUNK_BYTES = 64 * 1024
SPEAKER_BATCH_FRAMES = 2048

Source = Union[bytes, bytearray, str, Path, BinaryIO]


@dataclass
class Progress:
    """Bytes moved so far by one call; handed to the progress callback after every message."""

    bytes_total: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0
    upload_done: bool = False


ProgressCallback = Callable[[Progress], None]


@dataclass
class LipsyncResult:
    """Everything one call returned, collected in memory (tests, small clips)."""

    service_info: common_pb2.ServiceInfo | None = None
    config: lipsync_pb2.LipsyncConfig | None = None
    video: bytes = b""
    video_chunks: int = 0
    keepalives: int = 0
    order: list[str] = field(default_factory=list)
    #: time.monotonic() when the first video chunk arrived (how early streaming output flows).
    first_chunk_at: float | None = None


def speaker_info_messages(frames: Iterable[FrameSpeakers]) -> list[lipsync_pb2.SpeakerInfoPerFrame]:
    """Convert speaker data (e.g. from `speakers.load_json_file`) to wire messages."""
    out = []
    for frame in frames:
        msg = lipsync_pb2.SpeakerInfoPerFrame(frame_id=frame.frame_id)
        if frame.bypass:
            msg.bypass = True
        for s in frame.speakers:
            info = msg.speaker_infos.add()
            info.speaker_bbox.x = s.x
            info.speaker_bbox.y = s.y
            info.speaker_bbox.width = s.width
            info.speaker_bbox.height = s.height
            if s.speaker_id is not None:
                info.speaker_id = s.speaker_id
            info.is_speaking = s.is_speaking
        out.append(msg)
    return out


def speaker_batches(
    frames: Sequence[lipsync_pb2.SpeakerInfoPerFrame], batch_frames: int = SPEAKER_BATCH_FRAMES
) -> Iterator[lipsync_pb2.LipsyncRequest]:
    """Input messages carrying speaker data, `batch_frames` frames each (the reference client's 2,048)."""
    for start in range(0, len(frames), batch_frames):
        data = lipsync_pb2.LipsyncInputData()
        data.per_frame_speaker_infos.extend(frames[start : start + batch_frames])
        yield lipsync_pb2.LipsyncRequest(input=data)


class _Upload:
    """One input (video, audio or background) read in chunks, with its size known up front."""

    def __init__(self, field_name: str, source: Source) -> None:
        self.field_name = field_name
        self._owned: BinaryIO | None = None
        if isinstance(source, (bytes, bytearray)):
            self._file: BinaryIO = io.BytesIO(bytes(source))
            self.size = len(source)
        elif isinstance(source, (str, Path)):
            self._owned = self._file = open(source, "rb")  # noqa: SIM115 - closed by close()
            self.size = os.fstat(self._file.fileno()).st_size
        else:
            self._file = source
            try:
                here = source.tell()
                self.size = source.seek(0, io.SEEK_END) - here
                source.seek(here)
            except (OSError, AttributeError, io.UnsupportedOperation):
                # A pipe: its size is unknown, so it is read whole to interleave by proportion.
                data = source.read()
                self._file, self.size = io.BytesIO(data), len(data)
        self.sent = 0
        self.done = self.size == 0

    @property
    def fraction(self) -> float:
        return 1.0 if self.done else self.sent / self.size

    def next_request(self, chunk_bytes: int) -> lipsync_pb2.LipsyncRequest | None:
        chunk = self._file.read(chunk_bytes)
        if not chunk:
            self.done = True
            return None
        self.sent += len(chunk)
        if self.sent >= self.size:
            self.done = True
        return lipsync_pb2.LipsyncRequest(input=lipsync_pb2.LipsyncInputData(**{self.field_name: chunk}))

    def close(self) -> None:
        if self._owned is not None:
            self._owned.close()


def build_requests(
    config: lipsync_pb2.LipsyncConfig | None,
    video: Source,
    audio: Source,
    *,
    background: Source | None = None,
    speakers: Sequence[lipsync_pb2.SpeakerInfoPerFrame] = (),
    chunk_bytes: int = CHUNK_BYTES,
    upload_seconds: float | None = None,
    progress: Progress | None = None,
    on_progress: ProgressCallback | None = None,
) -> Iterator[lipsync_pb2.LipsyncRequest]:
    """The request stream of one call.

    Order: the config (when given), then all speaker batches, then video, audio and background chunks
    interleaved so that each input has sent about the same fraction of its bytes at any time. Speaker
    data goes first because the server waits for a frame's speaker data before processing that frame:
    sent after a long video it would stall a streaming job behind the server's full input buffer.

    Args:
        config: the job config; None sends no config (the server then uses all defaults).
        video: MP4 bytes, path or binary file.
        audio: speech WAV/MP3 bytes, path or binary file.
        background: background audio bytes, path or binary file.
        speakers: per-frame speaker messages (see `speaker_info_messages`).
        chunk_bytes: bytes per media chunk (the reference client uses 64 KiB).
        upload_seconds: spread the media upload evenly over this many seconds (real-time pacing).
        progress: updated in place with bytes sent.
        on_progress: called after every message.

    Yields:
        LipsyncRequest messages.
    """
    progress = progress if progress is not None else Progress()
    uploads = [_Upload("video_file_data", video), _Upload("audio_file_data", audio)]
    if background is not None:
        uploads.append(_Upload("background_audio_file_data", background))
    try:
        progress.bytes_total = sum(u.size for u in uploads)
        if config is not None:
            yield lipsync_pb2.LipsyncRequest(config=config)
        for request in speaker_batches(list(speakers)):
            yield request
        started = time.monotonic()
        media_sent = 0
        while True:
            pending = [u for u in uploads if not u.done]
            if not pending:
                break
            upload = min(pending, key=lambda u: u.fraction)
            request = upload.next_request(chunk_bytes)
            if request is None:
                continue
            size = len(getattr(request.input, upload.field_name))
            media_sent += size
            progress.bytes_sent += size
            if upload_seconds and progress.bytes_total:
                # Pacing: never ahead of the even schedule.
                due = started + upload_seconds * media_sent / progress.bytes_total
                delay = due - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            yield request
            if on_progress is not None:
                on_progress(progress)
        progress.upload_done = True
        if on_progress is not None:
            on_progress(progress)
    finally:
        for u in uploads:
            u.close()


def lipsync(
    stub: lipsync_pb2_grpc.LipSyncServiceStub,
    config: lipsync_pb2.LipsyncConfig | None,
    video: Source,
    audio: Source,
    *,
    background: Source | None = None,
    speakers: Sequence[lipsync_pb2.SpeakerInfoPerFrame] = (),
    metadata: Sequence[tuple[str, str]] = (),
    timeout: float | None = None,
    chunk_bytes: int = CHUNK_BYTES,
    upload_seconds: float | None = None,
    on_progress: ProgressCallback | None = None,
) -> Iterator[lipsync_pb2.LipsyncResponse]:
    """Run one Lipsync call and yield its responses as they arrive.

    Args:
        stub: a LipSyncServiceStub on an open channel (see `channel.create_channel`).
        config: the job config; None lets the server use its defaults.
        video: the MP4 (bytes, path or binary file).
        audio: the speech (WAV or MP3; match config.input_audio_codec).
        background: background audio, when config.background_audio_config says it is provided.
        speakers: per-frame speaker messages.
        metadata: call metadata, e.g. `channel.call_metadata(session_id)`.
        timeout: deadline of the whole call in seconds.
        chunk_bytes: bytes per media chunk.
        upload_seconds: pace the upload over this many seconds.
        on_progress: called with a Progress after every message sent or received.

    Yields:
        LipsyncResponse messages: service_info, the config echo, video chunks, keepalives.

    Raises:
        grpc.RpcError: the call failed; `.code()` and `.details()` carry the server's status.
    """
    progress = Progress()
    requests = build_requests(
        config,
        video,
        audio,
        background=background,
        speakers=speakers,
        chunk_bytes=chunk_bytes,
        upload_seconds=upload_seconds,
        progress=progress,
        on_progress=on_progress,
    )
    call = stub.Lipsync(requests, metadata=tuple(metadata) or None, timeout=timeout)
    finished = False
    try:
        for response in call:
            if response.WhichOneof("lipsync_response") == "video_file_data":
                progress.bytes_received += len(response.video_file_data)
                if on_progress is not None:
                    on_progress(progress)
            yield response
        finished = True
    finally:
        if not finished:
            # The caller stopped early or an error is propagating: do not leave the call running.
            call.cancel()


def collect(responses: Iterable[lipsync_pb2.LipsyncResponse]) -> LipsyncResult:
    """Gather a call's responses in memory.

    Raises:
        grpc.RpcError: the call failed.
    """
    result = LipsyncResult()
    chunks = []
    for response in responses:
        kind = response.WhichOneof("lipsync_response")
        result.order.append(kind or "")
        if kind == "service_info":
            result.service_info = response.service_info
        elif kind == "config":
            result.config = response.config
        elif kind == "video_file_data":
            if result.first_chunk_at is None:
                result.first_chunk_at = time.monotonic()
            chunks.append(response.video_file_data)
            result.video_chunks += 1
        elif kind == "keepalive":
            result.keepalives += 1
    result.video = b"".join(chunks)
    return result


def is_rpc_error(exc: BaseException) -> bool:
    """True for errors carrying a gRPC status (the call failed on the server or the transport)."""
    return isinstance(exc, grpc.RpcError) and hasattr(exc, "code")

"""Client side of the Lipsync RPC: request stream (config, speaker batches, interleaved chunks) and responses."""

from __future__ import annotations

import io
import os
import struct
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import grpc

from lipsync_service._proto.nvidia.ai4m.common.v1 import common_pb2
from lipsync_service._proto.nvidia.ai4m.lipsync.v1 import lipsync_pb2, lipsync_pb2_grpc
from lipsync_service.speakers import FrameSpeakers

CHUNK_BYTES = 64 * 1024
SPEAKER_BATCH_FRAMES = 2048

Source = bytes | bytearray | str | Path | BinaryIO


@dataclass
class Progress:
    """Bytes moved so far by one call; handed to the progress callback after every message."""

    bytes_total: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0
    upload_done: bool = False
    #: Video frames in the output received so far (counted from its MP4 fragments, see FragmentCounter).
    frames_received: int = 0


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


# Trailing metadata of a successful call (docs/protocol.md#trailing-metadata): CallSummary field -> key.
_COUNT_KEYS = {
    "frames": "lipsync-frames",
    "frames_without_face": "lipsync-frames-without-face",
    "frames_not_lipsynced": "lipsync-frames-not-lipsynced",
    "frames_bypassed": "lipsync-frames-bypassed",
    "shots": "lipsync-shots",
}
_SECONDS_KEYS = {"speech_cut_s": "lipsync-speech-cut-s", "video_cut_s": "lipsync-video-cut-s"}
NOTICE_KEY = "lipsync-notice"
# One value per run of frames with the same face re-drawn for the same reason (pipeline.Redrawn.describe).
REDRAWN_KEY = "lipsync-redrawn"


@dataclass
class CallSummary:
    """What the server says about a finished call in its trailing metadata; the server encodes it with
    `to_metadata`, clients decode it with `from_metadata`. A field the server did not send is None.

    Attributes:
        frames: output frames.
        frames_without_face: frames in which no face was found (left unchanged); None from a server whose
            processor does not look for faces.
        frames_not_lipsynced: frames with a face of which none was re-drawn (no one speaking, lips unreadable).
        frames_bypassed: frames the speaker data asked to bypass.
        speech_cut_s: seconds of speech left out because the video ended first (no extend_video).
        video_cut_s: seconds of video left out because the speech ended first (no extend_audio).
        notices: sentences for the user (no face found, faces left as they were, input cut and the flag that
            keeps it).
        shots: shots the server found in the video (cuts and transitions start new ones).
        redrawn: which face was re-drawn in which frames and why, one line per run of frames.
    """

    frames: int | None = None
    frames_without_face: int | None = None
    frames_not_lipsynced: int | None = None
    frames_bypassed: int | None = None
    speech_cut_s: float | None = None
    video_cut_s: float | None = None
    notices: list[str] = field(default_factory=list)
    shots: int | None = None
    redrawn: list[str] = field(default_factory=list)

    def to_metadata(self) -> list[tuple[str, str]]:
        """The (key, value) pairs to send, values in plain ASCII as gRPC requires of text metadata."""
        pairs = [(key, str(getattr(self, name))) for name, key in _COUNT_KEYS.items()
                 if getattr(self, name) is not None]
        pairs += [(key, f"{getattr(self, name):.3f}") for name, key in _SECONDS_KEYS.items()
                  if getattr(self, name) is not None]
        pairs += [(NOTICE_KEY, notice.encode("ascii", "replace").decode("ascii")) for notice in self.notices]
        pairs += [(REDRAWN_KEY, line.encode("ascii", "replace").decode("ascii")) for line in self.redrawn]
        return pairs

    @classmethod
    def from_metadata(cls, metadata: Iterable[tuple[str, str | bytes]] | None) -> CallSummary:
        """Read the keys this module knows from a call's trailing metadata; others and bad values are skipped."""
        summary = cls()
        numbers: dict[str, tuple[str, type[int] | type[float]]] = {
            **{key: (name, int) for name, key in _COUNT_KEYS.items()},
            **{key: (name, float) for name, key in _SECONDS_KEYS.items()},
        }
        for key, raw in metadata or ():
            value = raw.decode("ascii", "replace") if isinstance(raw, bytes) else raw
            if key == NOTICE_KEY:
                summary.notices.append(value)
            elif key == REDRAWN_KEY:
                summary.redrawn.append(value)
            elif key in numbers:
                name, kind = numbers[key]
                try:
                    setattr(summary, name, kind(value))
                except ValueError:
                    continue
        return summary

    def counts(self) -> str:
        """The frame counts as text, e.g. "50 frames, 50 without a face"; empty when none were sent."""
        parts = [f"{self.frames} frames"] if self.frames is not None else []
        for value, what in ((self.frames_without_face, "without a face"),
                            (self.frames_not_lipsynced, "with a face not lip-synced"),
                            (self.frames_bypassed, "bypassed")):
            if value:
                parts.append(f"{value} {what}")
        return ", ".join(parts)


class FragmentCounter:
    """Counts the video frames of a fragmented MP4 as its bytes arrive, holding only the small index boxes.

    The output is a fragmented MP4: ftyp, moov (whose tracks say which is video), then moof + mdat pairs. Each
    moof's trun boxes state how many samples the fragment holds per track; a fragment's video samples count
    once its mdat (the frames themselves) has arrived whole. mdat payloads are skipped, never buffered.
    """

    #: Boxes read whole: moov and moof describe the media and are small; anything else is skipped.
    _READ = (b"moov", b"moof")
    #: An index box larger than this is skipped (its frames go uncounted) rather than held in memory.
    _MAX_INDEX_BYTES = 16 << 20

    def __init__(self) -> None:
        self.frames = 0
        self._video_tracks: set[int] = set()
        self._pending = 0  # video samples of the latest moof, counted when its mdat is complete
        self._buffer = bytearray()
        self._skip = 0  # payload bytes of the current skipped box still to come
        self._skipping_mdat = False
        self._to_end = False  # a box "to the end of the file": nothing after it is parsed

    def feed(self, data: bytes) -> int:
        """Take the next bytes of the MP4; returns the video frames complete so far."""
        view = memoryview(data)
        while view and not self._to_end:
            if self._skip:
                taken = min(self._skip, len(view))
                self._skip -= taken
                view = view[taken:]
                if not self._skip:
                    self._box_skipped()
                continue
            # Into the buffer: box headers and moov/moof; the part of a skipped box's payload that came along is
            # dropped from it at once, and the rest of that payload is skipped above.
            self._buffer += view
            view = view[len(view) :]
            self._parse_buffer()
        return self.frames

    def _parse_buffer(self) -> None:
        while True:
            header = _box_header(self._buffer, 0)
            if header is None:
                return
            kind, size, header_len = header
            if size == 0:
                self._to_end = True
                self._buffer.clear()
                return
            if size < header_len:  # not an MP4 we understand: stop counting rather than guess
                self._to_end = True
                self._buffer.clear()
                return
            if kind not in self._READ or size > self._MAX_INDEX_BYTES:
                taken = min(size, len(self._buffer))
                del self._buffer[:taken]
                self._skip = size - taken
                self._skipping_mdat = kind == b"mdat"
                if not self._skip:
                    self._box_skipped()
                    continue
                return
            if len(self._buffer) < size:
                return
            body = bytes(self._buffer[header_len:size])
            del self._buffer[:size]
            if kind == b"moov":
                self._read_moov(body)
            else:
                self._pending += self._video_samples(body)

    def _box_skipped(self) -> None:
        if self._skipping_mdat:
            self.frames += self._pending
            self._pending = 0
        self._skipping_mdat = False

    def _read_moov(self, body: bytes) -> None:
        for kind, trak in _children(body):
            if kind != b"trak":
                continue
            track_id, handler = None, None
            for child, payload in _children(trak):
                if child == b"tkhd" and len(payload) >= 4:
                    offset = 4 + (16 if payload[0] == 1 else 8)  # version/flags, creation and modification times
                    if len(payload) >= offset + 4:
                        track_id = struct.unpack_from(">I", payload, offset)[0]
                elif child == b"mdia":
                    for leaf, hdlr in _children(payload):
                        if leaf == b"hdlr" and len(hdlr) >= 12:
                            handler = hdlr[8:12]  # after version/flags and pre_defined
            if track_id is not None and handler == b"vide":
                self._video_tracks.add(track_id)

    def _video_samples(self, moof: bytes) -> int:
        samples = 0
        for kind, traf in _children(moof):
            if kind != b"traf":
                continue
            track_id, count = None, 0
            for child, payload in _children(traf):
                if child == b"tfhd" and len(payload) >= 8:
                    track_id = struct.unpack_from(">I", payload, 4)[0]
                elif child == b"trun" and len(payload) >= 8:
                    count += struct.unpack_from(">I", payload, 4)[0]
            if track_id in self._video_tracks:
                samples += count
        return samples


def _box_header(data: bytes | bytearray, pos: int) -> tuple[bytes, int, int] | None:
    """(type, size, header length) of the box at `pos`, or None while its header is incomplete."""
    if len(data) - pos < 8:
        return None
    size, kind = struct.unpack_from(">I4s", data, pos)
    if size == 1:
        if len(data) - pos < 16:
            return None
        return kind, struct.unpack_from(">Q", data, pos + 8)[0], 16
    return kind, size, 8


def _children(body: bytes) -> Iterator[tuple[bytes, bytes]]:
    """The (type, payload) of each complete child box in a container box's payload."""
    pos = 0
    while True:
        header = _box_header(body, pos)
        if header is None:
            return
        kind, size, header_len = header
        if size == 0:
            size = len(body) - pos
        if size < header_len or pos + size > len(body):
            return
        yield kind, body[pos + header_len : pos + size]
        pos += size


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
        data: dict[str, Any] = {self.field_name: chunk}  # one of the bytes fields, by name
        return lipsync_pb2.LipsyncRequest(input=lipsync_pb2.LipsyncInputData(**data))

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
        yield from speaker_batches(list(speakers))
        started = time.monotonic()
        media_sent = 0
        while True:
            pending = [u for u in uploads if not u.done]
            if not pending:
                break
            upload = min(pending, key=lambda u: u.fraction)
            media = upload.next_request(chunk_bytes)
            if media is None:
                continue
            size = len(getattr(media.input, upload.field_name))
            media_sent += size
            progress.bytes_sent += size
            if upload_seconds and progress.bytes_total:
                # Pacing: never ahead of the even schedule.
                due = started + upload_seconds * media_sent / progress.bytes_total
                delay = due - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            yield media
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
    on_summary: Callable[[CallSummary], None] | None = None,
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
        on_summary: called once the call has ended successfully, with what its trailing metadata says.

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
    counter = FragmentCounter()
    finished = False
    try:
        for response in call:
            if response.WhichOneof("lipsync_response") == "video_file_data":
                progress.bytes_received += len(response.video_file_data)
                progress.frames_received = counter.feed(response.video_file_data)
                if on_progress is not None:
                    on_progress(progress)
            yield response
        finished = True
        if on_summary is not None:
            on_summary(CallSummary.from_metadata(call.trailing_metadata()))
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

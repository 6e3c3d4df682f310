"""Open an input MP4, validate it, and decode its H.264 video at a constant frame rate (with a replayable tail)."""

from __future__ import annotations

import dataclasses
import itertools
import logging
from collections import deque
from collections.abc import Generator, Iterable
from fractions import Fraction
from pathlib import Path
from typing import NamedTuple, cast

import av
import av.error
import numpy as np

from lipsync_service.errors import InvalidInput, LipsyncError, ResourceExhausted
from lipsync_service.media.av_errors import PYAV_ERRORS, GuardedSource, reason
from lipsync_service.media.probe import EBML_MAGIC, refuse_matroska
from lipsync_service.media.soundtrack import Soundtrack
from lipsync_service.media.timeline import EXTENSION_TAIL_S, first_slot, tail_length
from lipsync_service.media.types import Readable, VideoInfo
from lipsync_service.settings import Settings

log = logging.getLogger(__name__)

OUTPUT_PIX_FMT = "yuv420p"
# Stream-level frame rates that differ by more than this (relative) mean variable frame rate, on top
# of what one odd last-frame duration explains (1/frame count; 5% when the count is unknown).
_RATE_TOLERANCE = 0.01
_UNKNOWN_COUNT_TOLERANCE = 0.05
# Output rate bounds for variable-frame-rate input: a base rate above this is a timestamp grid
# (e.g. 1/90000 s), not a frame rate, and the average rate is used instead.
_MAX_NORMALISED_FPS = 60
_COMMON_RATES = tuple(Fraction(r) for r in ("24000/1001", "24", "25", "30000/1001", "30", "50", "60000/1001", "60"))
# A frame stamped this far past the duration the header states has a corrupt timestamp.
_PTS_PAST_END_S = 1



def _rate_text(fps: Fraction) -> str:
    return f"{float(fps):.3f}".rstrip("0").rstrip(".")


def _to_fraction(rate: Fraction | None) -> Fraction | None:
    if rate is None:
        return None
    try:
        value = Fraction(rate)
    except (TypeError, ValueError, ZeroDivisionError):
        return None
    return value if value > 0 else None


def _normalised_rate(base: Fraction, average: Fraction) -> Fraction:
    """Output rate for variable-frame-rate input: the base rate (r_frame_rate) when it is a frame rate,
    else the average snapped to a common rate or rounded, at most _MAX_NORMALISED_FPS."""
    if base <= _MAX_NORMALISED_FPS and base >= average * (1 - _RATE_TOLERANCE):
        return base
    for common in _COMMON_RATES:
        if abs(average - common) <= _RATE_TOLERANCE * common:
            return common
    return Fraction(min(_MAX_NORMALISED_FPS, max(1, round(average))))


class _FullReader:
    """Reads exactly n bytes (fewer only at the end of input) from a source that may return less.

    FFmpeg's MP4 demuxer fails on a non-seekable input whose reads come back short (a ByteStream
    returns whatever has arrived, e.g. a few hundred bytes of a slow upload): measured with PyAV 18,
    reads of 256 bytes break the header parse while reads of 1000+ bytes work.
    """

    def __init__(self, source: Readable) -> None:
        self._source = source
        self._first = True

    def read(self, n: int = -1) -> bytes:
        data = self._read(n)
        if self._first and data:
            # The first bytes FFmpeg asks for: a Matroska/WebM upload is named here, not called corrupt.
            self._first = False
            refuse_matroska(data)
        return data

    def _read(self, n: int) -> bytes:
        if n is None or n < 0:
            return self._source.read()
        parts: list[bytes] = []
        got = 0
        while got < n:
            chunk = self._source.read(n - got)
            if not chunk:
                break
            parts.append(chunk)
            got += len(chunk)
        return b"".join(parts)


def _refuse_matroska_file(path: str) -> None:
    """InvalidInput with the remux advice for a Matroska/WebM file (an unreadable one is left to the demuxer)."""
    try:
        with open(path, "rb") as f:
            head = f.read(len(EBML_MAGIC))
    except OSError:
        return
    refuse_matroska(head)


class DecodedFrame(NamedTuple):
    """One output frame of the constant-rate timeline.

    Attributes:
        index: output frame number (pts index / fps).
        source_index: which input frame (in decode order, counting from 0) the picture is.
        frame: the picture, yuv420p.
    """

    # Shadows tuple.index (mypy objects): the field's name is public API, kept.
    index: int  # type: ignore[assignment]
    source_index: int
    frame: av.VideoFrame


class _Gop:
    """Compressed packets from one keyframe up to the next, in decode order."""

    __slots__ = ("key_pts", "packets")

    def __init__(self, key_pts: int | None) -> None:
        self.key_pts = key_pts
        self.packets: list[av.Packet] = []


class VideoSource:
    """An input MP4's video stream: validation on open, then decoded frames at a constant frame rate.

    Variable frame rate (phone footage) is normalised as ffmpeg's cfr mode does: output frame k is
    shown at k / fps and takes the latest input frame presented at or before k / fps + half a frame
    (timeline.first_slot). An input frame is repeated to fill a gap and dropped when the next one
    lands in the same output slot. Constant-rate input maps one to one. `fps` is the stream's base
    rate; each output frame keeps the index of the input frame it shows (speaker data refers to
    input frames).

    Extension support (extend_video): the last 5 s must be replayable after the input ended, but
    the input may be an hour long and is read once from a non-seekable stream. Keeping the decoded
    tail would cost up to 150 raw frames (1.8 GB at 4K), so this keeps the *compressed* packets from
    the last keyframe at or before (end - 5 s) instead, dropping whole GOPs as they fall out of that
    window (a few MB at typical bitrates), and re-decodes them with a fresh decoder on demand, one
    GOP at a time. Re-decoded frames are bit-identical to the first decode and are new objects, so
    a processor that draws into a frame never sees its own earlier drawing.
    """

    def __init__(self, source: Readable | Path | str, settings: Settings, *, keep_tail: bool = True,
                 soundtrack: bool = False) -> None:
        """Prepare to read `source`.

        Args:
            source: a readable file-like (possibly non-seekable, e.g. a media.pipe.ByteStream) or a path.
            settings: limits (frame size, duration).
            keep_tail: keep the compressed last 5 s for `tail_frames` (only jobs that extend the
                video need it; a video with very long GOPs makes it hold more).
            soundtrack: measure the loudness of the MP4's own audio track per frame (`soundtrack`), for finding
                who speaks; a missing or unreadable audio track is not an error.
        """
        self._source = source
        self._want_soundtrack = soundtrack
        self._soundtrack: Soundtrack | None = None
        self._audio_stream: av.AudioStream | None = None
        self._settings = settings
        self._keep_tail = keep_tail
        self._container: av.container.InputContainer | None = None
        self._stream: av.VideoStream | None = None
        self._info: VideoInfo | None = None
        self._count = 0  # input frames decoded
        self._slots = 0  # output frames yielded
        self._repeated = 0
        self._dropped = 0
        self._first_pts: int | None = None
        self._last_offset: Fraction | None = None  # presentation time of the latest frame, after the first
        self._last_duration: Fraction | None = None
        self._end_limit: Fraction | None = None
        self._gops: deque[_Gop] = deque()
        self._pts_index: dict[int, int] = {}
        self._tail_max = 0
        # Input frame shown by each of the latest output frames (the extension tail replays them).
        self._slot_sources: deque[int] = deque()
        self._ended = False
        self._closed = False
        # The first decoded frame, read by open() for its rotation, and the decoding it came from.
        self._decoded: Generator[av.VideoFrame, None, None] | None = None
        self._first: av.VideoFrame | None = None
        self._first_error: BaseException | None = None
        self._coded_size: tuple[int, int] = (0, 0)
        self._turns = 0  # quarter turns counter-clockwise that make a decoded picture upright
        self._guard: GuardedSource | None = None  # a file-like source, as PyAV reads it

    # Open and validate ------------------------------------------------------------------------

    def open(self) -> VideoInfo:
        """Read the header and validate the video stream.

        Returns:
            Facts about the stream (size, the exact output fps, input frame count when the container
            has it, whether the input is variable frame rate).

        Raises:
            InvalidInput: not an MP4, corrupt header, no video, not H.264, too large, odd size.
            ResourceExhausted: longer than settings.max_duration_s.
        """
        if self._info is not None:
            return self._info
        src: str | GuardedSource
        if isinstance(self._source, (Path, str)):
            src = str(self._source)
            _refuse_matroska_file(src)
        else:
            src = self._guard = GuardedSource(_FullReader(self._source))
        try:
            # Forcing the MP4 demuxer: probing could take garbage for some other format. Metadata
            # is free text: undecodable bytes there must not fail the video.
            self._container = av.open(src, mode="r", format="mp4", metadata_errors="replace")
        except LipsyncError:
            raise
        except EOFError as exc:
            self._source_error()
            raise InvalidInput(
                "video: the MP4 ended before its header (moov) was complete: the file is truncated"
            ) from exc
        except PYAV_ERRORS as exc:
            self._source_error()
            raise InvalidInput(
                f"video: the data is not a readable MP4 file or its header is corrupt ({reason(exc)})"
            ) from exc
        try:
            self._source_error()
            info = self._inspect(self._container)
        except LipsyncError:
            raise
        except PYAV_ERRORS as exc:
            self._source_error()
            raise InvalidInput(f"video: the MP4 header is corrupt ({reason(exc)})") from exc
        self._open_soundtrack(self._container, info)
        self._info = self._upright(info, self._peek())
        return self._info

    def _source_error(self) -> None:
        """Raise what the upload's reader raised under PyAV (Cancelled, a Matroska upload), if anything."""
        if self._guard is not None:
            self._guard.raise_error()

    @property
    def soundtrack(self) -> Soundtrack | None:
        """The loudness of the MP4's own audio per frame, once open() found one (and it was asked for)."""
        return self._soundtrack

    def _open_soundtrack(self, container: av.container.InputContainer, info: VideoInfo) -> None:
        if not self._want_soundtrack or not container.streams.audio:
            return
        assert self._stream is not None
        video = self._stream
        start = float(video.start_time * video.time_base) if video.start_time is not None and video.time_base else 0.0
        if isinstance(self._source, (Path, str)):
            # A file is read again for its audio, on demand: its audio may lie anywhere in it.
            self._soundtrack = Soundtrack.from_file(self._source, info.fps, start)
        else:
            # A pipe is read once: the audio packets interleaved with the video are decoded as they pass.
            self._audio_stream = container.streams.audio[0]
            self._soundtrack = Soundtrack(info.fps, start)

    def _peek(self) -> int:
        """Decode the first frame now, for the display rotation only decoded frames report (0 if none).

        A failure is kept and raised by frames(), which reports every decoding error of the input.
        """
        self._decoded = self._decode_all()
        try:
            self._first = next(self._decoded, None)
        except (LipsyncError, EOFError, *PYAV_ERRORS) as exc:
            self._first_error = self._guard.error if self._guard is not None and self._guard.error else exc
            return 0
        if self._first is None:
            return 0
        try:
            return int(round(self._first.rotation or 0))
        except (AttributeError, TypeError, ValueError):  # no or unreadable display matrix
            return 0

    def _upright(self, info: VideoInfo, rotation: int) -> VideoInfo:
        """The stream as players show it: frames are turned by `rotation` (CCW degrees) as they are decoded."""
        self._coded_size = (info.width, info.height)
        if rotation % 90:
            log.warning("video: display rotation %s degrees is not a quarter turn; frames are used as coded", rotation)
            return info
        self._turns = (rotation // 90) % 4
        if not self._turns:
            return info
        rotation = (rotation + 179) % 360 - 179  # in (-180, 180]: FFmpeg may say -180 for a half turn
        log.info("video: display matrix rotates by %s degrees; frames are turned upright, output carries no rotation",
                 rotation)
        width, height = (info.height, info.width) if self._turns % 2 else (info.width, info.height)
        return dataclasses.replace(info, width=width, height=height, rotation=rotation)

    def _decode_all(self) -> Generator[av.VideoFrame, None, None]:
        """Every decoded frame of the input in decode order, remembering packets for the tail."""
        assert self._container is not None and self._stream is not None
        streams: list[av.stream.Stream] = [self._stream]
        if self._audio_stream is not None:
            streams.append(self._audio_stream)
        for packet in self._container.demux(*streams):
            if packet.stream is not self._stream:
                self._soundtrack_packet(packet)
                continue
            if packet.is_corrupt:
                # The demuxer flags a sample cut short by the end of the input (or by our reader's error).
                self._source_error()
                raise self._truncated()
            if packet.size and self._keep_tail:
                self._remember(packet)
            for frame in packet.decode():
                if isinstance(frame, av.VideoFrame):
                    yield frame
        # The demuxer stops at what looks like the end of the input; it may be our reader's error.
        self._source_error()
        if self._audio_stream is not None and self._soundtrack is not None and not self._soundtrack.ended:
            self._soundtrack.finish()

    def _soundtrack_packet(self, packet: av.Packet) -> None:
        """Decode one packet of the interleaved audio into the soundtrack; a failure only ends the soundtrack."""
        track = self._soundtrack
        if track is None or track.ended:
            return
        if packet.size == 0:
            track.finish()
            return
        try:
            for frame in packet.decode():
                if isinstance(frame, av.AudioFrame):
                    track.add(frame)
        except PYAV_ERRORS as exc:
            track.fail(f"its audio track is unreadable: {reason(exc)}")

    def _inspect(self, container: av.container.InputContainer) -> VideoInfo:
        if not container.streams.video and not container.streams.audio:
            # The demuxer gives up quietly when the input ends inside the moov box.
            raise InvalidInput("video: the MP4 header (moov) is incomplete or corrupt: the file may be truncated")
        if not container.streams.video:
            raise InvalidInput("video: the MP4 has no video stream")
        stream = container.streams.video[0]
        self._stream = stream
        ctx = stream.codec_context
        if ctx is None:
            # FFmpeg has no decoder for the track's sample entry (an unknown or corrupt codec tag).
            raise InvalidInput(
                "video: the MP4's video track is in a format this server cannot decode (unknown or corrupt "
                "codec tag): re-encode the video as H.264"
            )
        if ctx.name != "h264":
            raise InvalidInput(f"video codec {ctx.name} is not supported: re-encode the video as H.264")
        width, height = ctx.width, ctx.height
        s = self._settings
        if width <= 0 or height <= 0:
            raise InvalidInput("video: the H.264 stream has no frame size in its header (corrupt MP4)")
        if max(width, height) > s.max_frame_side or width * height > s.max_frame_pixels:
            raise InvalidInput(
                f"video: frame size {width}x{height} is larger than supported (at most "
                f"{s.max_frame_side} pixels per side and {s.max_frame_pixels} pixels, i.e. 4K): scale it down"
            )
        if width % 2 or height % 2:
            raise InvalidInput(
                f"video: frame size {width}x{height} is odd; H.264 output in yuv420p needs even width and "
                "height: crop or scale the video by one pixel (e.g. ffmpeg -vf crop=trunc(iw/2)*2:trunc(ih/2)*2)"
            )
        fps, constant = self._frame_rate(stream)
        frame_count = self._frame_count(stream, fps, constant)
        duration_s = self._duration_s(stream, fps, frame_count, constant)
        if duration_s is not None and duration_s > s.max_duration_s + 1e-6:
            raise ResourceExhausted(
                f"video: {duration_s:.1f} s is longer than the {s.max_duration_s:g} s limit; "
                "split it into shorter parts"
            )
        # Only a header with a sample table states a duration: for a fragmented MP4 read from a pipe,
        # FFmpeg's figure is just the fragments its probing has read, and would reject the rest.
        if frame_count is not None and stream.duration and stream.time_base:
            self._end_limit = Fraction(stream.duration) * Fraction(stream.time_base) + _PTS_PAST_END_S
        # Frame threading speeds up decode and only delays output by a few frames.
        ctx.thread_type = "AUTO"
        self._tail_max = max(1, round(EXTENSION_TAIL_S * float(fps)))
        self._slot_sources = deque(maxlen=self._tail_max)
        pix_fmt = ctx.pix_fmt or OUTPUT_PIX_FMT
        info = VideoInfo(width=width, height=height, fps=fps, pix_fmt=pix_fmt, frame_count=frame_count,
                         constant_rate=constant)
        log.debug("video opened: %sx%s %s fps, %s frames, %s", width, height, fps, frame_count, pix_fmt)
        if not constant:
            log.info("video: variable frame rate input (%s fps on average, %s frames): normalising to a constant "
                     "%s fps", _rate_text(Fraction(stream.average_rate or 0)), frame_count or "unknown",
                     _rate_text(fps))
        return info

    @staticmethod
    def _frame_rate(stream: av.VideoStream) -> tuple[Fraction, bool]:
        """The output frame rate and whether the header describes a constant rate."""
        avg = _to_fraction(stream.average_rate)
        base = _to_fraction(stream.base_rate) or _to_fraction(stream.guessed_rate)
        if avg is not None and base is not None:
            slack = 1.5 / stream.frames if stream.frames else _UNKNOWN_COUNT_TOLERANCE
            if abs(avg - base) <= (_RATE_TOLERANCE + slack) * base:
                return base, True
            return _normalised_rate(base, avg), False
        fps = base or avg
        if fps is None:
            raise InvalidInput("video: the MP4 does not state a frame rate; re-encode it at a constant frame rate")
        return fps, True

    @staticmethod
    def _frame_count(stream: av.VideoStream, fps: Fraction, constant: bool) -> int | None:
        # The sample table can list more samples than the edit list presents (seen in real files:
        # 266 samples, 209 shown); the presented duration is the better count when both exist. At a
        # variable rate the duration does not count input frames.
        samples = stream.frames or None
        if constant and samples and stream.duration and stream.time_base:
            shown = round(stream.duration * stream.time_base * fps)
            if 0 < shown < samples:
                return shown
        return samples

    @staticmethod
    def _duration_s(stream: av.VideoStream, fps: Fraction, frame_count: int | None, constant: bool) -> float | None:
        if frame_count and constant:
            return frame_count / float(fps)
        if stream.duration and stream.time_base:
            return float(stream.duration * stream.time_base)
        return None

    @property
    def info(self) -> VideoInfo:
        """The stream facts (after `open`)."""
        if self._info is None:
            raise RuntimeError("VideoSource.open() was not called")
        return self._info

    @property
    def frames_decoded(self) -> int:
        """Input frames decoded so far (the input's frame count once `frames()` is exhausted)."""
        return self._count

    @property
    def frames_emitted(self) -> int:
        """Output frames yielded so far (the constant-rate video's frame count once `frames()` is exhausted)."""
        return self._slots

    @property
    def frames_repeated(self) -> int:
        """Output frames that repeat an input frame to fill a timing gap (variable frame rate)."""
        return self._repeated

    @property
    def frames_dropped(self) -> int:
        """Input frames left out because the next one fell into the same output frame (variable frame rate)."""
        return self._dropped

    # Decode ------------------------------------------------------------------------------------

    def frames(self) -> Generator[DecodedFrame, None, None]:
        """Decode the video in presentation order at the constant output rate.

        Each input frame is held until the next one is decoded (its timestamp decides how many
        output frames the held one fills), so output lags decoding by one frame.

        Yields:
            DecodedFrame(index, source_index, frame in yuv420p): the decoder's own frame object when
            it is already yuv420p (the encoder then sees exactly the decoded planes), a converted copy
            otherwise; a repeated input frame comes as bit-identical copies first, the decoded object last.

        Raises:
            InvalidInput: truncated or corrupt data, a frame of another size, timestamps that repeat
                or go backwards.
            ResourceExhausted: the video runs past settings.max_duration_s.
        """
        info = self.open()
        assert self._decoded is not None
        held: tuple[int, av.VideoFrame] | None = None
        try:
            if self._first_error is not None:
                raise self._first_error
            first, self._first = self._first, None
            for frame in itertools.chain([first] if first is not None else [], self._decoded):
                source, picture, start = self._accept(frame)
                if held is not None:
                    yield from self._fill(*held, start)
                held = (source, picture)
        except LipsyncError:
            raise
        except (EOFError, *PYAV_ERRORS) as exc:
            self._source_error()
            raise self._truncated() from exc
        if info.frame_count is not None and self._count < info.frame_count:
            raise self._truncated()
        if held is None:
            raise InvalidInput("video: the MP4 contains no decodable video frames")
        yield from self._fill(*held, self._end_slot())
        self._ended = True
        if self._repeated or self._dropped:
            log.info("video: %d input frames normalised to %d frames at a constant %s fps (%d repeated, %d dropped)",
                     self._count, self._slots, _rate_text(info.fps), self._repeated, self._dropped)

    def _truncated(self) -> InvalidInput:
        return InvalidInput(f"video: the MP4 is truncated or corrupt after frame {self._count}")

    def _accept(self, frame: av.VideoFrame) -> tuple[int, av.VideoFrame, int]:
        """Check one decoded frame and place it on the timeline: (source index, yuv420p picture, first slot)."""
        info = self._info
        assert info is not None
        index = self._count
        coded_w, coded_h = self._coded_size
        if frame.width != coded_w or frame.height != coded_h:
            # Corrupt data, spliced clips or an unaligned left crop (FFmpeg drops it) decode at another
            # size than the header states; the encoder needs one size.
            raise InvalidInput(
                f"video: frame {index} is {frame.width}x{frame.height} but the stream is {coded_w}x{coded_h}: "
                "the H.264 data is corrupt, changes resolution mid-stream or has a cropping the decoder does not "
                "apply; re-encode it at one frame size"
            )
        pts = frame.pts
        time_base = frame.time_base
        if pts is None or time_base is None:
            # No timestamp: assume it follows the previous frame at the nominal rate.
            offset = Fraction(0) if self._last_offset is None else self._last_offset + 1 / info.fps
        else:
            if self._first_pts is None:
                self._first_pts = pts
            offset = Fraction(pts - self._first_pts) * Fraction(time_base)
            if self._keep_tail:
                self._pts_index[pts] = index
        if self._last_offset is not None and offset <= self._last_offset:
            raise InvalidInput(
                f"video: frame {index} is stamped {float(offset):.3f} s after the first frame, not later than frame "
                f"{index - 1} ({float(self._last_offset):.3f} s): timestamps repeat or go backwards (corrupt or "
                f"badly muxed MP4); re-encode it, e.g. ffmpeg -i in.mp4 -vf fps={_rate_text(info.fps)} "
                "-c:v libx264 out.mp4"
            )
        if self._end_limit is not None and offset > self._end_limit:
            raise InvalidInput(
                f"video: frame {index} is stamped {float(offset):.1f} s after the first frame, past the "
                f"{float(self._end_limit - _PTS_PAST_END_S):.1f} s the MP4 header states: its timestamps are corrupt"
            )
        self._last_offset = offset
        duration = frame.duration
        self._last_duration = Fraction(duration) * Fraction(time_base) if duration and time_base else None
        self._count += 1
        return index, _as_yuv420p(frame, self._turns), first_slot(offset, info.fps)

    def _end_slot(self) -> int:
        """Where the last input frame stops: its duration (one frame when unknown), at least its own slot."""
        info = self._info
        assert info is not None and self._last_offset is not None
        end = self._last_offset + (self._last_duration or 1 / info.fps)
        return max(first_slot(end, info.fps), first_slot(self._last_offset, info.fps) + 1)

    def _fill(self, source: int, picture: av.VideoFrame, end_slot: int) -> Generator[DecodedFrame, None, None]:
        """Yield `picture` for every output slot before `end_slot` not yet filled (none: it is dropped)."""
        count = end_slot - self._slots
        if count <= 0:
            self._dropped += 1
            return
        self._repeated += count - 1
        fps = self.info.fps
        limit = self._settings.max_duration_s
        for i in range(count):
            slot = self._slots
            if (slot + 1) / fps > limit + 1e-6:
                raise ResourceExhausted(f"video: longer than the {limit:g} s limit; split it into shorter parts")
            self._slot_sources.append(source)
            self._slots += 1
            if self._keep_tail:
                self._trim_tail()
            # Copies first, while the decoded picture is still untouched by whoever gets it.
            yield DecodedFrame(slot, source, picture if i == count - 1 else _copy(picture))

    # Tail for extension -------------------------------------------------------------------------

    def _remember(self, packet: av.Packet) -> None:
        if packet.is_keyframe:
            self._gops.append(_Gop(packet.pts))
        elif not self._gops:
            # Packets before the first keyframe cannot be re-decoded on their own.
            return
        self._gops[-1].packets.append(packet)

    def _trim_tail(self) -> None:
        # Drop the oldest GOP once the next one alone covers every frame the last 5 s can show: the
        # tail starts at or after the input frame of the output frame tail_max slots back.
        if len(self._slot_sources) < self._tail_max:
            return
        oldest = self._slot_sources[0]
        while len(self._gops) >= 2:
            key_pts = self._gops[1].key_pts
            key_index = self._pts_index.get(key_pts) if key_pts is not None else None
            if key_index is None or key_index > oldest:
                return
            self._gops.popleft()
            first_key = self._gops[0].key_pts
            if first_key is not None:
                for pts in [p for p in self._pts_index if p < first_key]:
                    del self._pts_index[pts]

    @property
    def tail_start(self) -> int:
        """First output index of the replayable tail (after the video ended)."""
        return self._slots - tail_length(self._slots, self.info.fps)

    def tail_frames(self, indices: Iterable[int]) -> Generator[DecodedFrame, None, None]:
        """Re-decode frames of the tail (the last 5 s) in any order, after `frames()` ended.

        Memory holds at most one GOP's worth of decoded tail frames. Every frame given out is a fresh
        copy of the re-decoded picture, so drawing into one never shows up in a later one.

        Args:
            indices: output indices, each in [tail_start, frames_emitted); may be endless (the
                caller stops iterating when it has enough).

        Yields:
            DecodedFrame(output index, source index, frame in yuv420p).

        Raises:
            InvalidInput: the compressed tail cannot be decoded again (corrupt data).
            ValueError: an index outside the tail, or the video was not fully decoded yet.
        """
        if not self._ended or not self._keep_tail:
            raise ValueError("tail_frames() needs the whole video decoded first, with keep_tail=True")
        start = self.tail_start
        # _slot_sources holds the sources of the last len() output frames; the tail is within them.
        first_kept = self._slots - len(self._slot_sources)
        first_source = self._slot_sources[start - first_kept]
        cache: dict[int, av.VideoFrame] = {}
        for index in indices:
            if not start <= index < self._slots:
                raise ValueError(f"frame {index} is outside the tail [{start}, {self._slots})")
            source = self._slot_sources[index - first_kept]
            if source not in cache:
                cache = self._decode_gop_of(source, first_source)
            yield DecodedFrame(index, source, _copy(cache[source]))

    def _gop_position(self, index: int) -> int:
        pos = 0
        for i, gop in enumerate(self._gops):
            key_index = self._pts_index.get(gop.key_pts) if gop.key_pts is not None else None
            if key_index is not None and key_index <= index:
                pos = i
        return pos

    def _decode_gop_of(self, index: int, start: int) -> dict[int, av.VideoFrame]:
        pos = self._gop_position(index)
        # Closed GOPs decode on their own; for an open GOP, whose last frames are only complete with
        # the next GOP's leading packets, decode one more GOP.
        for extra in (0, 1):
            last = min(pos + extra, len(self._gops) - 1)
            frames = self._redecode(list(self._gops)[pos : last + 1], start)
            if index in frames or last == len(self._gops) - 1:
                break
        if index not in frames:
            raise InvalidInput(f"video: frame {index} of the tail could not be decoded again (corrupt data)")
        return frames

    def _redecode(self, gops: Iterable[_Gop], start: int) -> dict[int, av.VideoFrame]:
        assert self._stream is not None
        src = self._stream.codec_context
        # The stub's overloads know the codec from a literal name only; this one is the video stream's own.
        ctx = cast(av.VideoCodecContext, av.CodecContext.create(src.name, "r"))
        ctx.extradata = src.extradata
        ctx.thread_type = "AUTO"
        out: dict[int, av.VideoFrame] = {}
        try:
            packets = [p for gop in gops for p in gop.packets]
            for packet in [*packets, None]:
                for frame in ctx.decode(packet):
                    index = self._pts_index.get(frame.pts) if frame.pts is not None else None
                    if index is not None and index >= start:
                        out[index] = _as_yuv420p(frame, self._turns)
        except PYAV_ERRORS as exc:
            raise InvalidInput(f"video: the end of the video could not be decoded again ({reason(exc)})") from exc
        return out

    # Release -----------------------------------------------------------------------------------

    def close(self) -> None:
        """Release the container and the kept packets; idempotent."""
        if self._closed:
            return
        self._closed = True
        self._first = None
        if self._decoded is not None:
            self._decoded.close()  # a generator paused inside the container's demuxing
            self._decoded = None
        self._gops.clear()
        self._pts_index.clear()
        if self._soundtrack is not None:
            self._soundtrack.close()
        if self._container is not None:
            try:
                self._container.close()
            except Exception:  # noqa: BLE001 - closing must never raise
                log.debug("closing the input container failed", exc_info=True)
            self._container = None
        # A stream owns its decoder (frame threads and frame pool), which a closed container does not free;
        # a failed job's traceback may keep this object alive until the garbage collector finds the cycle.
        self._stream = None
        self._audio_stream = None
        self._first_error = None
        self._guard = None

    def __enter__(self) -> VideoSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _as_yuv420p(frame: av.VideoFrame, turns: int = 0) -> av.VideoFrame:
    """The frame in yuv420p, turned `turns` quarter turns counter-clockwise (the decoded object when no work)."""
    converted = frame if frame.format.name == OUTPUT_PIX_FMT else frame.reformat(format=OUTPUT_PIX_FMT)
    if turns:
        converted = _turned(converted, turns)
    if converted is not frame:
        converted.pts = frame.pts
        if frame.time_base is not None:
            converted.time_base = frame.time_base
    return converted


def yuv420p_planes(flat: np.ndarray, width: int, height: int) -> list[np.ndarray]:
    """Y, U and V views of a yuv420p picture in to_ndarray()'s layout ([3h/2, w]: Y rows, then U and V back to back)."""
    chroma = flat[height:].reshape(-1)
    quarter = height * width // 4
    return [flat[:height], chroma[:quarter].reshape(height // 2, width // 2),
            chroma[quarter:].reshape(height // 2, width // 2)]


def _turned(frame: av.VideoFrame, turns: int) -> av.VideoFrame:
    """A yuv420p frame rotated by quarter turns counter-clockwise, plane by plane (lossless)."""
    turned = [np.rot90(plane, turns) for plane in yuv420p_planes(frame.to_ndarray(), frame.width, frame.height)]
    out_h, out_w = turned[0].shape
    packed = np.concatenate([plane.reshape(-1) for plane in turned]).reshape(out_h * 3 // 2, out_w)
    return av.VideoFrame.from_ndarray(packed, format=OUTPUT_PIX_FMT)


def _copy(frame: av.VideoFrame) -> av.VideoFrame:
    """A new frame with the same yuv420p planes, bit for bit."""
    copy = av.VideoFrame.from_ndarray(frame.to_ndarray(), format=OUTPUT_PIX_FMT)
    copy.pts = frame.pts
    if frame.time_base is not None:
        copy.time_base = frame.time_base
    return copy


__all__ = ["OUTPUT_PIX_FMT", "DecodedFrame", "VideoSource", "yuv420p_planes"]

"""Open an input MP4, validate it, and decode its H.264 video frame by frame (with a replayable tail)."""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Iterable, Iterator
from fractions import Fraction
from pathlib import Path
from typing import BinaryIO

import av
import av.error

from lipsync_service.errors import InvalidInput, LipsyncError, ResourceExhausted
from lipsync_service.media.timeline import EXTENSION_TAIL_S, tail_length
from lipsync_service.media.types import VideoInfo
from lipsync_service.settings import Settings

log = logging.getLogger(__name__)

OUTPUT_PIX_FMT = "yuv420p"
# Stream-level frame rates that differ by more than this (relative) mean variable frame rate, on top
# of what one odd last-frame duration explains (1/frame count; 5% when the count is unknown). The
# per-frame timestamp check while decoding is the exact test; this one only fails obvious cases early.
_RATE_TOLERANCE = 0.01
_UNKNOWN_COUNT_TOLERANCE = 0.05
# A frame interval off by more than this many nominal frame durations means variable frame rate.
_PTS_TOLERANCE_FRAMES = 0.5


def _vfr_error(detail: str, fps: Fraction | None) -> InvalidInput:
    rate = "25" if fps is None else str(fps.numerator) if fps.denominator == 1 else f"{fps.numerator}/{fps.denominator}"
    return InvalidInput(
        f"video: variable frame rate is not supported ({detail}); "
        f"re-encode at a constant frame rate, e.g. ffmpeg -i in.mp4 -vf fps={rate} -c:v libx264 out.mp4"
    )


def _to_fraction(rate: object) -> Fraction | None:
    if rate is None:
        return None
    try:
        value = Fraction(rate)  # type: ignore[arg-type]
    except (TypeError, ValueError, ZeroDivisionError):
        return None
    return value if value > 0 else None


class _FullReader:
    """Reads exactly n bytes (fewer only at the end of input) from a source that may return less.

    FFmpeg's MP4 demuxer fails on a non-seekable input whose reads come back short (a ByteStream
    returns whatever has arrived, e.g. a few hundred bytes of a slow upload): measured with PyAV 18,
    reads of 256 bytes break the header parse while reads of 1000+ bytes work.
    """

    def __init__(self, source: BinaryIO) -> None:
        self._source = source

    def read(self, n: int = -1) -> bytes:
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


class _Gop:
    """Compressed packets from one keyframe up to the next, in decode order."""

    __slots__ = ("key_pts", "packets")

    def __init__(self, key_pts: int | None) -> None:
        self.key_pts = key_pts
        self.packets: list[av.Packet] = []


class VideoSource:
    """An input MP4's video stream: validation on open, then decoded frames in order.

    Extension support (extend_video): the last 5 s must be replayable after the input ended, but
    the input may be an hour long and is read once from a non-seekable stream. Keeping the decoded
    tail would cost up to 150 raw frames (1.8 GB at 4K), so this keeps the *compressed* packets from
    the last keyframe at or before (end - 5 s) instead, dropping whole GOPs as they fall out of that
    window (a few MB at typical bitrates), and re-decodes them with a fresh decoder on demand, one
    GOP at a time. Re-decoded frames are bit-identical to the first decode and are new objects, so
    a processor that draws into a frame never sees its own earlier drawing.
    """

    def __init__(self, source: BinaryIO | Path | str, settings: Settings, *, keep_tail: bool = True) -> None:
        """Prepare to read `source`.

        Args:
            source: a readable file-like (possibly non-seekable, e.g. a media.pipe.ByteStream) or a path.
            settings: limits (frame size, duration).
            keep_tail: keep the compressed last 5 s for `tail_frames` (only jobs that extend the
                video need it; a video with very long GOPs makes it hold more).
        """
        self._source = source
        self._settings = settings
        self._keep_tail = keep_tail
        self._container: av.container.InputContainer | None = None
        self._stream: av.VideoStream | None = None
        self._info: VideoInfo | None = None
        self._count = 0
        self._last_pts: int | None = None
        self._first_pts: int | None = None
        self._gops: deque[_Gop] = deque()
        self._pts_index: dict[int, int] = {}
        self._tail_max = 0
        self._ended = False
        self._closed = False

    # Open and validate ------------------------------------------------------------------------

    def open(self) -> VideoInfo:
        """Read the header and validate the video stream.

        Returns:
            Facts about the stream (size, exact fps, frame count when the container has it).

        Raises:
            InvalidInput: not an MP4, corrupt header, no video, not H.264, too large, odd size,
                variable frame rate.
            ResourceExhausted: longer than settings.max_duration_s.
        """
        if self._info is not None:
            return self._info
        src = str(self._source) if isinstance(self._source, (Path, str)) else _FullReader(self._source)
        try:
            # Forcing the MP4 demuxer: probing could take garbage for some other format.
            self._container = av.open(src, mode="r", format="mp4")
        except LipsyncError:
            raise
        except EOFError as exc:
            raise InvalidInput("video: the MP4 ended before its header (moov) was complete: the file is truncated") from exc
        except (av.error.FFmpegError, OSError, ValueError) as exc:
            raise InvalidInput(f"video: the data is not a readable MP4 file or its header is corrupt ({exc})") from exc
        if not self._container.streams.video and not self._container.streams.audio:
            # The demuxer gives up quietly when the input ends inside the moov box.
            raise InvalidInput("video: the MP4 header (moov) is incomplete or corrupt: the file may be truncated")
        if not self._container.streams.video:
            raise InvalidInput("video: the MP4 has no video stream")
        stream = self._container.streams.video[0]
        self._stream = stream
        ctx = stream.codec_context
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
        fps = self._frame_rate(stream)
        frame_count = self._frame_count(stream, fps)
        duration_s = self._duration_s(stream, fps, frame_count)
        if duration_s is not None and duration_s > s.max_duration_s + 1e-6:
            raise ResourceExhausted(
                f"video: {duration_s:.1f} s is longer than the {s.max_duration_s:g} s limit; split it into shorter parts"
            )
        # Frame threading speeds up decode and only delays output by a few frames.
        ctx.thread_type = "AUTO"
        self._tail_max = max(1, round(EXTENSION_TAIL_S * float(fps)))
        pix_fmt = ctx.pix_fmt or OUTPUT_PIX_FMT
        self._info = VideoInfo(width=width, height=height, fps=fps, pix_fmt=pix_fmt, frame_count=frame_count)
        log.debug("video opened: %sx%s %s fps, %s frames, %s", width, height, fps, frame_count, pix_fmt)
        return self._info

    @staticmethod
    def _frame_rate(stream: av.VideoStream) -> Fraction:
        avg = _to_fraction(stream.average_rate)
        base = _to_fraction(stream.base_rate) or _to_fraction(stream.guessed_rate)
        if avg is not None and base is not None:
            slack = 1.5 / stream.frames if stream.frames else _UNKNOWN_COUNT_TOLERANCE
            if abs(avg - base) > (_RATE_TOLERANCE + slack) * base:
                raise _vfr_error(
                    f"the container reports {float(avg):.3f} fps on average but frames at {float(base):.3f} fps",
                    Fraction(round(avg)) or base,
                )
            return base
        fps = base or avg
        if fps is None:
            raise InvalidInput("video: the MP4 does not state a frame rate; re-encode it at a constant frame rate")
        return fps

    @staticmethod
    def _frame_count(stream: av.VideoStream, fps: Fraction) -> int | None:
        # The sample table can list more samples than the edit list presents (seen in real files:
        # 266 samples, 209 shown); the presented duration is the better count when both exist.
        samples = stream.frames or None
        if samples and stream.duration and stream.time_base:
            shown = round(stream.duration * stream.time_base * fps)
            if 0 < shown < samples:
                return shown
        return samples

    @staticmethod
    def _duration_s(stream: av.VideoStream, fps: Fraction, frame_count: int | None) -> float | None:
        if frame_count:
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
        """Frames yielded so far (the video's frame count once `frames()` is exhausted)."""
        return self._count

    # Decode ------------------------------------------------------------------------------------

    def frames(self) -> Iterator[tuple[int, av.VideoFrame]]:
        """Decode the video in presentation order.

        Yields:
            (source index, frame in yuv420p): the decoder's own frame object when it is already
            yuv420p (the encoder then sees exactly the decoded planes), a converted copy otherwise.

        Raises:
            InvalidInput: truncated or corrupt data, or variable frame timing.
            ResourceExhausted: the video runs past settings.max_duration_s.
        """
        info = self.open()
        assert self._container is not None and self._stream is not None
        stream = self._stream
        try:
            for packet in self._container.demux(stream):
                if packet.is_corrupt:
                    # The demuxer flags a sample cut short by the end of the input.
                    raise self._truncated()
                if packet.size and self._keep_tail:
                    self._remember(packet)
                for frame in packet.decode():
                    yield self._accept(frame)
        except LipsyncError:
            raise
        except EOFError as exc:
            raise self._truncated() from exc
        except (av.error.FFmpegError, OSError, ValueError) as exc:
            raise self._truncated() from exc
        if info.frame_count is not None and self._count < info.frame_count:
            raise self._truncated()
        if self._count == 0:
            raise InvalidInput("video: the MP4 contains no decodable video frames")
        self._ended = True

    def _truncated(self) -> InvalidInput:
        return InvalidInput(f"video: the MP4 is truncated or corrupt after frame {self._count}")

    def _accept(self, frame: av.VideoFrame) -> tuple[int, av.VideoFrame]:
        info = self._info
        assert info is not None
        pts = frame.pts
        if pts is not None and frame.time_base is not None:
            if self._first_pts is None:
                self._first_pts = pts
            if self._last_pts is not None:
                delta = float((pts - self._last_pts) * frame.time_base)
                nominal = 1 / float(info.fps)
                if abs(delta - nominal) > _PTS_TOLERANCE_FRAMES * nominal:
                    raise _vfr_error(
                        f"frames {self._count - 1} and {self._count} are {delta * 1000:.1f} ms apart, "
                        f"expected {nominal * 1000:.1f} ms at {float(info.fps):.3f} fps",
                        info.fps,
                    )
            self._last_pts = pts
            if self._keep_tail:
                self._pts_index[pts] = self._count
                self._trim_tail()
        index = self._count
        self._count += 1
        if self._count / float(info.fps) > self._settings.max_duration_s + 1e-6:
            raise ResourceExhausted(
                f"video: longer than the {self._settings.max_duration_s:g} s limit; split it into shorter parts"
            )
        return index, _as_yuv420p(frame)

    # Tail for extension -------------------------------------------------------------------------

    def _remember(self, packet: av.Packet) -> None:
        if packet.is_keyframe:
            self._gops.append(_Gop(packet.pts))
        elif not self._gops:
            # Packets before the first keyframe cannot be re-decoded on their own.
            return
        self._gops[-1].packets.append(packet)

    def _trim_tail(self) -> None:
        # Drop the oldest GOP once the next one alone covers every frame the last 5 s can hold.
        while len(self._gops) >= 2:
            key_index = self._pts_index.get(self._gops[1].key_pts)  # type: ignore[arg-type]
            if key_index is None or key_index > self._count - self._tail_max:
                return
            self._gops.popleft()
            first_key = self._gops[0].key_pts
            if first_key is not None:
                for pts in [p for p in self._pts_index if p < first_key]:
                    del self._pts_index[pts]

    @property
    def tail_start(self) -> int:
        """First source index of the replayable tail (after the video ended)."""
        return self._count - tail_length(self._count, self.info.fps)

    def tail_frames(self, indices: Iterable[int]) -> Iterator[tuple[int, av.VideoFrame]]:
        """Re-decode frames of the tail (the last 5 s) in any order, after `frames()` ended.

        Memory holds at most one GOP's worth of decoded tail frames. A frame asked for again while
        its GOP is still decoded comes back as a fresh copy.

        Args:
            indices: source indices, each in [tail_start, frames_decoded); may be endless (the
                caller stops iterating when it has enough).

        Yields:
            (source index, frame in yuv420p).

        Raises:
            InvalidInput: the compressed tail cannot be decoded again (corrupt data).
            ValueError: an index outside the tail, or the video was not fully decoded yet.
        """
        if not self._ended or not self._keep_tail:
            raise ValueError("tail_frames() needs the whole video decoded first, with keep_tail=True")
        start = self.tail_start
        cache: dict[int, av.VideoFrame] = {}
        given: set[int] = set()
        for index in indices:
            if not start <= index < self._count:
                raise ValueError(f"frame {index} is outside the tail [{start}, {self._count})")
            if index not in cache:
                cache = self._decode_gop_of(index, start)
                given = set()
            frame = cache[index]
            if index in given:
                frame = _copy(frame)
            given.add(index)
            yield index, frame

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
        ctx = av.CodecContext.create(src.name, "r")
        ctx.extradata = src.extradata
        ctx.thread_type = "AUTO"
        out: dict[int, av.VideoFrame] = {}
        try:
            packets = [p for gop in gops for p in gop.packets]
            for packet in [*packets, None]:
                for frame in ctx.decode(packet):
                    index = self._pts_index.get(frame.pts) if frame.pts is not None else None
                    if index is not None and index >= start:
                        out[index] = _as_yuv420p(frame)
        except (av.error.FFmpegError, ValueError) as exc:
            raise InvalidInput(f"video: the end of the video could not be decoded again ({exc})") from exc
        return out

    # Release -----------------------------------------------------------------------------------

    def close(self) -> None:
        """Release the container and the kept packets; idempotent."""
        if self._closed:
            return
        self._closed = True
        self._gops.clear()
        self._pts_index.clear()
        if self._container is not None:
            try:
                self._container.close()
            except Exception:  # noqa: BLE001 - closing must never raise
                log.debug("closing the input container failed", exc_info=True)
            self._container = None

    def __enter__(self) -> VideoSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _as_yuv420p(frame: av.VideoFrame) -> av.VideoFrame:
    if frame.format.name == OUTPUT_PIX_FMT:
        return frame
    converted = frame.reformat(format=OUTPUT_PIX_FMT)
    converted.pts = frame.pts
    if frame.time_base is not None:
        converted.time_base = frame.time_base
    return converted


def _copy(frame: av.VideoFrame) -> av.VideoFrame:
    """A new frame with the same yuv420p planes, bit for bit."""
    copy = av.VideoFrame.from_ndarray(frame.to_ndarray(), format=OUTPUT_PIX_FMT)
    copy.pts = frame.pts
    if frame.time_base is not None:
        copy.time_base = frame.time_base
    return copy


__all__ = ["OUTPUT_PIX_FMT", "VideoSource"]

"""Data passed between media stages: stream facts, frames with their timing, speech audio access."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Protocol

import av
import numpy as np

from lipsync_service.speakers import FrameSpeakers

# Sample rate of the audio the lip-sync model sees.
MODEL_SAMPLE_RATE = 16000


@dataclass(frozen=True)
class VideoInfo:
    """Facts about the input video stream, known once its header is parsed.

    Attributes:
        width, height: frame size in pixels.
        fps: the constant frame rate frames are delivered (and encoded) at, exact: the input's rate,
            or the rate a variable-frame-rate input is normalised to.
        pix_fmt: pixel format as decoded (frames reach the processor in yuv420p).
        frame_count: number of input frames if the container says so (None for fragmented/streamed
            input); speaker data frame ids count these.
        codec: input codec name (always "h264" after validation).
        constant_rate: False when the header shows variable frame rate: input frames are then
            repeated or dropped to fill a constant-rate timeline at `fps`.
        rotation: degrees (counter-clockwise, a multiple of 90) the input's display matrix asked players
            to turn its pictures; frames are delivered already turned, so width and height are the
            upright size and the output needs no rotation of its own.
    """

    width: int
    height: int
    fps: Fraction
    pix_fmt: str
    frame_count: int | None
    codec: str = "h264"
    constant_rate: bool = True
    rotation: int = 0

    @property
    def frame_duration_s(self) -> float:
        return float(1 / self.fps)


@dataclass
class FrameJob:
    """One output frame on its way through the processor.

    Attributes:
        index: output frame number, 0-based; output pts is index / fps.
        source_index: which input frame this is (differs from index when the video is extended).
        frame: the decoded picture, yuv420p. A processor that leaves a frame alone returns this object
            unchanged so the encoder sees exactly the decoded planes (bit-identical in lossless mode).
        speakers: per-frame speaker data from the client, or None when not provided.
        bypass: the client asked for this frame to be copied unchanged.
        changed: set by the processor when it altered any pixel.
        meta: what the processor found and did in this frame (counted by the job, drawn by the debug overlay).
        finish: work the processor left to do on this frame before it is encoded (blending its edit into a copy of
            the picture), run by `complete` on another thread than the processor's; None once done.
    """

    index: int
    source_index: int
    frame: av.VideoFrame
    speakers: FrameSpeakers | None = None
    bypass: bool = False
    changed: bool = False
    meta: dict = field(default_factory=dict)
    finish: Callable[[], None] | None = None

    def complete(self) -> FrameJob:
        """Run the processor's deferred work on this frame, once; then `frame` and `meta` are final."""
        finish, self.finish = self.finish, None
        if finish is not None:
            finish()
        return self


class Readable(Protocol):
    """A binary input read forward only: all the demuxers need of their source.

    A ByteStream (streaming mode), an open file or a BytesIO. `read(n)` returns at most n bytes (all that is
    left when n is negative), fewer when less has arrived, and b"" only at the end of the input.
    """

    def read(self, n: int = -1, /) -> bytes: ...


class SpeechAudio(Protocol):
    """The speech track at the model's rate (16 kHz mono float32), as it is decoded.

    In streaming mode audio may still be arriving; `wait_for` blocks until the requested time is
    decoded or the track has ended.
    """

    sample_rate: int

    def wait_for(self, end_s: float) -> None:
        """Block until audio up to end_s is decoded or the input has ended."""

    def read(self, start_s: float, end_s: float) -> np.ndarray:
        """Samples in [start_s, end_s) as float32 mono; zeros where there is no speech."""

    @property
    def duration_s(self) -> float | None:
        """Duration of the whole speech track once fully decoded, else None."""


class SoundtrackLevels(Protocol):
    """The input video's own audio as one loudness value per output frame (media/soundtrack.py)."""

    def level(self, index: int) -> float | None:
        """Loudness in dB of output frame `index`; None where the soundtrack does not (yet) reach."""

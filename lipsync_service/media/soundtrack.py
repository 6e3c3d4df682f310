"""The input video's own soundtrack, reduced to one loudness value per video frame.

It is used only to find who speaks on screen (core/active_speaker.py): the face whose mouth opens and closes with
the soundtrack's loudness is the one talking. The soundtrack never reaches the output. A video without an audio
track, or one whose audio cannot be decoded, simply has no soundtrack: the speaker is then found from lip motion
alone, and the job never fails because of it.

Levels are per output video frame i, over [i / fps, (i + 1) / fps) relative to the video's first frame:
pre-emphasised (the voice's consonants and formants count, the hum under it less), RMS in dB.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from lipsync_service.media.av_errors import PYAV_ERRORS, reason

log = logging.getLogger(__name__)

RATE = 16000
PRE_EMPHASIS = 0.97
# Silence floor: digital zero is not -inf dB.
FLOOR_DB = -100.0
# A file soundtrack is decoded ahead of what is asked by this many seconds at a time.
_AHEAD_S = 5.0


class Soundtrack:
    """Per-frame loudness of the input video's audio track, and its samples at 16 kHz mono, filled as it is decoded.

    It reads like the speech track (`SpeechAudio`: sample_rate, wait_for, read, duration_s) so the speech front end
    can turn it into mel windows. Samples before `release_before` are let go, so memory stays bounded.
    """

    sample_rate = RATE

    def __init__(self, fps: Fraction, video_start_s: float = 0.0) -> None:
        """Args:
            fps: the output frame rate (levels are per output frame).
            video_start_s: presentation time of the video's first frame, in the container's clock.
        """
        self._fps = Fraction(fps)
        self._video_start_s = float(video_start_s)
        self._levels: list[float] = []
        # Raw samples (not pre-emphasised) from sample number self._kept_from on.
        self._samples: list[np.ndarray] = []
        self._kept_from = 0
        self._held = 0
        # Samples of the frame being filled (pre-emphasised, 16 kHz mono), and where the next sample belongs.
        self._partial = np.zeros(0, np.float32)
        self._next_sample: int | None = None
        self._last = 0.0
        self._resampler: av.AudioResampler | None = None
        self.ended = False
        self.failed: str | None = None
        self._source: _FileAudio | None = None

    # Filling ------------------------------------------------------------------------------------

    def add(self, frame: av.AudioFrame) -> None:
        """Decoded audio of the soundtrack, in presentation order."""
        if self.failed is not None or self.ended:
            return
        if self._resampler is None:
            self._resampler = av.AudioResampler(format="flt", layout="mono", rate=RATE)
        start_s = None if frame.pts is None or frame.time_base is None else float(frame.pts * frame.time_base)
        for out in self._resampler.resample(frame):
            self._take(out.to_ndarray().reshape(-1).astype(np.float32), start_s)
            start_s = None

    def finish(self) -> None:
        """The soundtrack ended: the frame being filled is measured as it is."""
        if self._resampler is not None and self.failed is None:
            for out in self._resampler.resample(None):
                self._take(out.to_ndarray().reshape(-1).astype(np.float32), None)
        if len(self._partial):
            self._levels.append(_level(self._partial))
            self._partial = np.zeros(0, np.float32)
        self.ended = True

    def fail(self, why: str) -> None:
        """The soundtrack cannot be read any further; what was measured stays, nothing more comes."""
        if self.failed is None:
            self.failed = why
            log.info("the video's own audio cannot be used to find who speaks (%s); lip motion alone decides", why)
        self.ended = True

    def _take(self, samples: np.ndarray, start_s: float | None) -> None:
        if self._next_sample is None:
            first = 0 if start_s is None else round((start_s - self._video_start_s) * RATE)
            if first < 0:
                samples = samples[-first:]
                first = 0
            self._next_sample = first
            self._kept_from = first
            # Audio that starts after the video: the frames before it are silent.
            per_frame = RATE / self._fps
            whole = int(first / per_frame)
            self._levels.extend([FLOOR_DB] * whole)
            self._partial = np.zeros(first - round(whole * per_frame), np.float32)
        self._samples.append(samples)
        self._held += len(samples)
        emphasised = np.empty_like(samples)
        if len(samples):
            emphasised[0] = samples[0] - PRE_EMPHASIS * self._last
            emphasised[1:] = samples[1:] - PRE_EMPHASIS * samples[:-1]
            self._last = float(samples[-1])
        buf = np.concatenate([self._partial, emphasised])
        done = len(self._levels)
        while True:
            end = round((done + 1) * RATE / self._fps) - round(done * RATE / self._fps)
            if len(buf) < end:
                break
            self._levels.append(_level(buf[:end]))
            buf = buf[end:]
            done += 1
        self._partial = buf

    # Reading ------------------------------------------------------------------------------------

    @property
    def available_s(self) -> float:
        """Time (relative to the video's first frame) up to which samples have been decoded."""
        if self._next_sample is None:
            return 0.0
        return (self._kept_from + self._held) / RATE

    @property
    def duration_s(self) -> float | None:
        """The soundtrack's end, once it ended; else None."""
        return self.available_s if self.ended else None

    def wait_for(self, end_s: float) -> None:
        """Decode a file soundtrack up to end_s (a piped one is decoded as the video passes: nothing to wait for)."""
        if self._source is not None and self.available_s < end_s:
            self._source.decode_until(end_s + _AHEAD_S)

    def read(self, start_s: float, end_s: float) -> np.ndarray:
        """Samples in [start_s, end_s) as float32 mono at 16 kHz; zeros where there are none (or none kept)."""
        a, b = int(round(start_s * RATE)), int(round(end_s * RATE))
        out = np.zeros(max(0, b - a), np.float32)
        if not self._samples or b <= a:
            return out
        held = np.concatenate(self._samples) if len(self._samples) > 1 else self._samples[0]
        self._samples = [held]
        lo, hi = max(a, self._kept_from), min(b, self._kept_from + len(held))
        if hi > lo:
            out[lo - a : hi - a] = held[lo - self._kept_from : hi - self._kept_from]
        return out

    def release_before(self, time_s: float) -> None:
        """Samples before time_s will not be read again."""
        cut = int(time_s * RATE) - self._kept_from
        if cut <= 0 or not self._samples:
            return
        held = np.concatenate(self._samples) if len(self._samples) > 1 else self._samples[0]
        cut = min(cut, len(held))
        self._samples = [held[cut:]]
        self._kept_from += cut
        self._held -= cut

    def level(self, index: int) -> float | None:
        """Loudness (dB) of output frame `index`; None when the soundtrack does not (yet) reach it."""
        if index < 0:
            return None
        if index >= len(self._levels) and self._source is not None:
            self._source.decode_until(float((index + 1) / self._fps) + _AHEAD_S)
        return self._levels[index] if index < len(self._levels) else None

    def close(self) -> None:
        """Release a file soundtrack's own decoder."""
        if self._source is not None:
            self._source.close()
            self._source = None

    @classmethod
    def from_file(cls, path: Path | str, fps: Fraction, video_start_s: float) -> Soundtrack | None:
        """The soundtrack of an MP4 file, decoded on demand with a container of its own; None without audio."""
        try:
            container = av.open(str(path), mode="r", format="mp4", metadata_errors="replace")
        except PYAV_ERRORS:
            return None
        if not container.streams.audio:
            container.close()
            return None
        track = cls(fps, video_start_s)
        track._source = _FileAudio(container, track)
        return track


def _level(samples: np.ndarray) -> float:
    rms = math.sqrt(float(np.mean(np.square(samples, dtype=np.float64)))) if len(samples) else 0.0
    return max(FLOOR_DB, 20.0 * math.log10(rms)) if rms > 0 else FLOOR_DB


class _FileAudio:
    """Decodes a file's first audio stream into a Soundtrack as far as it is asked for."""

    def __init__(self, container: av.container.InputContainer, track: Soundtrack) -> None:
        self._container: av.container.InputContainer | None = container
        self._track = track
        self._frames: Iterator[av.AudioFrame] = container.decode(container.streams.audio[0])
        self._decoded_s = 0.0

    def decode_until(self, end_s: float) -> None:
        track = self._track
        try:
            while self._decoded_s < end_s and not track.ended and self._container is not None:
                frame = next(self._frames, None)
                if frame is None:
                    track.finish()
                    self.close()
                    return
                track.add(frame)
                if frame.pts is not None and frame.time_base is not None:
                    self._decoded_s = float(frame.pts * frame.time_base) + frame.samples / max(frame.sample_rate, 1)
        except PYAV_ERRORS as exc:
            track.fail(f"its audio track is unreadable: {reason(exc)}")
            self.close()

    def close(self) -> None:
        if self._container is not None:
            try:
                self._container.close()
            except Exception:  # noqa: BLE001 - closing must never raise
                log.debug("closing the soundtrack's container failed", exc_info=True)
            self._container = None

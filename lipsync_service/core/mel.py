"""Audio front end of the generator (docs/models-contract.md#mel-front-end): log-mel windows per video frame,
computed as speech arrives."""

from __future__ import annotations

from fractions import Fraction
from functools import lru_cache

import numpy as np

from lipsync_service.inference.base import MEL_BINS, MEL_STEPS
from lipsync_service.media.types import MODEL_SAMPLE_RATE, SpeechAudio

PREEMPHASIS = 0.97
N_FFT = 800
HOP = 200
WIN = 800
FMIN = 55.0
FMAX = 7600.0
REF_LEVEL_DB = 20.0
MIN_LEVEL_DB = -100.0
MAX_ABS_VALUE = 4.0
# 16 kHz / hop 200.
MEL_FPS = MODEL_SAMPLE_RATE // HOP
# Seconds of speech past a mel window's start that its last STFT frame reaches: 15 hops + half a window.
WINDOW_REACH_S = ((MEL_STEPS - 1) * HOP + N_FFT // 2) / MODEL_SAMPLE_RATE

_PAD = N_FFT // 2


def _hz_to_mel(hz: np.ndarray | float) -> np.ndarray:
    """Slaney mel scale: linear to 1 kHz, logarithmic above."""
    hz = np.asarray(hz, dtype=np.float64)
    f_sp = 200.0 / 3
    mel = hz / f_sp
    min_log_hz = 1000.0
    min_log_mel = min_log_hz / f_sp
    logstep = np.log(6.4) / 27.0
    return np.where(hz >= min_log_hz, min_log_mel + np.log(np.maximum(hz, 1e-12) / min_log_hz) / logstep, mel)


def _mel_to_hz(mel: np.ndarray) -> np.ndarray:
    mel = np.asarray(mel, dtype=np.float64)
    f_sp = 200.0 / 3
    min_log_hz = 1000.0
    min_log_mel = min_log_hz / f_sp
    logstep = np.log(6.4) / 27.0
    return np.where(mel >= min_log_mel, min_log_hz * np.exp(logstep * (mel - min_log_mel)), f_sp * mel)


@lru_cache(maxsize=4)
def mel_filterbank(sr: int = MODEL_SAMPLE_RATE, n_fft: int = N_FFT, n_mels: int = MEL_BINS,
                   fmin: float = FMIN, fmax: float = FMAX) -> np.ndarray:
    """Triangular mel filters with Slaney area normalisation (as librosa's default, htk=False).

    Returns:
        float64 [n_mels, 1 + n_fft // 2].
    """
    fft_freqs = np.linspace(0.0, sr / 2, 1 + n_fft // 2)
    mel_f = _mel_to_hz(np.linspace(_hz_to_mel(fmin), _hz_to_mel(fmax), n_mels + 2))
    fdiff = np.diff(mel_f)
    ramps = mel_f[:, None] - fft_freqs[None, :]
    lower = -ramps[:-2] / fdiff[:-1, None]
    upper = ramps[2:] / fdiff[1:, None]
    weights = np.maximum(0.0, np.minimum(lower, upper))
    # Slaney normalisation: each filter has unit area in Hz.
    weights *= (2.0 / (mel_f[2:] - mel_f[:-2]))[:, None]
    weights.flags.writeable = False
    return weights


@lru_cache(maxsize=1)
def _window() -> np.ndarray:
    # Periodic Hann (the FFT-bin form that librosa/scipy use for STFT).
    n = np.arange(WIN)
    w = 0.5 - 0.5 * np.cos(2 * np.pi * n / WIN)
    w.flags.writeable = False
    return w


def preemphasis(x: np.ndarray, previous: float = 0.0) -> np.ndarray:
    """y[n] = x[n] - 0.97 x[n-1], with x[-1] = previous (0 at the start of the track)."""
    x = np.asarray(x, dtype=np.float64)
    y = x.copy()
    y[0] -= PREEMPHASIS * previous
    y[1:] -= PREEMPHASIS * x[:-1]
    return y


def mel_frames_from_padded(padded: np.ndarray) -> np.ndarray:
    """Normalised log-mel frames from pre-emphasised, already padded samples.

    Args:
        padded: float samples; frame k covers padded[k*HOP : k*HOP + N_FFT].

    Returns:
        float32 [80, K] with K = 1 + (len(padded) - N_FFT) // HOP.
    """
    count = 1 + (len(padded) - N_FFT) // HOP
    if count <= 0:
        return np.zeros((MEL_BINS, 0), np.float32)
    frames = np.lib.stride_tricks.sliding_window_view(padded, N_FFT)[::HOP][:count]
    spec = np.abs(np.fft.rfft(frames * _window(), axis=1))
    mel = mel_filterbank() @ spec.T
    db = 20.0 * np.log10(np.maximum(1e-5, mel)) - REF_LEVEL_DB
    norm = np.clip((2 * MAX_ABS_VALUE) * ((db - MIN_LEVEL_DB) / -MIN_LEVEL_DB) - MAX_ABS_VALUE,
                   -MAX_ABS_VALUE, MAX_ABS_VALUE)
    return norm.astype(np.float32)


def melspectrogram(wav: np.ndarray) -> np.ndarray:
    """The whole-track mel spectrogram (offline use and reference): float32 [80, 1 + len // 200]."""
    y = preemphasis(np.asarray(wav, dtype=np.float64))
    if len(y) == 0:
        return np.zeros((MEL_BINS, 0), np.float32)
    return mel_frames_from_padded(np.pad(y, _PAD, mode="reflect"))


def silence_window() -> np.ndarray:
    """The mel window of silence (every bin at the floor): float32 [80, 16]."""
    return mel_frames_from_padded(np.zeros(N_FFT))[:, :1].repeat(MEL_STEPS, axis=1)


def window_start(frame_index: int, fps: Fraction) -> int:
    """First mel frame of video frame i's window: int(i * 80 / fps), exact for rational fps."""
    fps = Fraction(fps)
    return (frame_index * MEL_FPS * fps.denominator) // fps.numerator


class MelStream:
    """Mel windows for video frames, computed incrementally from a speech track that may still arrive.

    Each mel frame is computed once; frames are kept only from the oldest window still requested on,
    so memory stays bounded for any track length. Windows must be requested in non-decreasing order of
    frame index (the pipeline pushes frames in order; extension frames keep counting up).
    """

    def __init__(self, audio: SpeechAudio, fps: Fraction) -> None:
        """Args:
            audio: the speech at 16 kHz mono.
            fps: the video frame rate.
        """
        if audio.sample_rate != MODEL_SAMPLE_RATE:
            raise ValueError(f"speech must be at {MODEL_SAMPLE_RATE} Hz for the mel front end, got {audio.sample_rate}")
        self._audio = audio
        self._fps = Fraction(fps)
        self._base = 0  # mel frame index of self._cache[:, 0]
        self._cache = np.zeros((MEL_BINS, 0), np.float32)
        self._silence = silence_window()

    def _total_frames(self) -> int | None:
        duration = self._audio.duration_s
        if duration is None:
            return None
        return 1 + int(round(duration * MODEL_SAMPLE_RATE)) // HOP

    def _samples(self, start: int, end: int) -> np.ndarray:
        """Raw samples [start, end) of the track (zeros outside it), float64."""
        sr = MODEL_SAMPLE_RATE
        out = np.asarray(self._audio.read(start / sr, end / sr), dtype=np.float64).reshape(-1)
        # read() works in seconds; guard against an off-by-one in the sample count from rounding.
        if len(out) < end - start:
            out = np.pad(out, (0, end - start - len(out)))
        return out[: end - start]

    def _compute(self, first: int, last: int, total: int | None) -> np.ndarray:
        """Mel frames [first, last) of the track; total is the track's frame count when known."""
        duration = self._audio.duration_s
        n = None if total is None or duration is None else int(round(duration * MODEL_SAMPLE_RATE))
        lo = first * HOP - _PAD  # padded-signal sample range, in track coordinates
        hi = (last - 1) * HOP + _PAD
        needs_edge = lo < 0 or (n is not None and hi > n)
        if needs_edge and n is not None and n < 4 * N_FFT:
            # A very short track: the reflections may wrap; compute it whole.
            return melspectrogram(self._samples(0, n))[:, first:last]
        if lo >= 0 and not (n is not None and hi > n):
            raw = self._samples(lo - 1, hi) if lo > 0 else np.concatenate(([0.0], self._samples(0, hi)))
            y = preemphasis(raw[1:], previous=raw[0])
            return mel_frames_from_padded(y)
        # At an edge of the track: build the reflected padding from the pre-emphasised samples near it.
        # Read a margin of one window on both sides: the reflections read up to N_FFT // 2 samples
        # beyond the frames' own range.
        a = max(lo - N_FFT, 0)
        b = hi + N_FFT if n is None else min(hi + N_FFT, n)
        raw_lo = max(a - 1, 0)
        raw = self._samples(raw_lo, b)
        y = preemphasis(raw[a - raw_lo:], previous=raw[0] if a > 0 else 0.0)
        origin = a  # track index of y[0]
        if lo < 0:
            # Reflect about sample 0 (numpy "reflect": the edge sample is not repeated).
            y = np.concatenate((y[1 : 1 - lo][::-1], y))
            origin = lo
        if n is not None and hi > n:
            extra = hi - n
            y = np.concatenate((y, y[-1 - extra : -1][::-1]))
        return mel_frames_from_padded(y[lo - origin : hi - origin])

    def needed_until_s(self, frame_index: int) -> float:
        """Speech time that must be decoded before frame_index's window can be computed."""
        return window_start(frame_index, self._fps) / MEL_FPS + WINDOW_REACH_S

    def window(self, frame_index: int) -> np.ndarray:
        """The [80, 16] mel window of video frame frame_index.

        Waits (through SpeechAudio.wait_for) for the speech it needs. Past the end of the speech the
        window is silence; a window that would run past the end is moved back to end with the track.
        """
        start = window_start(frame_index, self._fps)
        self._audio.wait_for(self.needed_until_s(frame_index))
        total = self._total_frames()
        if total is not None:
            if start >= total:
                return self._silence.copy()
            if start + MEL_STEPS > total:
                start = max(0, total - MEL_STEPS)
        end = start + MEL_STEPS if total is None else min(start + MEL_STEPS, total)
        # Drop frames no later window can use (requests come in non-decreasing order).
        if start > self._base:
            drop = min(start - self._base, self._cache.shape[1])
            self._cache = self._cache[:, drop:]
            self._base += drop
        if start < self._base:
            # Only after a clamp moved the window back; recompute rather than keep the whole track.
            self._cache = np.zeros((MEL_BINS, 0), np.float32)
            self._base = start
        have_end = self._base + self._cache.shape[1]
        if have_end < end:
            if self._cache.shape[1] == 0:
                self._base = start
                have_end = start
            self._cache = np.concatenate((self._cache, self._compute(have_end, end, total)), axis=1)
        out = self._cache[:, start - self._base : end - self._base]
        if out.shape[1] < MEL_STEPS:
            out = np.concatenate((out, self._silence[:, : MEL_STEPS - out.shape[1]]), axis=1)
        return np.ascontiguousarray(out, dtype=np.float32)

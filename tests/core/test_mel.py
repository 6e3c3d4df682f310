"""The mel front end matches docs/models-contract.md#mel-front-end computed straight from the formulas,
incrementally."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
from scipy.signal import get_window, lfilter

from lipsync_service.core.mel import MelStream, melspectrogram, silence_window, window_start
from tests.core.fakes import ArraySpeech


def _slaney_hz_to_mel(f):
    return f / (200 / 3) if f < 1000 else 15.0 + 27.0 * np.log(f / 1000.0) / np.log(6.4)


def _slaney_mel_to_hz(m):
    return m * (200 / 3) if m < 15.0 else 1000.0 * np.exp((m - 15.0) * np.log(6.4) / 27.0)


def _reference_filterbank(sr=16000, n_fft=800, n_mels=80, fmin=55.0, fmax=7600.0):
    lo, hi = _slaney_hz_to_mel(fmin), _slaney_hz_to_mel(fmax)
    points = [_slaney_mel_to_hz(lo + (hi - lo) * k / (n_mels + 1)) for k in range(n_mels + 2)]
    freqs = np.arange(n_fft // 2 + 1) * sr / n_fft
    bank = np.zeros((n_mels, len(freqs)))
    for m in range(n_mels):
        left, centre, right = points[m], points[m + 1], points[m + 2]
        for j, f in enumerate(freqs):
            if left < f <= centre:
                bank[m, j] = (f - left) / (centre - left)
            elif centre < f < right:
                bank[m, j] = (right - f) / (right - centre)
        bank[m] *= 2.0 / (right - left)
    return bank


def _reference_mel(wav):
    y = lfilter([1, -0.97], [1], wav.astype(np.float64))
    padded = np.pad(y, 400, mode="reflect")
    window = get_window("hann", 800, fftbins=True)
    count = 1 + len(wav) // 200
    mags = np.stack([np.abs(np.fft.rfft(padded[k * 200 : k * 200 + 800] * window)) for k in range(count)], axis=1)
    db = 20 * np.log10(np.maximum(1e-5, _reference_filterbank() @ mags)) - 20
    return np.clip(8 * (db + 100) / 100 - 4, -4, 4)


def _speech_like(seconds: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * 16000)) / 16000
    # Voiced harmonics under a syllable-rate envelope, plus noise: exercises the whole dB range.
    env = 0.5 * (1 + np.sin(2 * np.pi * 3.0 * t)) ** 2
    tone = sum(np.sin(2 * np.pi * 140 * h * t) / h for h in range(1, 12))
    return (0.2 * env * tone + 0.01 * rng.standard_normal(len(t))).astype(np.float32)


def test_whole_track_matches_formula_reference():
    wav = _speech_like(1.3)
    ours = melspectrogram(wav)
    ref = _reference_mel(wav)
    assert ours.shape == ref.shape == (80, 1 + len(wav) // 200)
    assert np.abs(ours - ref).max() < 1e-3
    # Not trivially saturated: real spread of values.
    assert ours.min() < -3 and ours.max() > 0


def test_silence_is_the_floor():
    assert np.array_equal(silence_window(), np.full((80, 16), -4.0, np.float32))
    assert np.allclose(melspectrogram(np.zeros(4000, np.float32)), -4.0)


@pytest.mark.parametrize("fps", [Fraction(25), Fraction(30000, 1001), Fraction(24)])
def test_window_start_follows_int_i_80_over_fps(fps):
    for i in range(0, 500, 7):
        assert window_start(i, fps) == int(i * 80 / float(fps) + 1e-9)


@pytest.mark.parametrize("streaming", [False, True])
def test_stream_windows_equal_whole_track_windows(streaming):
    wav = _speech_like(2.0, seed=1)
    ref = _reference_mel(wav)
    fps = Fraction(25)
    stream = MelStream(ArraySpeech(wav, streaming=streaming), fps)
    total = ref.shape[1]
    for i in range(60):  # 2.4 s of video: runs past the 2.0 s of speech
        got = stream.window(i)
        assert got.shape == (80, 16) and got.dtype == np.float32
        start = int(i * 80 / 25)
        if start >= total:
            assert np.array_equal(got, silence_window()), f"frame {i} after the speech must be silence"
        else:
            start = min(start, total - 16)  # clamped at the end
            assert np.abs(got - ref[:, start : start + 16]).max() < 1e-3, f"frame {i}"


def test_stream_only_waits_for_the_speech_it_needs():
    wav = _speech_like(10.0)
    speech = ArraySpeech(wav, streaming=True)
    stream = MelStream(speech, Fraction(25))
    stream.window(10)  # frame at 0.4 s
    assert speech.duration_s is None
    assert 0.4 < speech.waited_until <= 0.4 + 0.25


def test_short_track_is_padded_with_silence():
    wav = _speech_like(0.1)
    ref = _reference_mel(wav)  # 9 mel frames
    got = MelStream(ArraySpeech(wav), Fraction(25)).window(0)
    assert np.abs(got[:, : ref.shape[1]] - ref).max() < 1e-3
    assert np.array_equal(got[:, ref.shape[1] :], silence_window()[:, : 16 - ref.shape[1]])

"""The speech track as the evaluation hears it: decoded like a request's speech, and its per-frame loudness."""

from __future__ import annotations

import math
import wave
from pathlib import Path

import numpy as np

from lipsync_service.media.types import MODEL_SAMPLE_RATE

# Speech band used for the loudness envelope (where voiced energy and formants are).
BAND_HZ = (300.0, 3000.0)


def load_speech(path: Path) -> np.ndarray:
    """Any audio file's first track as 16 kHz mono float32, decoded as serving decodes a request's speech.

    Channels are averaged (`lipsync_service.media.audio.load_speech_file`), so the model, the training data
    and this evaluation hear a stereo file at the same level.

    Raises:
        InvalidInput: no readable audio track.
    """
    from lipsync_service.media.audio import load_speech_file

    return load_speech_file(str(path))


def write_wav(path: Path, samples: np.ndarray, rate: int = MODEL_SAMPLE_RATE) -> None:
    """16-bit mono WAV."""
    pcm = (np.clip(samples, -1, 1) * 32767).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm.tobytes())


def loudness_envelope(speech: np.ndarray, fps: float, frames: int, rate: int = MODEL_SAMPLE_RATE) -> np.ndarray:
    """Per-frame loudness (dB) of the 300-3000 Hz band, over a two-frame window centred on each frame.

    Args:
        speech: mono samples.
        fps: video frame rate.
        frames: number of frames.
        rate: sample rate.

    Returns:
        float64 [frames].
    """
    spec = np.fft.rfft(speech.astype(np.float64))
    freqs = np.fft.rfftfreq(len(speech), 1.0 / rate)
    spec[(freqs < BAND_HZ[0]) | (freqs > BAND_HZ[1])] = 0
    band = np.fft.irfft(spec, n=len(speech))
    half = int(rate / fps)
    out = np.empty(frames)
    for k in range(frames):
        centre = int(round(k * rate / fps + rate / (2 * fps)))
        seg = band[max(0, centre - half): max(0, centre + half)]
        out[k] = 10 * math.log10(float(np.mean(seg * seg)) + 1e-10) if len(seg) else -100.0
    return out


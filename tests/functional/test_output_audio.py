"""The output's speech plays when it was sent and as loud as it was sent, in MP3 and in Opus."""

from __future__ import annotations

import io
import wave

import av
import numpy as np
import pytest

from lipsync_service._proto.nvidia.ai4m.audio.v1 import audio_pb2
from tests import synth
from tests.functional.helpers import config, requests, run_call

RATE = 48000
SECONDS = 2.0


def speech_like() -> np.ndarray:
    """Voiced syllables: a pitch gliding between 120 and 220 Hz with harmonics up to 4 kHz, four syllables a
    second (band-limited like speech, so the codecs' low-pass filters take nothing from it)."""
    t = np.arange(int(SECONDS * RATE)) / RATE
    phase = 2 * np.pi * np.cumsum(170 + 50 * np.sin(2 * np.pi * 0.7 * t)) / RATE
    voiced = sum(np.sin(k * phase) / k for k in range(1, 19))
    signal = voiced * np.clip(np.sin(2 * np.pi * 2 * t), 0, None)
    return (0.5 * signal / np.abs(signal).max()).astype(np.float32)


def wav_bytes(samples: np.ndarray) -> bytes:
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(RATE)
        w.writeframes(np.round(samples * 32767).astype("<i2").tobytes())
    return out.getvalue()


def presented_audio(mp4: bytes) -> np.ndarray:
    """The output's audio as a player honouring the container's timing presents it: decoded by FFmpeg (PyAV), each
    frame placed at its timestamp (FFmpeg's MP4 demuxer turns the audio edit list, which skips the encoder's
    priming, into those timestamps; Opus's pre-skip is dropped by its decoder), anything before 0 cut."""
    out = np.zeros(int((SECONDS + 1) * RATE), np.float32)
    with av.open(io.BytesIO(mp4)) as container:
        for frame in container.decode(container.streams.audio[0]):
            samples = frame.to_ndarray().reshape(-1)
            start = int(round(frame.pts * frame.time_base * RATE))
            if start < 0:
                samples, start = samples[-start:], 0
            out[start:start + samples.size] = samples[: out.size - start]
    return out


@pytest.mark.parametrize("codec", [audio_pb2.AUDIO_CODEC_MP3, audio_pb2.AUDIO_CODEC_OPUS])
def test_output_speech_is_on_time_and_at_the_input_level(server, tmp_path, codec):
    speech = speech_like()
    video = synth.make_video(tmp_path / "v.mp4", seconds=SECONDS).read_bytes()
    result = run_call(server, requests(video, wav_bytes(speech), config(output_audio_codec=codec)))
    played = presented_audio(result.video)
    window = slice(RATE // 4, int(1.75 * RATE))
    reference = speech[window]
    lags = np.arange(-2400, 2401)
    scores = [float(np.dot(played[window.start + lag:window.stop + lag], reference)) for lag in lags]
    lag = int(lags[int(np.argmax(scores))])
    assert abs(lag) <= RATE * 0.002, f"the speech plays {lag / RATE * 1000:.1f} ms late"
    aligned = played[window.start + lag:window.stop + lag]
    level = float(np.sqrt(np.mean(aligned ** 2)) / np.sqrt(np.mean(reference ** 2)))
    assert level == pytest.approx(1.0, abs=0.04), f"the speech level is {level:.3f} of the input's"

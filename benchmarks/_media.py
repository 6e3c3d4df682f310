"""Benchmark inputs: the shared test clips, and longer variants made from them without re-encoding."""

from __future__ import annotations

import sys
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

MEDIA_DIR = (Path(__file__).resolve().parent.parent.parent / "shared" / "media").resolve()


def shared(name: str) -> Path:
    """Path of a shared test clip; exits with a message when ../shared/media is absent."""
    path = MEDIA_DIR / name
    if not path.exists():
        sys.exit(f"benchmark input {path} not found: this benchmark needs ../shared/media beside the repository")
    return path


def loop_video(src: Path, dst: Path, times: int) -> Path:
    """Concatenate the video stream of src `times` times into a faststart MP4 (packets copied, no re-encode)."""
    with av.open(str(src)) as inp:
        vin = inp.streams.video[0]
        packets = [p for p in inp.demux(vin) if p.dts is not None]
        span = max(p.pts + (p.duration or 0) for p in packets) - min(p.pts for p in packets)
        base = min(p.pts for p in packets)
        with av.open(str(dst), "w", format="mp4", options={"movflags": "faststart"}) as out:
            vout = out.add_stream_from_template(vin)
            for k in range(times):
                for p in packets:
                    p2 = av.Packet(bytes(p))
                    p2.pts = p.pts - base + k * span
                    p2.dts = p.dts - base + k * span
                    p2.duration = p.duration
                    p2.is_keyframe = p.is_keyframe
                    p2.time_base = vin.time_base
                    p2.stream = vout
                    out.mux(p2)
    return dst


def speech_wav(dst: Path, seconds: float, src: Path | None = None, rate: int = 16000) -> Path:
    """A mono 16-bit WAV of `seconds`: src looped when given, else a modulated tone."""
    if src is not None:
        with av.open(str(src)) as inp:
            res = av.AudioResampler(format="s16", layout="mono", rate=rate)
            chunks = [f.to_ndarray().reshape(-1) for fr in inp.decode(audio=0) for f in res.resample(fr)]
        base = np.concatenate(chunks)
    else:
        t = np.arange(int(rate * 5)) / rate
        base = (8000 * np.sin(2 * np.pi * 220 * t) * (0.5 + 0.5 * np.sin(2 * np.pi * 3 * t))).astype(np.int16)
    n = int(seconds * rate)
    data = np.resize(base, n).astype(np.int16)
    with av.open(str(dst), "w", format="wav") as out:
        st = out.add_stream("pcm_s16le", rate=rate, layout="mono")
        for i in range(0, n, 4096):
            fr = av.AudioFrame.from_ndarray(data[None, i : i + 4096], format="s16", layout="mono")
            fr.sample_rate = rate
            fr.pts = i
            fr.time_base = Fraction(1, rate)
            for p in st.encode(fr):
                out.mux(p)
        for p in st.encode(None):
            out.mux(p)
    return dst

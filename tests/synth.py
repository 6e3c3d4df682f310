"""Synthetic media for tests: tiny MP4/WAV/MP3 files with content a test can recognise, and a probe."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path
from typing import Literal

import av
import numpy as np

# Frame numbers are drawn as a bar of BLOCK x BLOCK squares (white = 1, black = 0), least significant
# bit first, wrapping onto further rows when the frame is narrow. 16 bits survive any test clip length.
BLOCK = 8
BITS = 16
_WHITE = 235
_BLACK = 16

Layout = Literal["faststart", "fragmented", "transactional"]
_MOVFLAGS = {
    "faststart": "faststart",
    "fragmented": "frag_keyframe+empty_moov+default_base_moof",
    "transactional": "",
}
# Frame durations (in units of 1/1000 s at 25 fps) cycled for variable-frame-rate clips: several deviate
# from the nominal 40 ms by more than half a frame.
_VFR_STEPS_MS = (40, 40, 90, 40, 15)


def _bar_rows(width: int) -> int:
    per_row = max(1, width // BLOCK)
    return -(-BITS // per_row)


def draw_frame(index: int, width: int, height: int, still: bool = False) -> np.ndarray:
    """The RGB picture of synthetic frame `index`: a moving gradient with the index drawn as a bit bar.

    Args:
        index: frame number to encode into the pixels.
        width, height: frame size (at least 64x64 so the bar fits).
        still: the gradient stays put (only the bar changes), so the clip is one shot to the shot detector
            (the moving gradient changes every frame as much as a cut).

    Returns:
        uint8 array [height, width, 3].
    """
    ys, xs = np.mgrid[0:height, 0:width]
    shift = 0 if still else index * 3
    img = np.empty((height, width, 3), np.uint8)
    img[..., 0] = ((xs + shift) * 255 // max(1, width)) % 256
    img[..., 1] = ((ys + shift) * 255 // max(1, height)) % 256
    img[..., 2] = ((xs + ys + 2 * shift) % 64) * 3 + 40
    per_row = max(1, width // BLOCK)
    rows = _bar_rows(width)
    img[: rows * BLOCK] = _BLACK
    for bit in range(BITS):
        if (index >> bit) & 1:
            r, c = divmod(bit, per_row)
            img[r * BLOCK:(r + 1) * BLOCK, c * BLOCK:(c + 1) * BLOCK] = _WHITE
    return img


def read_frame_number(image: np.ndarray) -> int:
    """Read back the frame number drawn by `draw_frame` (robust to lossy coding).

    Args:
        image: the decoded frame as RGB [H, W, 3] or gray/luma [H, W] uint8.
    """
    gray = image.mean(axis=2) if image.ndim == 3 else image.astype(np.float32)
    per_row = max(1, gray.shape[1] // BLOCK)
    value = 0
    for bit in range(BITS):
        r, c = divmod(bit, per_row)
        # Sample the block's centre: edges bleed under chroma subsampling and lossy coding.
        centre = gray[r * BLOCK + 2:(r + 1) * BLOCK - 2, c * BLOCK + 2:(c + 1) * BLOCK - 2]
        if centre.mean() > (_WHITE + _BLACK) / 2:
            value |= 1 << bit
    return value


def tone(seconds: float, rate: int, freq: float = 440.0, amplitude: float = 0.5) -> np.ndarray:
    """A sine tone as float32 mono samples (round(seconds*rate) of them)."""
    n = int(round(seconds * rate))
    t = np.arange(n, dtype=np.float64) / rate
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def _signal(seconds: float, rate: int, channels: int, freq: float, kind: str) -> np.ndarray:
    n = int(round(seconds * rate))
    if kind == "tone":
        mono = tone(seconds, rate, freq)
    elif kind == "noise":
        mono = np.random.default_rng(1234).uniform(-0.5, 0.5, n).astype(np.float32)
    elif kind == "silence":
        mono = np.zeros(n, np.float32)
    else:
        raise ValueError(f"unknown kind {kind!r}")
    # Later channels get a quieter copy so stereo downmix is distinguishable from channel 0 alone.
    return np.stack([mono * (1.0 if ch == 0 else 0.5) for ch in range(channels)])


def _write_audio(path: Path, fmt: str, codec: str, samples: np.ndarray, rate: int, **stream_kw) -> Path:
    channels = samples.shape[0]
    layout = "mono" if channels == 1 else "stereo" if channels == 2 else f"{channels}c"
    with av.open(str(path), "w", format=fmt) as out:
        stream = out.add_stream(codec, rate=rate, layout=layout, **stream_kw)
        out.start_encoding()  # writes the header even when there are no samples
        step = 1024
        for start in range(0, samples.shape[1], step):
            chunk = np.ascontiguousarray(samples[:, start:start + step])
            frame = av.AudioFrame.from_ndarray(chunk, format="fltp", layout=layout)
            frame.sample_rate = rate
            frame.pts = start
            frame.time_base = Fraction(1, rate)
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return path


_WAV_CODECS = {"s16": "pcm_s16le", "s24": "pcm_s24le", "s32": "pcm_s32le", "flt": "pcm_f32le", "u8": "pcm_u8"}


def make_wav(path: str | Path, *, seconds: float = 2.0, rate: int = 16000, channels: int = 1,
             freq: float = 440.0, kind: str = "tone", sample_format: str = "s16") -> Path:
    """Write a WAV file.

    Args:
        path: where to write.
        seconds, rate, channels: length, sample rate and channel count.
        freq: tone frequency (kind="tone").
        kind: "tone", "noise" or "silence".
        sample_format: "s16", "s24", "s32", "flt" or "u8" PCM.
    """
    return _write_audio(Path(path), "wav", _WAV_CODECS[sample_format],
                        _signal(seconds, rate, channels, freq, kind), rate)


def make_mp3(path: str | Path, *, seconds: float = 2.0, rate: int = 16000, channels: int = 1,
             freq: float = 440.0, kind: str = "tone") -> Path:
    """Write an MP3 file (libmp3lame); same arguments as `make_wav`."""
    return _write_audio(Path(path), "mp3", "libmp3lame", _signal(seconds, rate, channels, freq, kind), rate)


def make_video(path: str | Path, *, seconds: float = 2.0, fps: int = 25, size: tuple[int, int] = (160, 120),
               layout: Layout = "faststart", codec: str = "libx264", pix_fmt: str = "yuv420p",
               with_audio: bool = False, gop: int | None = None, vfr: bool = False, rotation: int = 0,
               still: bool = False) -> Path:
    """Write an MP4 whose frames carry their frame number (see `draw_frame`).

    Args:
        path: where to write.
        seconds, fps: length and frame rate; the clip has round(seconds*fps) frames.
        size: (width, height).
        layout: "faststart" (moov first), "fragmented" (empty moov + fragments) or "transactional"
            (moov after mdat).
        codec: "libx264" (H.264) or e.g. "mpeg4" for a non-H.264 clip.
        pix_fmt: encoder pixel format.
        with_audio: add an AAC tone track of the same length.
        gop: keyframe interval in frames (encoder default when None).
        vfr: variable frame timing (frame durations cycle through 40, 40, 90, 40, 15 ms).
        rotation: display rotation (degrees counter-clockwise) written into the track, as phones do.
        still: a gradient that stays put (see `draw_frame`).
    """
    path = Path(path)
    width, height = size
    n = int(round(seconds * fps))
    options = {"movflags": _MOVFLAGS[layout]} if _MOVFLAGS[layout] else {}
    with av.open(str(path), "w", format="mp4", options=options) as out:
        stream = out.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        if rotation:
            stream.set_display_rotation(rotation)
        time_base = Fraction(1, 1000) if vfr else Fraction(1, fps)
        stream.codec_context.time_base = time_base
        if gop:
            stream.codec_context.gop_size = gop
            if codec == "libx264":
                stream.options = {"keyint_min": str(gop), "sc_threshold": "0"}
        audio = None
        if with_audio:
            audio = out.add_stream("aac", rate=48000, layout="mono")
        pts = 0
        for i in range(n):
            picture = draw_frame(i, width, height, still)
            frame = av.VideoFrame.from_ndarray(picture, format="rgb24").reformat(format=pix_fmt)
            frame.pts = pts
            frame.time_base = time_base
            pts += _VFR_STEPS_MS[i % len(_VFR_STEPS_MS)] if vfr else 1
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
        if audio is not None:
            samples = tone(n / fps, 48000)[None, :]
            step = 1024
            for start in range(0, samples.shape[1], step):
                frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(samples[:, start:start + step]),
                                                   format="fltp", layout="mono")
                frame.sample_rate, frame.pts, frame.time_base = 48000, start, Fraction(1, 48000)
                for packet in audio.encode(frame):
                    out.mux(packet)
            for packet in audio.encode(None):
                out.mux(packet)
    return path


def backwards_timestamps(data: bytes) -> bytes:
    """A copy of a 64x64, 25 fps `make_video` clip whose frame 5 is stamped before frame 4.

    Patches the composition offsets (ctts): x264 gives this clip the pattern 1024, 1024, 2560, 1024...
    (in 1/12800 s); the third sample's 2560 becomes 1536, so it presents at 0.12 s, after 0.16 s.
    """
    import struct

    buf = bytearray(data)
    at = buf.index(b"ctts") + 4
    entries = [struct.unpack(">II", buf[at + 8 + 8 * k:at + 16 + 8 * k]) for k in range(3)]
    if entries != [(2, 1024), (1, 2560), (1, 1024)]:
        raise ValueError(f"unexpected ctts pattern {entries}: make the clip with make_video(size=(64, 64))")
    buf[at + 20:at + 24] = struct.pack(">I", 1536)
    return bytes(buf)


def probe(path: str | Path | bytes) -> dict:
    """Decode a media file fully and report what tests assert on.

    Args:
        path: a file path, or the file's bytes.

    Returns:
        dict with frame_count, fps (Fraction or None), width, height, pix_fmt, video_codec, pts (list of
        seconds per decoded frame), keyframes (indices of key frames), audio_codec, audio_rate,
        audio_channels, audio_samples (decoded per channel), audio_duration (seconds, or None),
        audio_start (seconds of the first audio frame, or None).
    """
    import io

    src = io.BytesIO(path) if isinstance(path, (bytes, bytearray)) else str(path)
    info: dict = {"frame_count": 0, "fps": None, "width": None, "height": None, "pix_fmt": None,
                  "video_codec": None, "pts": [], "keyframes": [], "audio_codec": None, "audio_rate": None,
                  "audio_channels": None, "audio_samples": 0, "audio_duration": None, "audio_start": None,
                  "audio_end": None}
    with av.open(src) as container:
        if container.streams.video:
            vs = container.streams.video[0]
            info.update(fps=vs.average_rate, width=vs.codec_context.width, height=vs.codec_context.height,
                        video_codec=vs.codec_context.name)
            for frame in container.decode(vs):
                if info["pix_fmt"] is None:
                    info["pix_fmt"] = frame.format.name
                if frame.key_frame:
                    info["keyframes"].append(info["frame_count"])
                info["pts"].append(float(frame.pts * frame.time_base) if frame.pts is not None else None)
                info["frame_count"] += 1
    with av.open(io.BytesIO(path) if isinstance(path, (bytes, bytearray)) else str(path)) as container:
        if container.streams.audio:
            aus = container.streams.audio[0]
            info.update(audio_codec=aus.codec_context.name, audio_rate=aus.codec_context.sample_rate,
                        audio_channels=aus.codec_context.channels)
            for frame in container.decode(aus):
                if frame.pts is not None:
                    start = float(frame.pts * frame.time_base)
                    if info["audio_start"] is None:
                        info["audio_start"] = start
                    info["audio_end"] = start + frame.samples / frame.sample_rate
                info["audio_samples"] += frame.samples
            info["audio_duration"] = info["audio_samples"] / info["audio_rate"]
    return info


def decode_audio(path: str | Path | bytes) -> tuple[np.ndarray, int]:
    """All audio of a file as float32 mono (channel mean) and its sample rate."""
    import io

    src = io.BytesIO(path) if isinstance(path, (bytes, bytearray)) else str(path)
    chunks = []
    with av.open(src) as container:
        stream = container.streams.audio[0]
        rate = stream.codec_context.sample_rate
        resampler = av.AudioResampler(format="flt", layout="mono", rate=rate)
        for frame in container.decode(stream):
            for out in resampler.resample(frame):
                chunks.append(out.to_ndarray().reshape(-1))
        for out in resampler.resample(None):
            chunks.append(out.to_ndarray().reshape(-1))
    return (np.concatenate(chunks) if chunks else np.zeros(0, np.float32)), rate


def decode_frames(path: str | Path | bytes) -> list[av.VideoFrame]:
    """All video frames of a small file (tests only: keeps every frame in memory)."""
    import io

    src = io.BytesIO(path) if isinstance(path, (bytes, bytearray)) else str(path)
    with av.open(src) as container:
        return list(container.decode(container.streams.video[0]))

"""Hard footage composed from real talking-head clips: cuts between people, several people side by side with one
talking, covered mouths, faces that leave and return, small faces in wide shots, dark shots, 4K close-ups.

The tests compose what they need from the clips under data/footage (committed, public; see data/NOTICE.md) or from
../shared/media; benchmarks/eval_footage.py uses the same functions for the measured figures.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent
FOOTAGE_DIR = REPO_ROOT / "data" / "footage"


@dataclass
class Clip:
    """Decoded frames (BGR) of a clip at a given rate, with its mono audio at `rate` Hz (None without audio)."""

    frames: list[np.ndarray]
    fps: int = 25
    audio: np.ndarray | None = None
    rate: int = 16000
    # Per frame: where each person's face is (x, y, w, h) and who talks, when the composition knows it.
    truth: list[dict] = field(default_factory=list)

    @property
    def size(self) -> tuple[int, int]:
        h, w = self.frames[0].shape[:2]
        return w, h

    def seconds(self) -> float:
        return len(self.frames) / self.fps


def load(path: str | Path, *, seconds: float | None = None, start_s: float = 0.0, fps: int = 25,
         rate: int = 16000, size: tuple[int, int] | None = None) -> Clip:
    """A clip's frames resampled to `fps` (nearest frame) and its audio resampled to mono `rate` Hz."""
    frames: list[np.ndarray] = []
    times: list[float] = []
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        for frame in container.decode(stream):
            t = float(frame.time) if frame.time is not None else len(times) / float(stream.average_rate or 25)
            if t < start_s:
                continue
            if seconds is not None and t >= start_s + seconds:
                break
            img = frame.to_ndarray(format="bgr24")
            if size is not None:
                img = cv2.resize(img, size, interpolation=cv2.INTER_AREA)
            frames.append(img)
            times.append(t - start_s)
    if not frames:
        raise ValueError(f"{path}: no frames in the requested span")
    span = times[-1] + (times[-1] - times[-2] if len(times) > 1 else 1 / fps)
    count = max(1, int(round(span * fps)))
    picked = [frames[min(range(len(times)), key=lambda k: abs(times[k] - i / fps))] for i in range(count)]
    return Clip(frames=picked, fps=fps, audio=_audio(path, rate, start_s, count / fps), rate=rate)


def _audio(path: str | Path, rate: int, start_s: float, seconds: float) -> np.ndarray | None:
    with av.open(str(path)) as container:
        if not container.streams.audio:
            return None
        resampler = av.AudioResampler(format="flt", layout="mono", rate=rate)
        parts = []
        for frame in container.decode(container.streams.audio[0]):
            for out in resampler.resample(frame):
                parts.append(out.to_ndarray().reshape(-1))
        for out in resampler.resample(None):
            parts.append(out.to_ndarray().reshape(-1))
    samples = np.concatenate(parts) if parts else np.zeros(0, np.float32)
    a = int(round(start_s * rate))
    out = np.zeros(int(round(seconds * rate)), np.float32)
    chunk = samples[a : a + len(out)]
    out[: len(chunk)] = chunk
    return out


def write(clip: Clip, path: str | Path, *, lossless: bool = False, with_audio: bool = True) -> Path:
    """Encode a clip as H.264 (+ AAC when it has audio and with_audio) MP4."""
    path = Path(path)
    with av.open(str(path), "w", format="mp4") as out:
        v = out.add_stream("libx264", rate=Fraction(clip.fps))
        w, h = clip.size
        v.width, v.height, v.pix_fmt = w // 2 * 2, h // 2 * 2, "yuv420p"
        v.options = {"qp": "0"} if lossless else {"crf": "18", "preset": "veryfast"}
        a = None
        if with_audio and clip.audio is not None:
            a = out.add_stream("aac", rate=clip.rate)
            a.layout = "mono"
        for k, img in enumerate(clip.frames):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(img[: v.height, : v.width]), format="bgr24")
            frame.pts = k
            for packet in v.encode(frame.reformat(format="yuv420p")):
                out.mux(packet)
        for packet in v.encode():
            out.mux(packet)
        if a is not None and clip.audio is not None:
            samples = np.clip(clip.audio, -1, 1).astype(np.float32)
            step = 1024
            for k in range(0, len(samples), step):
                chunk = samples[k : k + step]
                frame = av.AudioFrame.from_ndarray(chunk.reshape(1, -1), format="flt", layout="mono")
                frame.sample_rate = clip.rate
                frame.pts = k
                for packet in a.encode(frame):
                    out.mux(packet)
            for packet in a.encode():
                out.mux(packet)
    return path


def write_wav(samples: np.ndarray, rate: int, path: str | Path) -> Path:
    """16-bit mono WAV."""
    path = Path(path)
    with av.open(str(path), "w", format="wav") as out:
        s = out.add_stream("pcm_s16le", rate=rate)
        s.layout = "mono"
        pcm = (np.clip(samples, -1, 1) * 32767).astype(np.int16).reshape(1, -1)
        frame = av.AudioFrame.from_ndarray(pcm, format="s16", layout="mono")
        frame.sample_rate = rate
        for packet in s.encode(frame):
            out.mux(packet)
        for packet in s.encode():
            out.mux(packet)
    return path


def cut(clips: Sequence[Clip], size: tuple[int, int]) -> Clip:
    """The clips one after another, each scaled to fill `size` (cropped to keep its aspect), hard cuts between."""
    frames: list[np.ndarray] = []
    audio: list[np.ndarray] = []
    truth: list[dict] = []
    for n, clip in enumerate(clips):
        frames += [_fill(f, size) for f in clip.frames]
        audio.append(clip.audio if clip.audio is not None else np.zeros(int(clip.seconds() * clip.rate), np.float32))
        truth += [{"shot": n}] * len(clip.frames)
    return Clip(frames=frames, fps=clips[0].fps, audio=np.concatenate(audio), rate=clips[0].rate, truth=truth)


def _fill(img: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    w, h = size
    ih, iw = img.shape[:2]
    s = max(w / iw, h / ih)
    big = cv2.resize(img, (max(w, round(iw * s)), max(h, round(ih * s))), interpolation=cv2.INTER_AREA)
    y0, x0 = (big.shape[0] - h) // 2, (big.shape[1] - w) // 2
    return big[y0 : y0 + h, x0 : x0 + w].copy()


def side_by_side(people: Sequence[Clip], heights: Sequence[int], size: tuple[int, int], talker: int,
                 background: int = 40) -> Clip:
    """Several people in one frame: each clip scaled to a tile `heights[k]` tall, tiles spread along the width,
    bottoms aligned, on a grey background; the soundtrack is the talking person's own audio.

    Truth per frame: "boxes" (tile rectangles) and "talker" (index of the person whose audio plays).
    """
    w, h = size
    count = min(len(p.frames) for p in people)
    tiles = []
    for clip, th in zip(people, heights):
        ih, iw = clip.frames[0].shape[:2]
        tw = int(round(iw * th / ih)) // 2 * 2
        tiles.append((clip, tw, th))
    gap = (w - sum(tw for _, tw, _ in tiles)) // (len(tiles) + 1)
    if gap < 0:
        raise ValueError("the tiles do not fit side by side")
    frames, boxes = [], []
    x = gap
    for _, tw, th in tiles:
        boxes.append((x, h - th, tw, th))
        x += tw + gap
    for k in range(count):
        canvas = np.full((h, w, 3), background, np.uint8)
        for (clip, tw, th), (bx, by, _, _) in zip(tiles, boxes):
            canvas[by : by + th, bx : bx + tw] = cv2.resize(clip.frames[k], (tw, th), interpolation=cv2.INTER_AREA)
        frames.append(canvas)
    talking = people[talker]
    audio = talking.audio[: int(count / talking.fps * talking.rate)] if talking.audio is not None else None
    truth = [{"boxes": boxes, "talker": talker}] * count
    return Clip(frames=frames, fps=people[0].fps, audio=audio, rate=people[0].rate, truth=truth)


def still(clip: Clip, seconds: float) -> Clip:
    """A clip's first frame held for `seconds` with a slow sway of a pixel or two (a listener who does not talk)."""
    img = clip.frames[0]
    frames = []
    for k in range(int(round(seconds * clip.fps))):
        dx, dy = 1.5 * np.sin(k / 17.0), 1.0 * np.sin(k / 23.0)
        m = np.float32([[1, 0, dx], [0, 1, dy]])
        frames.append(cv2.warpAffine(img, m, (img.shape[1], img.shape[0]), borderMode=cv2.BORDER_REPLICATE))
    return Clip(frames=frames, fps=clip.fps, audio=np.zeros(int(seconds * clip.rate), np.float32), rate=clip.rate)


def concat(clips: Iterable[Clip]) -> Clip:
    """Clips of the same size and rate one after another (audio and truth joined)."""
    clips = list(clips)
    audio = [c.audio if c.audio is not None else np.zeros(int(c.seconds() * c.rate), np.float32) for c in clips]
    return Clip(frames=[f for c in clips for f in c.frames], fps=clips[0].fps, audio=np.concatenate(audio),
                rate=clips[0].rate, truth=[t for c in clips for t in (c.truth or [{}] * len(c.frames))])

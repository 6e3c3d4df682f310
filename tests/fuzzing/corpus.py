"""The valid inputs every fuzz case starts from: a one-second talking face in each MP4 layout, WAV and MP3 speech,
and where the face is (for speaker data that points at it, or away from it)."""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from tests import synth

SIDE = 256
FPS = 25
SECONDS = 1.0
FACE_SOURCE = "talking_1.mp4"
LAYOUTS = ("faststart", "fragmented", "transactional")
_MOVFLAGS = {"faststart": "faststart", "fragmented": "frag_keyframe+empty_moov+default_base_moof", "transactional": ""}


@dataclass(frozen=True)
class Corpus:
    """Bytes of the valid inputs, and facts about them the cases rely on.

    Attributes:
        videos: layout -> MP4 bytes (SIDE x SIDE, FPS, `frames` frames).
        wav, mp3: speech of the same length.
        frames: frames in each video.
        face_box: (x, y, w, h) of the face in frame 0 (a box with nothing readable is far from it).
        real_face: False when the shared talking-head clip was absent and the videos are synthetic.
    """

    videos: dict[str, bytes]
    wav: bytes
    mp3: bytes
    frames: int
    face_box: tuple[float, float, float, float]
    real_face: bool


def _face_frames(source: Path, count: int) -> list[np.ndarray]:
    """The first `count` frames of `source`, centre-cropped to a square and scaled to SIDE (RGB)."""
    import cv2

    out: list[np.ndarray] = []
    with av.open(str(source)) as container:
        for frame in container.decode(video=0):
            rgb = frame.to_ndarray(format="rgb24")
            h, w = rgb.shape[:2]
            side = min(h, w)
            y0, x0 = (h - side) // 2, (w - side) // 2
            out.append(cv2.resize(rgb[y0:y0 + side, x0:x0 + side], (SIDE, SIDE), interpolation=cv2.INTER_AREA))
            if len(out) == count:
                break
    return out


def _encode(frames: list[np.ndarray], path: Path, layout: str) -> bytes:
    options = {"movflags": _MOVFLAGS[layout]} if _MOVFLAGS[layout] else {}
    with av.open(str(path), "w", format="mp4", options=options) as out:
        stream = out.add_stream("libx264", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = SIDE, SIDE, "yuv420p"
        stream.codec_context.time_base = Fraction(1, FPS)
        for i, rgb in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format="yuv420p")
            frame.pts, frame.time_base = i, Fraction(1, FPS)
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return path.read_bytes()


def _find_face(rgb: np.ndarray) -> tuple[float, float, float, float] | None:
    from lipsync_service.core.faces import FaceDetector

    faces = FaceDetector().detect_rgb(rgb)
    if not faces:
        return None
    x1, y1, x2, y2 = faces[0].box
    x1, y1 = max(0.0, x1), max(0.0, y1)
    return (round(x1, 1), round(y1, 1), round(min(SIDE, x2) - x1, 1), round(min(SIDE, y2) - y1, 1))


def build(directory: Path, media_dir: Path) -> Corpus:
    """Write the corpus into `directory` and return it.

    Args:
        directory: a scratch folder.
        media_dir: the shared test media (../shared/media); without its talking head the videos are synthetic
            frames (the cases still run, but none reaches the lip-sync of a real face).
    """
    directory.mkdir(parents=True, exist_ok=True)
    count = int(round(SECONDS * FPS))
    source = media_dir / FACE_SOURCE
    frames = _face_frames(source, count) if source.exists() else []
    real = len(frames) == count
    box = _find_face(frames[0]) if real else None
    if box is None:
        real = False
        frames = [synth.draw_frame(i, SIDE, SIDE) for i in range(count)]
        box = (SIDE * 0.3, SIDE * 0.3, SIDE * 0.4, SIDE * 0.4)
    videos = {layout: _encode(frames, directory / f"face_{layout}.mp4", layout) for layout in LAYOUTS}
    wav = synth.make_wav(directory / "speech.wav", seconds=SECONDS, kind="tone").read_bytes()
    mp3 = synth.make_mp3(directory / "speech.mp3", seconds=SECONDS).read_bytes()
    return Corpus(videos=videos, wav=wav, mp3=mp3, frames=count, face_box=box, real_face=real)

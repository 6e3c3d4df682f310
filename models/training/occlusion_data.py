"""Mouths of real footage for the occlusion model: frames sampled across each clip, read the way the service reads
them (its MTCNN detector and Face Mesh, core/lips.py's LipTracker and mouth box), stored as mouth-aligned crops.

A stored crop is the canonical crop (lipsync_service.core.occlusion) grown by MARGIN canonical pixels on every side
and sampled at STORE_SCALE output pixels per canonical pixel, so training can re-crop it with a perturbed transform
(the mesh is often off when something covers the mouth) and still have pixels to sample. Like serving, the crop is
cut from the mouth box only (edge pixels repeated beyond it). numpy, OpenCV and PyAV only: the eval uses it too.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# Never trained or tuned on: the identities the occlusion eval reports on (benchmarks/eval_occlusion.py).
HELD_OUT = ("ed_pose_source2_60s.mp4", "dfrf_french_50s.mp4", "talking_1.mp4", "talking_2.mp4", "talking_3.mp4",
            "face_static_720p_*.mp4", "talking_long_silent.mp4")
VIDEO_SUFFIXES = (".mp4", ".mpg", ".mpeg", ".mov", ".mkv", ".avi", ".webm")
MARGIN = 24.0
STORE_SCALE = 1.5
# Background patches (any object) cut per clip from outside the face, this size.
PATCH_SIDE = 96


def store_size() -> tuple[int, int]:
    """(width, height) of a stored crop."""
    from lipsync_service.core.occlusion import CANON_H, CANON_W

    return (round((CANON_W + 2 * MARGIN) * STORE_SCALE), round((CANON_H + 2 * MARGIN) * STORE_SCALE))


def store_transform(to_canon: np.ndarray) -> np.ndarray:
    """Frame -> stored-crop pixels, from the frame -> canonical similarity."""
    m = to_canon.copy()
    m[:, 2] += MARGIN
    return m * STORE_SCALE


def is_held_out(name: str) -> bool:
    """Whether a clip's file name is one of the held-out identities."""
    return any(fnmatch.fnmatch(name, pattern) for pattern in HELD_OUT)


def find_clips(folders: Iterable[Path], held_out: bool = False) -> list[Path]:
    """Videos in the folders (not recursive): the training ones, or with held_out the held-out ones."""
    clips = []
    for folder in folders:
        for path in sorted(Path(folder).iterdir()):
            if path.suffix.lower() in VIDEO_SUFFIXES and is_held_out(path.name) == held_out:
                clips.append(path)
    return clips


@dataclass
class MouthSample:
    """One face's mouth in one frame, as the service reads it.

    Attributes:
        index: frame index in the clip.
        frame: the decoded frame, BGR uint8 [H, W, 3].
        raw: the face mesh [468, 2] in frame pixels.
        image: BGR of the mouth box (core/lips.py's mouth_box), origin: its top-left in frame pixels.
        box: the face detector's box (x1, y1, x2, y2).
        lips: the lip tracker's read (core.lips.LipRead).
    """

    index: int
    frame: np.ndarray
    raw: np.ndarray
    image: np.ndarray
    origin: tuple[int, int]
    box: tuple[float, float, float, float]
    lips: object = None


def frame_count(video: Path) -> int:
    """Frames in a video (decoded count when the container does not say)."""
    import av

    with av.open(str(video)) as container:
        stream = container.streams.video[0]
        if stream.frames:
            return int(stream.frames)
        return sum(1 for _ in container.decode(stream))


def spread_indices(total: int, count: int) -> list[int]:
    """`count` frame indices spread evenly over a clip of `total` frames (all of them if fewer)."""
    if total <= count:
        return list(range(total))
    return sorted({int(round(v)) for v in np.linspace(0, total - 1, count)})


def read_mouths(video: Path, indices: Iterable[int]) -> Iterator[tuple[MouthSample | None, object]]:
    """The largest face's mouth in each wanted frame, read with the service's detector and lip tracker.

    Args:
        video: the clip.
        indices: frame indices wanted.

    Yields:
        (sample or None when no face or no readable mesh, the yuv420p av.VideoFrame).
    """
    import av

    from lipsync_service.core.faces import FaceDetector
    from lipsync_service.core.landmarks import FaceLandmarker
    from lipsync_service.core.lips import LipTracker

    wanted = set(indices)
    detector, landmarker = FaceDetector(), FaceLandmarker()
    with av.open(str(video)) as container:
        stream = container.streams.video[0]
        fps = float(stream.average_rate or 25)
        for k, frame in enumerate(container.decode(stream)):
            if k > max(wanted, default=-1):
                return
            if k not in wanted:
                continue
            frame = frame.reformat(format="yuv420p") if frame.format.name != "yuv420p" else frame
            yield read_mouth(frame, k, detector, LipTracker(landmarker, fps)), frame


def read_mouth(frame, index: int, detector, tracker, box: tuple[float, float, float, float] | None = None
               ) -> MouthSample | None:
    """One frame's largest face (or the face in `box`) read by the service's lip tracker.

    Args:
        frame: yuv420p av.VideoFrame.
        index: its index.
        detector: core.faces.FaceDetector (used when no box is given).
        tracker: core.lips.LipTracker (a fresh one reads from the box; one that read the previous frame tracks).
        box: the face box to read, e.g. the clean frame's box for an occluded copy (a detector may lose a covered
            face; the service's tracker keeps its box).
    """
    if box is None:
        faces = detector.detect_frame(frame)
        if not faces:
            return None
        box = max(faces, key=lambda f: f.area).box
    lips = tracker.read(frame, index, 0, box)
    if lips is None:
        return None
    return MouthSample(index=index, frame=frame.to_ndarray(format="bgr24"), raw=lips.raw.astype(np.float32),
                       image=lips.image, origin=lips.origin, box=tuple(float(v) for v in box), lips=lips)


def background_patch(frame: np.ndarray, box: tuple[float, float, float, float], rng: np.random.Generator
                     ) -> np.ndarray | None:
    """A PATCH_SIDE square of the frame that does not overlap the face box (grown by half), or None."""
    import cv2

    h, w = frame.shape[:2]
    x1, y1, x2, y2 = box
    fw, fh = x2 - x1, y2 - y1
    side = int(min(h, w, max(PATCH_SIDE, 0.5 * max(fw, fh))))
    if side < 32:
        return None
    for _ in range(20):
        x, y = int(rng.integers(0, w - side + 1)), int(rng.integers(0, h - side + 1))
        if x + side < x1 - fw / 2 or x > x2 + fw / 2 or y + side < y1 - fh / 2 or y > y2 + fh / 2:
            return cv2.resize(frame[y : y + side, x : x + side], (PATCH_SIDE, PATCH_SIDE), interpolation=cv2.INTER_AREA)
    return None


def build_cache(folders: Iterable[Path], out: Path, per_clip: int = 240, patches_per_clip: int = 12, seed: int = 0,
                progress=print) -> Path:
    """Read the training clips' mouths and write the stored crops, meshes and background patches to one npz.

    Args:
        folders: folders of videos; held-out clips (HELD_OUT) are skipped.
        out: the npz file.
        per_clip: frames sampled per clip, spread over the whole clip.
        patches_per_clip: background patches cut per clip.
        seed: for the patch positions.
        progress: called with a line per clip.

    Returns:
        out.

    Raises:
        ValueError: no training clip, or no face read in any.
    """
    from lipsync_service.core.occlusion import canonical_transform, warp_crop

    rng = np.random.default_rng(seed)
    crops, meshes, clip_of, patches, names = [], [], [], [], []
    size = store_size()
    clips = find_clips(folders)
    if not clips:
        raise ValueError(f"no training clips in {', '.join(str(f) for f in folders)}")
    for clip in clips:
        total = frame_count(clip)
        indices = spread_indices(total, per_clip)
        patch_at = set(spread_indices(len(indices), patches_per_clip))
        found = 0
        for n, (sample, _) in enumerate(read_mouths(clip, indices)):
            if sample is None:
                continue
            found += 1
            m = store_transform(canonical_transform(sample.raw))
            crops.append(warp_crop(sample.image, sample.origin, m / STORE_SCALE, size, STORE_SCALE))
            meshes.append((sample.raw @ m[:, :2].T + m[:, 2]).astype(np.float32))
            clip_of.append(len(names))
            if n in patch_at:
                patch = background_patch(sample.frame, sample.box, rng)
                if patch is not None:
                    patches.append(patch)
        names.append(clip.name)
        progress(f"{clip.name}: {found} of {len(indices)} sampled frames with a mouth")
    if not crops:
        raise ValueError("no face was read in any training clip")
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez(out, crops=np.stack(crops), meshes=np.stack(meshes), clip=np.array(clip_of, np.int32),
             names=np.array(names), patches=np.stack(patches) if patches else np.zeros((0, PATCH_SIDE, PATCH_SIDE, 3),
                                                                                        np.uint8))
    return out

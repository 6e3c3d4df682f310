"""Training samples from the prepared cache: windows of consecutive face crops, their speech, references.

The cache (written by `lipsync_models.dataset`) holds one compressed npz per clip and an index.json.
Sampling is plain numpy with an explicit Generator, so a run can save and restore it exactly.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

MEL_STEPS = 16
INDEX_FILE = "index.json"


@dataclass
class Clip:
    """One prepared clip in memory.

    Attributes:
        name: source file stem.
        identity: person label; the split is by identity.
        faces: uint8 [N, S, S, 3] BGR crops.
        valid: bool [N], a face was found and cropped in that frame.
        mel: float32 [80, M] normalised log-mel of the whole speech track.
        window_starts: int [N], first mel frame of each video frame's window.
    """

    name: str
    identity: str
    faces: np.ndarray
    valid: np.ndarray
    mel: np.ndarray
    window_starts: np.ndarray

    def mel_window(self, frame: int) -> np.ndarray:
        """The [80, 16] window of a video frame, moved back at the end of the track like the service does."""
        total = self.mel.shape[1]
        start = int(self.window_starts[frame])
        if start + MEL_STEPS > total:
            start = max(0, total - MEL_STEPS)
        out = self.mel[:, start:start + MEL_STEPS]
        if out.shape[1] < MEL_STEPS:
            out = np.pad(out, ((0, 0), (0, MEL_STEPS - out.shape[1])), constant_values=-4.0)
        return out


def load_index(cache_dir: Path) -> dict:
    """The cache's index.json, or raise FileNotFoundError with what to run."""
    path = Path(cache_dir) / INDEX_FILE
    if not path.exists():
        raise FileNotFoundError(f"no prepared data in {cache_dir}: run `lipsync-service train prepare` first")
    return json.loads(path.read_text())


def load_clips(cache_dir: Path, split: str) -> list[Clip]:
    """Load every clip of one split ("train" or "val") from the cache.

    Args:
        cache_dir: the folder `train prepare` wrote.
        split: which split.

    Returns:
        the clips (may be empty).
    """
    index = load_index(cache_dir)
    clips = []
    for entry in index["clips"]:
        if entry["split"] != split or not entry.get("complete", False):
            continue
        with np.load(Path(cache_dir) / entry["file"]) as z:
            clips.append(Clip(entry["name"], entry["identity"], z["faces"], z["valid"].astype(bool),
                              z["mel"].astype(np.float32), z["window_starts"].astype(np.int64)))
    return clips


@dataclass
class Batch:
    """One batch of B windows of T frames (numpy, uint8 images in BGR, HWC).

    Attributes:
        target: [B, T, S, S, 3] the frames to reconstruct.
        reference: [B, T, S, S, 3] frames of the same clip from another time.
        mel: [B, T, 80, 16] each target frame's speech window.
        wrong_mel: [B, 80, 16] the speech window of another time of the same clip (expert negatives).
    """

    target: np.ndarray
    reference: np.ndarray
    mel: np.ndarray
    wrong_mel: np.ndarray


class WindowSampler:
    """Draws windows of T consecutive valid frames, weighting clips by how many windows they hold."""

    def __init__(self, clips: list[Clip], frames: int, min_gap: int | None = None, ref_max_gap: int = 0) -> None:
        """Args:
            clips: the clips to draw from.
            frames: T.
            min_gap: least distance (frames) between a window and its reference / wrong speech; default T.
            ref_max_gap: when > 0, references come from within this many frames of the window (similar
                head pose, so what differs is mostly the mouth); 0: anywhere in the clip.

        Raises:
            ValueError: no clip holds a full window.
        """
        self.frames = frames
        self.min_gap = frames if min_gap is None else min_gap
        self.ref_max_gap = ref_max_gap
        self.clips: list[Clip] = []
        self.starts: list[np.ndarray] = []
        for clip in clips:
            ok = clip.valid.astype(np.int64)
            if len(ok) < frames:
                continue
            run = np.convolve(ok, np.ones(frames, np.int64), mode="valid")
            starts = np.flatnonzero(run == frames)
            if len(starts) > 2:
                self.clips.append(clip)
                self.starts.append(starts)
        if not self.clips:
            raise ValueError(f"no clip has {frames} consecutive frames with a face")
        counts = np.array([len(s) for s in self.starts], np.float64)
        self.weights = counts / counts.sum()

    def _other(self, rng: np.random.Generator, starts: np.ndarray, i: int, max_gap: int = 0) -> int:
        gap = np.abs(starts - i)
        far = starts[(gap >= self.min_gap) & ((gap <= max_gap) if max_gap > 0 else True)]
        pool = far if len(far) else starts
        return int(pool[rng.integers(len(pool))])

    def sample(self, rng: np.random.Generator, batch: int, one_clip: bool = False) -> Batch:
        """Draw a batch.

        Args:
            rng: the run's generator (its state is saved in checkpoints).
            batch: B.
            one_clip: draw every window of the batch from one clip (so statistics over the batch are
                statistics of one person in one recording).

        Returns:
            the Batch.
        """
        t = self.frames
        targets, refs, mels, wrong = [], [], [], []
        fixed = int(rng.choice(len(self.clips), p=self.weights)) if one_clip else None
        for _ in range(batch):
            c = fixed if fixed is not None else int(rng.choice(len(self.clips), p=self.weights))
            clip, starts = self.clips[c], self.starts[c]
            i = int(starts[rng.integers(len(starts))])
            r = self._other(rng, starts, i, self.ref_max_gap)
            w = self._other(rng, starts, i)
            targets.append(clip.faces[i:i + t])
            refs.append(clip.faces[r:r + t])
            mels.append(np.stack([clip.mel_window(k) for k in range(i, i + t)]))
            wrong.append(clip.mel_window(w))
        return Batch(np.stack(targets), np.stack(refs), np.stack(mels).astype(np.float32),
                     np.stack(wrong).astype(np.float32))

"""Tiny synthetic talking faces for training tests: the mouth opens with the loudness of a tone."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

FPS = Fraction(25)
SR = 16000


def synthetic_clip(seed: int, frames: int, size: int, skin: tuple[int, int, int]):
    """A face whose mouth height follows a random on/off speech envelope.

    Returns:
        (faces uint8 [N, S, S, 3] BGR, speech float32 at 16 kHz, mouth opening per frame).
    """
    import cv2

    rng = np.random.default_rng(seed)
    # Syllable-like envelope: random on/off segments of 3-8 frames.
    env = np.zeros(frames)
    i = 0
    while i < frames:
        n = int(rng.integers(3, 9))
        env[i:i + n] = rng.uniform(0.5, 1.0) if rng.random() < 0.6 else 0.0
        i += n
    t = np.arange(int(frames / FPS * SR)) / SR
    per_sample = np.repeat(env, SR // int(FPS))[: len(t)]
    speech = (0.3 * per_sample * np.sin(2 * np.pi * 220 * t) * (1 + 0.5 * np.sin(2 * np.pi * 3 * t))).astype(np.float32)
    faces = np.zeros((frames, size, size, 3), np.uint8)
    for k in range(frames):
        img = np.full((size, size, 3), skin, np.uint8)
        cv2.circle(img, (size // 3, size // 3), size // 12, (40, 40, 40), -1)
        cv2.circle(img, (2 * size // 3, size // 3), size // 12, (40, 40, 40), -1)
        h = max(1, int(env[k] * size // 8))
        cv2.ellipse(img, (size // 2, int(size * 0.75)), (size // 6, h), 0, 0, 360, (30, 20, 120), -1)
        faces[k] = img
    return faces, speech, env


def write_synthetic_cache(cache: Path, size: int = 96, frames: int = 90) -> Path:
    """Three identities (two train, one val) written with the dataset builder's own writer."""
    from lipsync_models.dataset import write_clip
    from lipsync_service.core.mel import melspectrogram, window_start

    for n, (ident, split, skin) in enumerate(
        [("a", "train", (120, 150, 200)), ("b", "train", (90, 120, 170)), ("c", "val", (140, 170, 210))]
    ):
        faces, speech, _ = synthetic_clip(n, frames, size, skin)
        mel = melspectrogram(speech)
        starts = np.array([window_start(i, FPS) for i in range(frames)])
        write_clip(cache, f"clip_{ident}", ident, split, faces, np.ones(frames, bool), mel, starts, FPS)
    return cache


@pytest.fixture
def synthetic_cache(tmp_path: Path) -> Path:
    """A prepared cache of tiny synthetic clips."""
    pytest.importorskip("torch")
    return write_synthetic_cache(tmp_path / "cache")

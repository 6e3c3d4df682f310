"""Fidelity and stability measures of `eval` (lip and lower-face sharpness, lower-face PSNR, lip motion) on
synthetic frames and synthetic MediaPipe-style landmarks: no mediapipe, no video files."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest

from lipsync_service.evaluation import fidelity as fd

SIZE = 160
FRAMES = 12


def _ring(cx: float, cy: float, rx: float, ry: float, n: int) -> list[list[float]]:
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    return [[round(cx + rx * math.cos(a), 1), round(cy + ry * math.sin(a), 1)] for a in t]


def marks(mouth_y: float = 110.0) -> dict:
    """A face like landmarks.py reports it: oval 50x70 around (80, 70), nose tip at y 80, chin at y 140,
    outer lips a 40x16 ellipse around (80, mouth_y)."""
    return {"lips": _ring(80, mouth_y, 20, 8, 20), "nose": [80.0, 80.0], "chin": [80.0, 140.0],
            "oval": _ring(80, 70, 50, 70, 36)}


def textured_frames(seed: int = 0, frames: int = FRAMES, jitter: float = 2.0) -> list[np.ndarray]:
    """A fixed textured face with a little sensor noise per frame (so the input itself moves a little)."""
    rng = np.random.default_rng(seed)
    base = cv2.GaussianBlur(rng.uniform(0, 255, (SIZE, SIZE, 3)), (0, 0), 1.0)
    return [np.clip(base + rng.normal(0, jitter, base.shape), 0, 255).astype(np.uint8) for _ in range(frames)]


def lip_slices(m: dict) -> tuple[slice, slice]:
    x0, y0, x1, y1 = fd.lip_box(m, (SIZE, SIZE))
    return slice(y0, y1), slice(x0, x1)


def test_lip_box_is_padded_by_15_percent_of_the_mouth_width_and_clipped() -> None:
    # Mouth 40 px wide (60..100), 16 px tall (102..118): 6 px of padding on every side.
    assert fd.lip_box(marks(), (SIZE, SIZE)) == (54, 96, 106, 124)
    # Near the bottom edge the box is clipped to the frame.
    assert fd.lip_box(marks(mouth_y=155.0), (SIZE, SIZE))[3] == SIZE
    assert fd.union_box((0, 0, 5, 5), (3, 4, 9, 6)) == (0, 0, 9, 6)
    assert fd.union_box((0, 0, 5, 5), None) == (0, 0, 5, 5)


def test_rest_mask_is_the_lower_face_without_the_lip_box() -> None:
    m = marks()
    box = fd.lip_box(m, (SIZE, SIZE))
    mask = fd.rest_mask((SIZE, SIZE), m, box)
    rows = np.flatnonzero(mask.any(axis=1))
    assert rows[0] == 80 and rows[-1] <= 140  # from the nose tip row down to the chin
    assert not mask[box[1]:box[3], box[0]:box[2]].any()  # the lips are cut out
    assert mask[85, 40] and not mask[85, 25]  # inside the jaw line, not outside it (x = 80 -+ ~47 at y 85)
    assert not mask[60].any()  # nothing above the nose tip


def test_identical_output_scores_ratios_of_one_and_infinite_psnr() -> None:
    frames = textured_frames()
    pts = [marks()] * FRAMES
    env = np.where(np.arange(FRAMES) < 6, 0.0, -80.0)
    s = fd.measure_fidelity(frames, frames, pts, pts, env)
    assert s.lip_sharpness == 1.0 and s.rest_sharpness == 1.0
    assert s.rest_psnr_db == math.inf  # identical: inf (JSON writes Infinity), no cap
    assert s.lip_motion == 1.0 and s.lip_motion_silent == 1.0
    assert s.frames == FRAMES and s.output_face_missing == 0
    assert s.silent_frames == 5  # frames 7..11: this frame and the previous one silent
    assert s.silence_threshold_db == pytest.approx(-30.0)


def test_blurred_mouth_halves_the_lip_sharpness_and_spares_the_rest() -> None:
    frames = textured_frames()
    m = marks()
    ys, xs = lip_slices(m)
    out = []
    for f in frames:
        g = f.copy()
        g[ys, xs] = cv2.GaussianBlur(f, (0, 0), 2.5)[ys, xs]
        out.append(g)
    s = fd.measure_fidelity(out, frames, [m] * FRAMES, [m] * FRAMES)
    assert s.lip_sharpness < 0.5
    assert s.rest_sharpness == pytest.approx(1.0, abs=0.05)
    assert s.rest_psnr_db == math.inf  # no pixel outside the lip box changed (only the Laplacian next to it)


def test_noise_outside_the_lips_lowers_the_rest_psnr_not_the_lip_sharpness() -> None:
    frames = textured_frames()
    m = marks()
    ys, xs = lip_slices(m)
    rng = np.random.default_rng(5)
    out = []
    for f in frames:
        g = np.clip(f + rng.normal(0, 8, f.shape), 0, 255).astype(np.uint8)
        g[ys, xs] = f[ys, xs]
        out.append(g)
    s = fd.measure_fidelity(out, frames, [m] * FRAMES, [m] * FRAMES)
    assert 25 < s.rest_psnr_db < 35
    assert s.lip_sharpness == pytest.approx(1.0, abs=0.03)
    assert s.rest_sharpness > 1.2  # the noise adds high frequencies there


def test_a_mouth_moving_only_in_silence_scores_a_large_silent_motion_ratio() -> None:
    frames = textured_frames(jitter=1.0)
    m = marks()
    env = np.array([0.0] * 4 + [-80.0] * 8)  # speech, then silence
    out = []
    for k, f in enumerate(frames):
        g = f.copy()
        if k >= 5:  # the mouth opens and closes while nothing is said
            cv2.ellipse(g, (80, 110), (18, 2 + 3 * (k % 3)), 0, 0, 360, (20, 10, 60), -1)
        out.append(g)
    s = fd.measure_fidelity(out, frames, [m] * FRAMES, [m] * FRAMES, env)
    assert s.silent_frames == 7
    assert s.lip_motion_silent > 5
    assert s.lip_motion_silent > s.lip_motion > 1


def test_frames_without_a_face_in_the_input_are_skipped_and_missing_output_faces_counted() -> None:
    frames = textured_frames()
    m = marks()
    pts_in = [None, None] + [m] * (FRAMES - 2)
    pts_out = [m] * (FRAMES - 1) + [None]
    s = fd.measure_fidelity(frames, frames, pts_out, pts_in)
    assert s.frames == FRAMES - 2 and s.output_face_missing == 1
    assert s.lip_sharpness == 1.0 and s.lip_motion == 1.0
    # No face anywhere: nothing to score, and no envelope: no silence measure.
    s = fd.measure_fidelity(frames, frames, [None] * FRAMES, [None] * FRAMES)
    assert s.frames == 0 and s.lip_sharpness is None and s.rest_psnr_db is None and s.lip_motion is None
    assert s.lip_motion_silent is None and s.silence_threshold_db is None


def test_lip_box_is_the_union_of_input_and_output() -> None:
    # The output's mouth sits 10 px lower: the compared box spans both, so a blur of the output's own
    # mouth is seen even though it lies partly outside the input's box.
    frames = textured_frames()
    m_in, m_out = marks(), marks(mouth_y=120.0)
    x0, y0, x1, y1 = fd.lip_box(m_out, (SIZE, SIZE))
    out = []
    for f in frames:
        g = f.copy()
        g[y0:y1, x0:x1] = cv2.GaussianBlur(f, (0, 0), 2.5)[y0:y1, x0:x1]
        out.append(g)
    s = fd.measure_fidelity(out, frames, [m_out] * FRAMES, [m_in] * FRAMES)
    assert s.lip_sharpness < 0.5
    assert s.rest_sharpness == pytest.approx(1.0, abs=0.05)  # the union box is cut out of the rest


def test_helpers_edge_cases() -> None:
    assert fd.ratio(0.0, 0.0) == 1.0 and fd.ratio(1.0, 0.0) == math.inf and math.isnan(fd.ratio(math.nan, 1.0))
    assert fd.psnr_db(0.0, 10) == math.inf and math.isnan(fd.psnr_db(0.0, 0))
    assert fd.psnr_db(100.0 * 4, 4) == pytest.approx(10 * math.log10(255**2 / 100))
    quiet, thr = fd.silent_frames(np.array([-10.0] * 19 + [0.0]))
    assert thr == pytest.approx(np.percentile([-10.0] * 19 + [0.0], 95) - 30) and not quiet.any()
    assert math.isnan(fd.laplacian_variance(np.zeros((8, 8), np.uint8), np.zeros((8, 8), bool)))

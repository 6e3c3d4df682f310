"""Fidelity and stability of a lip-synced video against the unchanged input, from independent landmarks.

Pure array code (numpy, and OpenCV for the Laplacian and polygon fill): frames come in as RGB uint8 arrays,
landmarks as the per-frame dicts `landmark_env/landmarks.py` writes (MediaPipe Face Mesh, not the service's
own detector), so everything here is testable with synthetic frames and landmarks.

Per frame k, with the input's landmarks `pi` and the output's `po` (None where no face was found):

* lip box: the outer lip contour's bounding box padded by LIP_PAD x the mouth width (the contour's x extent)
  on every side, rounded outward; the box compared is the union of the input's and the output's, so both
  videos are measured on the same pixels (the input's alone when the output has no face).
* rest of the lower face: pixels of the convex hull of the input's face oval, on the rows from the nose tip
  (landmark 1) down to the chin (152), i.e. between the jaw line's extremes on each row, minus the lip box.
* sharpness of a region: variance of cv2.Laplacian(grey, CV_64F) (3x3 kernel, computed on the whole frame
  around the region) over the region's pixels.

Frames where the input has no face are left out of every measure.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

#: Lip box padding, as a fraction of the mouth width, on every side.
LIP_PAD = 0.15
#: A frame is silent when its loudness is this many dB under the 95th percentile of the clip's loudness.
SILENCE_BELOW_P95_DB = 30.0

Box = tuple[int, int, int, int]
"""x0, y0, x1, y1: the pixels [y0:y1, x0:x1]."""


def grey(rgb: np.ndarray) -> np.ndarray:
    """Luma (OpenCV's RGB -> grey weights) of an RGB uint8 frame, uint8 [H, W]."""
    import cv2

    return cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2GRAY)


def lip_box(points: dict, shape: tuple[int, ...], pad: float = LIP_PAD) -> Box:
    """The outer lip contour's box, padded by `pad` x mouth width on every side, rounded outward, clipped.

    Args:
        points: one frame's landmarks ({"lips": [[x, y], ...], ...}, pixels).
        shape: the frame's shape (H, W, ...).
        pad: padding as a fraction of the mouth width (the contour's x extent).
    """
    lips = np.asarray(points["lips"], np.float64)
    (x0, y0), (x1, y1) = lips.min(axis=0), lips.max(axis=0)
    p = pad * (x1 - x0)
    h, w = shape[:2]
    return (max(0, math.floor(x0 - p)), max(0, math.floor(y0 - p)),
            min(w, math.ceil(x1 + p)), min(h, math.ceil(y1 + p)))


def union_box(a: Box, b: Box | None) -> Box:
    """The smallest box holding both (a alone when b is None)."""
    if b is None:
        return a
    return min(a[0], b[0]), min(a[1], b[1]), max(a[2], b[2]), max(a[3], b[3])


def box_mask(shape: tuple[int, ...], box: Box) -> np.ndarray:
    """Boolean [H, W] mask of a box."""
    mask = np.zeros(shape[:2], bool)
    mask[box[1]:box[3], box[0]:box[2]] = True
    return mask


def rest_mask(shape: tuple[int, ...], points: dict, lips: Box) -> np.ndarray:
    """The lower face without the lips: the face oval's convex hull on the rows from the nose tip to the chin,
    minus the lip box.

    Args:
        shape: the frame's shape (H, W, ...).
        points: the input's landmarks for the frame ("oval", "nose", "chin").
        lips: the lip box cut out.

    Returns:
        bool [H, W].
    """
    import cv2

    h, w = shape[:2]
    hull = cv2.convexHull(np.round(np.asarray(points["oval"], np.float64)).astype(np.int32))
    fill = np.zeros((h, w), np.uint8)
    # cv2's stub types a colour (Scalar) as a sequence; OpenCV takes a plain number too.
    cv2.fillConvexPoly(fill, hull, 1)  # type: ignore[call-overload]
    mask = fill.astype(bool)
    top = min(h, max(0, round(float(points["nose"][1]))))
    bottom = min(h, max(0, round(float(points["chin"][1])) + 1))
    mask[:top] = False
    mask[bottom:] = False
    mask[lips[1]:lips[3], lips[0]:lips[2]] = False
    return mask


def _bounds(mask: np.ndarray, margin: int = 1) -> tuple[slice, slice] | None:
    """Slices of the mask's bounding box grown by `margin` pixels (clipped); None for an empty mask."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if not rows.size:
        return None
    h, w = mask.shape
    return (slice(max(0, rows[0] - margin), min(h, rows[-1] + 1 + margin)),
            slice(max(0, cols[0] - margin), min(w, cols[-1] + 1 + margin)))


def laplacian_variance(image: np.ndarray, mask: np.ndarray) -> float:
    """Variance of cv2.Laplacian(image, CV_64F) over the mask's pixels (NaN for an empty mask).

    The Laplacian is computed on the mask's bounding box plus one pixel, so its values inside the mask are
    those of the whole frame.
    """
    import cv2

    where = _bounds(mask)
    if where is None:
        return math.nan
    lap = cv2.Laplacian(np.ascontiguousarray(image[where]), cv2.CV_64F)
    return float(lap[mask[where]].var())


def ratio(a: float, b: float) -> float:
    """a / b, with 0 / 0 = 1 and x / 0 = inf; NaN when either is NaN."""
    if math.isnan(a) or math.isnan(b):
        return math.nan
    if b > 0:
        return a / b
    return 1.0 if a == 0 else math.inf


def psnr_db(squared_error: float, count: int, peak: float = 255.0) -> float:
    """PSNR from a pooled squared error over `count` values: inf when the error is 0, NaN when count is 0."""
    if count == 0:
        return math.nan
    if squared_error == 0:
        return math.inf
    return 10 * math.log10(peak * peak / (squared_error / count))


def silent_frames(envelope: np.ndarray, below_db: float = SILENCE_BELOW_P95_DB) -> tuple[np.ndarray, float]:
    """Frames whose loudness is more than `below_db` under the clip's 95th percentile.

    Args:
        envelope: per-frame loudness in dB (`evaluation.loudness_envelope`).
        below_db: distance under the 95th percentile.

    Returns:
        (bool [frames], the threshold in dB).
    """
    env = np.asarray(envelope, np.float64)
    if not env.size:
        return np.zeros(0, bool), math.nan
    threshold = float(np.percentile(env, 95)) - below_db
    return env < threshold, threshold


@dataclass
class FidelityScores:
    """Output vs the unchanged input at the same frame index (ratios: output / input).

    Attributes:
        lip_sharpness: median over frames of the Laplacian variance ratio in the lip box.
        rest_sharpness: median over frames of the Laplacian variance ratio in the rest of the lower face.
        rest_psnr_db: PSNR (RGB) of the rest of the lower face, squared error pooled over all frames.
        lip_motion: mean over frames of the grey mean absolute difference between consecutive frames in the
            lip box, output / input.
        lip_motion_silent: the same over the frames in silence only (this frame and the previous one silent).
        frames: frames scored (a face found in the input).
        output_face_missing: of those, frames where the landmark model found no face in the output.
        silent_frames: frame transitions in lip_motion_silent.
        silence_threshold_db: loudness under which a frame is silent (95th percentile - SILENCE_BELOW_P95_DB).
    """

    lip_sharpness: float | None
    rest_sharpness: float | None
    rest_psnr_db: float | None
    lip_motion: float | None
    lip_motion_silent: float | None
    frames: int
    output_face_missing: int
    silent_frames: int
    silence_threshold_db: float | None


def _none_if_nan(v: float) -> float | None:
    return None if math.isnan(v) else v


@dataclass
class FidelityMeter:
    """Accumulates the measures one frame pair at a time (a long clip never sits in memory), then `scores`."""

    lip_ratios: list[float] = field(default_factory=list)
    rest_ratios: list[float] = field(default_factory=list)
    motion_out: list[float] = field(default_factory=list)
    motion_in: list[float] = field(default_factory=list)
    rest_se: float = 0.0
    rest_count: int = 0
    frames: int = 0
    output_face_missing: int = 0
    _prev: tuple[np.ndarray, np.ndarray] | None = None

    def add(self, output: np.ndarray, original: np.ndarray, points_out: dict | None, points_in: dict | None) -> None:
        """Measure the next frame pair.

        Args:
            output: the lip-synced frame, RGB uint8 [H, W, 3].
            original: the unchanged frame at the same index, same shape.
            points_out: the output's landmarks for the frame (None: no face).
            points_in: the input's landmarks for the frame (None: no face; the frame is not scored).
        """
        g_out, g_in = grey(output), grey(original)
        prev, self._prev = self._prev, (g_out, g_in)
        if points_in is None:
            self.motion_out.append(math.nan)
            self.motion_in.append(math.nan)
            return
        self.frames += 1
        if points_out is None:
            self.output_face_missing += 1
        box = union_box(lip_box(points_in, original.shape),
                        None if points_out is None else lip_box(points_out, output.shape))
        lips = box_mask(original.shape, box)
        self.lip_ratios.append(ratio(laplacian_variance(g_out, lips), laplacian_variance(g_in, lips)))
        rest = rest_mask(original.shape, points_in, box)
        self.rest_ratios.append(ratio(laplacian_variance(g_out, rest), laplacian_variance(g_in, rest)))
        d = output[rest].astype(np.int32) - original[rest].astype(np.int32)
        self.rest_se += float((d * d).sum())
        self.rest_count += d.size
        if prev is None:
            self.motion_out.append(math.nan)
            self.motion_in.append(math.nan)
        else:
            ys, xs = slice(box[1], box[3]), slice(box[0], box[2])
            for cur, before, into in ((g_out, prev[0], self.motion_out), (g_in, prev[1], self.motion_in)):
                diff = np.abs(cur[ys, xs].astype(np.int16) - before[ys, xs].astype(np.int16))
                into.append(float(diff.mean()) if diff.size else math.nan)

    def scores(self, envelope: np.ndarray | None = None,
               below_db: float = SILENCE_BELOW_P95_DB) -> FidelityScores:
        """The measures so far.

        Args:
            envelope: per-frame speech loudness (dB) for the silent-frame measure; None leaves it out.
            below_db: silence threshold under the 95th percentile.
        """
        def median(values: list[float]) -> float | None:
            v = np.array([x for x in values if not math.isnan(x)], np.float64)
            return float(np.median(v)) if v.size else None

        m_out, m_in = np.array(self.motion_out), np.array(self.motion_in)
        ok = ~(np.isnan(m_out) | np.isnan(m_in))

        def motion(sel: np.ndarray) -> float | None:
            return _none_if_nan(ratio(float(m_out[sel].mean()), float(m_in[sel].mean()))) if sel.any() else None

        silent_motion, silent_n, threshold = None, 0, None
        if envelope is not None:
            quiet, thr = silent_frames(envelope, below_db)
            threshold = _none_if_nan(thr)
            n = min(len(quiet), len(ok))
            both = np.zeros(len(ok), bool)
            both[1:n] = quiet[1:n] & quiet[:n - 1]  # the transition k-1 -> k lies in silence
            sel = ok & both
            silent_n = int(sel.sum())
            silent_motion = motion(sel)
        return FidelityScores(
            lip_sharpness=median(self.lip_ratios), rest_sharpness=median(self.rest_ratios),
            rest_psnr_db=_none_if_nan(psnr_db(self.rest_se, self.rest_count)), lip_motion=motion(ok),
            lip_motion_silent=silent_motion, frames=self.frames, output_face_missing=self.output_face_missing,
            silent_frames=silent_n, silence_threshold_db=threshold)


def measure_fidelity(outputs: Iterable[np.ndarray], originals: Iterable[np.ndarray],
                     points_out: Sequence[dict | None], points_in: Sequence[dict | None],
                     envelope: np.ndarray | None = None) -> FidelityScores:
    """All the fidelity and stability measures of a clip (see the module docstring).

    Args:
        outputs: the lip-synced frames, RGB uint8.
        originals: the unchanged frames, same count and size.
        points_out: per-frame landmarks of the output (None where no face).
        points_in: per-frame landmarks of the input (None where no face).
        envelope: per-frame speech loudness in dB, for the motion-in-silence measure.

    Returns:
        the FidelityScores (frames past the shortest of the four sequences are ignored).
    """
    meter = FidelityMeter()
    for k, (out, orig) in enumerate(zip(outputs, originals)):
        if k >= len(points_in):
            break
        meter.add(out, orig, points_out[k] if k < len(points_out) else None, points_in[k])
    return meter.scores(envelope)

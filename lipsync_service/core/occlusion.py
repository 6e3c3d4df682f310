"""What covers the mouth: a small segmentation network on a mouth-aligned crop says, per pixel, where a hand, a
microphone, hair, a glass or any other object lies in front of the lips and the skin around them.

The crop is canonical: a similarity transform puts the mouth corners (Face Mesh 61 and 291) at fixed pixels, so
the network always sees the lips at the same place and size and can tell "no lips where lips must be" (a flat
patch) from a face. The weights are the project's own (models/training/occlusion.py, models/MODEL_CARD.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from lipsync_service.core.landmarks import OUTER_LIPS
from lipsync_service.core.ort_session import cpu_session
from lipsync_service.errors import InternalError

MODEL_PATH = Path(__file__).parent / "assets" / "occlusion" / "occlusion.onnx"
# The canonical crop: 96 x 80 pixels, the mouth corners at CORNERS. The mouth width is 48 pixels, so the crop
# reaches half a mouth width beyond each corner, 2/3 of a width above the corners (the nose base) and a full
# width below them (the chin): every pixel a mouth edit may touch (the lips, opened, and the skin they stretch).
CANON_W = 96
CANON_H = 80
CORNERS = ((24.0, 32.0), (72.0, 32.0))
LEFT_CORNER, RIGHT_CORNER = 61, 291
EYE_LEFT, EYE_RIGHT = 33, 263
# An occluder pixel is one the network gives at least this probability: its pixels keep the source's values.
THRESHOLD = 0.5
# The share of the lips that decides whether a mouth is covered counts only pixels at least this sure. At 0.5 pale,
# shiny skin on a clean upper lip was read as a cover in 26 of 240 frames of a test face (a run of frames left
# un-synced). Chosen on the training run's validation crops (models/training/occlusion.py, identities held out of
# training, synthetic occluders), never on the test footage: the highest probability at which every occluder kind
# covering 30 % of the lips or more is still flagged in at least 97 % of crops (hair 97.5 %, the others 100 %;
# clean crops 2.3 % flagged, as at 0.5). At 0.8 hair fell to 80 %.
COVER_CONFIDENCE = 0.7
# Image pixels per output pixel above which a crop's image is first halved (OpenCV's Gaussian pyramid) so bilinear
# sampling does not alias: a 4K close-up then looks to the network like the mouths it was trained on.
MAX_SAMPLING_STEP = 2.0
# OpenCV's 5x5 distance transform overstates a Euclidean distance by at most 1.92 % (measured around one point).
DISTANCE_SLACK = 1.02
# The ONNX model's tensors: crop uint8 [N, CANON_H, CANON_W, 3] BGR in, occluder float32 [N, 1, CANON_H, CANON_W]
# (probability) out.
INPUT_NAME = "crop"
OUTPUT_NAME = "occluder"


def canonical_transform(raw: np.ndarray) -> np.ndarray:
    """The similarity that maps frame pixels to canonical mouth pixels.

    Args:
        raw: a face mesh [468, 2+] in frame pixels.

    Returns:
        float64 [2, 3]: canonical (u, v) = M @ (x, y, 1); mouth corner 61 lands on CORNERS[0], 291 on CORNERS[1].

    Raises:
        ValueError: the mouth corners are not finite.
    """
    p = np.asarray(raw, np.float64)[:, :2]
    left, right = p[LEFT_CORNER], p[RIGHT_CORNER]
    if not (np.all(np.isfinite(left)) and np.all(np.isfinite(right))):
        raise ValueError("the face mesh's mouth corners are not finite")
    d = right - left
    length = float(np.hypot(d[0], d[1]))
    if length < 1.0:
        # Corners (nearly) on top of each other: a misread mesh. Keep a usable transform: the eye line's direction,
        # a one-pixel mouth (the crop then covers a tiny area, which the caller's lip share reports as it is).
        eye = p[EYE_RIGHT] - p[EYE_LEFT]
        eye_len = float(np.hypot(eye[0], eye[1])) if np.all(np.isfinite(eye)) else 0.0
        direction = eye / eye_len if eye_len > 1e-6 else np.array([1.0, 0.0])
        centre = (left + right) / 2
        left, right = centre - direction / 2, centre + direction / 2
        d, length = right - left, 1.0
    (u0, v0), (u1, v1) = CORNERS
    target = complex(u1 - u0, v1 - v0)
    z = target / complex(d[0], d[1])
    a, b = z.real, z.imag
    return np.array([[a, -b, u0 - (a * left[0] - b * left[1])],
                     [b, a, v0 - (b * left[0] + a * left[1])]], np.float64)


def warp_crop(image: np.ndarray, origin: tuple[int, int], to_canon: np.ndarray,
              size: tuple[int, int] = (CANON_W, CANON_H), scale: float = 1.0) -> np.ndarray:
    """A canonical crop of an image that sits at `origin` in the frame.

    Args:
        image: HxWxC (or HxW) array, its top-left at `origin` in frame pixels.
        origin: (x, y) of the image's top-left in frame pixels.
        to_canon: frame -> canonical similarity (`canonical_transform`).
        size: (width, height) of the output, in output pixels.
        scale: output pixels per canonical pixel (the training cache stores its crops at 1.5).

    Returns:
        The crop, same dtype and channels; outside the image, its edge pixels repeated.
    """
    m = to_canon * scale
    m[:, 2] += m[:, :2] @ np.asarray(origin, np.float64)
    step = 1.0 / max(math.hypot(m[0, 0], m[1, 0]), 1e-9)
    while step > MAX_SAMPLING_STEP and min(image.shape[:2]) >= 4:
        # pyrDown: Gaussian 5x5, then every second pixel; pixel centres: x = 2 x' + 0.5.
        image = cv2.pyrDown(image)
        m = m @ np.array([[2.0, 0, 0.5], [0, 2.0, 0.5], [0, 0, 1]])
        step /= 2
    return cv2.warpAffine(image, m, size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def lip_polygon_mask(raw: np.ndarray, to_canon: np.ndarray) -> np.ndarray:
    """bool [CANON_H, CANON_W]: the canonical pixels inside the mesh's outer-lip polygon."""
    lips = np.asarray(raw, np.float64)[list(OUTER_LIPS), :2] @ to_canon[:, :2].T + to_canon[:, 2]
    canvas = np.zeros((CANON_H, CANON_W), np.uint8)
    if np.all(np.isfinite(lips)):
        cv2.fillPoly(canvas, [np.round(lips * 16).astype(np.int32)], (1,), lineType=cv2.LINE_8, shift=4)
    return canvas.astype(bool)


@dataclass(frozen=True)
class Occlusion:
    """What covers one mouth in one frame.

    Attributes:
        mask: float32 [CANON_H, CANON_W] in [0, 1]: occluder probability per canonical pixel.
        to_canon: the frame -> canonical similarity used (float64 [2, 3]).
        lip_share: share of the lips (outer-lip polygon in canonical pixels) with mask >= COVER_CONFIDENCE.
    """

    mask: np.ndarray
    to_canon: np.ndarray
    lip_share: float

    def in_box(self, x0: int, y0: int, w: int, h: int, grow_px: float) -> np.ndarray:
        """The occluder over a frame box, grown.

        Args:
            x0, y0: top-left of the box in frame pixels.
            w, h: its size.
            grow_px: dilation in frame pixels (Euclidean); 0 for none.

        Returns:
            float32 [h, w]: 1 where an occluder is (mask >= THRESHOLD) or within grow_px frame pixels of one, 0
            elsewhere; pixels farther than grow_px from the canonical crop are 0. The mask is sampled bilinearly
            (its 0.5 contour, not its pixel steps) and kept to 1/255.
        """
        out = np.zeros((max(h, 0), max(w, 0)), np.float32)
        rows, cols = np.nonzero(self.mask >= THRESHOLD)
        if w <= 0 or h <= 0 or not len(rows):
            # Bilinear samples of values all under the threshold stay under it: nothing to map.
            return out
        grow = max(grow_px, 0.0)
        pad = int(math.ceil(grow))
        # Only the frame pixels near the occluder are computed: its canonical bounds (one pixel more for the
        # bilinear reach) mapped to the frame, grown, and cut to the box.
        corners = np.array([[cols.min() - 1.5, rows.min() - 1.5], [cols.max() + 1.5, rows.min() - 1.5],
                            [cols.max() + 1.5, rows.max() + 1.5], [cols.min() - 1.5, rows.max() + 1.5]])
        frame_corners = to_frame(self.to_canon, corners)
        fx0 = max(x0, int(math.floor(frame_corners[:, 0].min())) - pad)
        fy0 = max(y0, int(math.floor(frame_corners[:, 1].min())) - pad)
        fx1 = min(x0 + w, int(math.ceil(frame_corners[:, 0].max())) + pad + 1)
        fy1 = min(y0 + h, int(math.ceil(frame_corners[:, 1].max())) + pad + 1)
        if fx1 <= fx0 or fy1 <= fy0:
            return out
        # The computed window, padded so the growth sees occluder pixels just outside it.
        wx0, wy0 = fx0 - pad, fy0 - pad
        size = (fx1 - fx0 + 2 * pad, fy1 - fy0 + 2 * pad)
        m = self.to_canon.copy()
        m[:, 2] += m[:, :2] @ np.array([wx0, wy0], np.float64)
        # The mask with its edge repeated one pixel further, so bilinear samples at the crop's border see the edge
        # values; the crop's own outline then cuts it (a pixel whose centre is outside the crop is 0).
        padded = cv2.copyMakeBorder(np.round(self.mask * 255).astype(np.uint8), 1, 1, 1, 1, cv2.BORDER_REPLICATE)
        m_padded = m.copy()
        m_padded[:, 2] += 1.0
        warped = cv2.warpAffine(padded, m_padded, size, flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                                borderMode=cv2.BORDER_CONSTANT, borderValue=(0,))
        outline = to_frame(m, np.array([[-0.5, -0.5], [CANON_W - 0.5, -0.5], [CANON_W - 0.5, CANON_H - 0.5],
                                        [-0.5, CANON_H - 0.5]]))
        inside = np.zeros(size[::-1], np.uint8)
        cv2.fillConvexPoly(inside, np.round(outline * 256).astype(np.int32), (1,), cv2.LINE_8, 8)
        occluder = ((warped >= round(THRESHOLD * 255)) & (inside > 0)).astype(np.uint8)
        if pad and occluder.any():
            # OpenCV's 5x5 distance is within 2 % of the Euclidean one: the threshold is raised by that much so every
            # pixel within grow_px is in (some up to 4 % further are too).
            dist = cv2.distanceTransform(1 - occluder, cv2.DIST_L2, 5)
            occluder = (dist <= grow * DISTANCE_SLACK).astype(np.uint8)
        out[fy0 - y0 : fy1 - y0, fx0 - x0 : fx1 - x0] = occluder[pad : pad + fy1 - fy0, pad : pad + fx1 - fx0]
        return out


def to_frame(to_canon: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Canonical points [N, 2] mapped back to the frame (the inverse similarity)."""
    return np.linalg.solve(to_canon[:, :2], (np.asarray(points, np.float64) - to_canon[:, 2]).T).T


class OcclusionDetector:
    """The occlusion network on ONNX Runtime, CPU. Holds no per-call state: one instance may serve several
    streams (ONNX Runtime sessions may run concurrently)."""

    def __init__(self, model_path: Path = MODEL_PATH, threads: int = 1) -> None:
        """Load the model.

        Args:
            model_path: the occlusion .onnx file.
            threads: ONNX Runtime intra-op threads.

        Raises:
            InternalError: the model file is missing or unreadable (a broken installation).
        """
        self._session = cpu_session(model_path, threads, "occlusion model")

    def measure(self, image: np.ndarray, origin: tuple[int, int], raw: np.ndarray) -> Occlusion:
        """Where something covers this face's mouth.

        Args:
            image: BGR uint8 [H, W, 3] of the frame around the mouth (lips, nose tip and chin), e.g. the
                `mouth_box` of core/lips.py.
            origin: (x, y) of the image's top-left in frame pixels.
            raw: the face mesh [468, 2+] in frame pixels.

        Returns:
            The occluder mask on the canonical crop, its transform, and the share of the lips it covers. An empty
            image (the mouth outside the frame) is reported as fully covered: nothing there may be edited.

        Raises:
            ValueError: the image is not BGR uint8, or the mesh's mouth corners are not finite.
            InternalError: ONNX Runtime failed.
        """
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"expected a BGR uint8 [H, W, 3] image, got {image.dtype} {image.shape}")
        to_canon = canonical_transform(raw)
        if image.shape[0] == 0 or image.shape[1] == 0:
            return Occlusion(np.ones((CANON_H, CANON_W), np.float32), to_canon, 1.0)
        crop = warp_crop(np.ascontiguousarray(image), origin, to_canon)
        try:
            (prob,) = self._session.run([OUTPUT_NAME], {INPUT_NAME: crop[None]})
        except Exception as exc:  # ORT's own exception types; a failure here is ours, not the client's
            raise InternalError(f"occlusion model failed on a {crop.shape} crop: {exc}") from exc
        mask = np.ascontiguousarray(prob[0, 0], np.float32)
        lips = lip_polygon_mask(raw, to_canon)
        share = float((mask[lips] >= COVER_CONFIDENCE).mean()) if lips.any() else float(mask_at(mask, raw, to_canon))
        return Occlusion(mask, to_canon, share)


def mask_at(mask: np.ndarray, raw: np.ndarray, to_canon: np.ndarray) -> float:
    """Share of the outer-lip points whose canonical pixel is surely an occluder (for a lip polygon too thin to
    fill)."""
    lips = np.asarray(raw, np.float64)[list(OUTER_LIPS), :2] @ to_canon[:, :2].T + to_canon[:, 2]
    cols = np.clip(np.round(lips[:, 0]), 0, CANON_W - 1).astype(int)
    rows = np.clip(np.round(lips[:, 1]), 0, CANON_H - 1).astype(int)
    return float((mask[rows, cols] >= COVER_CONFIDENCE).mean())

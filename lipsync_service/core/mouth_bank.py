"""Open-mouth interiors (teeth, tongue, the dark of the mouth) seen earlier in a face's track, re-used where a
re-shaped mouth opens wider than the source frame's.

Stretching a closed mouth open only stretches the line where the lips meet; the video itself usually holds
this person's open mouth, sharp and in the same light. Interiors are stored in a canonical frame (mouth
corners on a fixed line) binned by how open they are, one per bin, as sharp as this face's typical open mouth.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from lipsync_service.core.landmarks import INNER_LIPS
from lipsync_service.core.mouth import OUTER_CORNERS, MouthEdit, delaunay, inner_polygon, piecewise_affine_map

# Canonical mouth: corners at (MARGIN, CANON_H/2) and (MARGIN + CANON_WIDTH, CANON_H/2).
CANON_WIDTH = 128
CANON_MARGIN = 24
CANON_H = 128
# Interiors are binned by inner gap over mouth width; one (the sharpest) is kept per bin.
BIN_SIZE = 0.04
MAX_BINS = 16
# A source interior is worth storing from this gap-over-width up (a visibly open mouth).
MIN_STORED_GAP = 0.10
# Target openings up to this gap-over-width get no interior at all (a slit); from MIN_STORED_GAP on, fully.
SLIT_GAP = 0.05
# The stored interior is blended in as the target opens wider than the source: weight 0 at
# FILL_START x the source gap, 1 at FILL_FULL x.
FILL_START, FILL_FULL = 1.2, 2.0
# A stored interior's darker quarter must be darker than this fraction of the lips around it: a mouth has
# dark gaps between and around the teeth; a misread mesh or lips pressed together do not.
MAX_INTERIOR_BRIGHTNESS = 0.8
# A cavity painted before the face has shown an open mouth: its seam's darkest tenth, darkened this much.
CAVITY_DARKEN = 0.6
# Feather of the interior's edge inside the inner lip line, pixels.
FEATHER_PX = 2.0


@dataclass
class _Interior:
    patch: np.ndarray  # BGR canonical image
    inner: np.ndarray  # [20, 2] inner-lip polygon in canonical pixels
    gap: float  # inner gap over mouth width
    sharpness: float
    triangles: np.ndarray  # [T, 3] Delaunay triangles of `inner`


def _canonical_transform(points: np.ndarray) -> np.ndarray:
    """2x3 similarity mapping frame pixels to canonical pixels (mouth corners onto the canonical line)."""
    a = points[OUTER_CORNERS[0], :2].astype(np.float64)
    b = points[OUTER_CORNERS[1], :2].astype(np.float64)
    scale = CANON_WIDTH / max(float(np.linalg.norm(b - a)), 1e-6)
    angle = math.atan2(b[1] - a[1], b[0] - a[0])
    c, s = math.cos(-angle) * scale, math.sin(-angle) * scale
    rot = np.array([[c, -s], [s, c]])
    shift = np.array([CANON_MARGIN, CANON_H / 2]) - rot @ a
    return np.hstack([rot, shift[:, None]])


def _gap_over_width(polygon: np.ndarray, corners: tuple[np.ndarray, np.ndarray]) -> float:
    upper, lower = polygon[INNER_LIPS.index(13)], polygon[INNER_LIPS.index(14)]
    width = float(np.linalg.norm(corners[1] - corners[0]))
    return float(np.linalg.norm(lower - upper)) / max(width, 1e-6)


class MouthBank:
    """The open-mouth interiors of one face track."""

    def __init__(self) -> None:
        self._bins: dict[int, _Interior] = {}
        self._last: int | None = None
        self._sharpness_sum = 0.0
        self._offered = 0

    def __len__(self) -> int:
        return len(self._bins)

    def offer(self, bgr: np.ndarray, origin: tuple[int, int], points: np.ndarray) -> None:
        """Store this frame's mouth interior if it is open and sharper than the one held for its openness.

        Args:
            bgr: BGR image holding the mouth; origin: its top-left in frame pixels.
            points: the face mesh [468, 2+] in frame pixels (this frame's, unsmoothed is fine).
        """
        to_canon = _canonical_transform(points)
        inner = cv2.transform(points[list(INNER_LIPS), None, :2].astype(np.float64), to_canon)[:, 0]
        # The same mapping for pixels of `bgr`, whose (0, 0) is `origin` in the frame.
        m = to_canon.copy()
        m[:, 2] += m[:, :2] @ np.asarray(origin, np.float64)
        corners = (np.array([CANON_MARGIN, CANON_H / 2]), np.array([CANON_MARGIN + CANON_WIDTH, CANON_H / 2]))
        gap = _gap_over_width(inner, corners)
        if gap < MIN_STORED_GAP:
            return
        key = min(int(gap / BIN_SIZE), MAX_BINS - 1)
        patch = cv2.warpAffine(bgr, m, (CANON_WIDTH + 2 * CANON_MARGIN, CANON_H), flags=cv2.INTER_CUBIC,
                               borderMode=cv2.BORDER_REPLICATE)
        grey = cv2.cvtColor(patch, cv2.COLOR_BGR2GRAY)
        hole = np.zeros(grey.shape, np.uint8)
        # cv2's stub types a colour (Scalar) as a sequence; OpenCV takes a plain number too.
        cv2.fillPoly(hole, [np.round(inner).astype(np.int32)], 1)  # type: ignore[call-overload]
        lips = cv2.dilate(hole, np.ones((9, 9), np.uint8)) - hole
        if hole.sum() < 8 or (float(np.percentile(grey[hole > 0], 25))
                              > MAX_INTERIOR_BRIGHTNESS * float(grey[lips > 0].mean())):
            return  # not the inside of a mouth (a misread mesh, or lips pressed together in a smile)
        lap = cv2.Laplacian(grey, cv2.CV_64F)[hole > 0]
        sharpness = float(lap.var())
        # Keep the interior whose sharpness is closest to this face's typical open mouth: the sharpest one
        # (no motion blur at all) would make the re-shaped mouth crisper than the video around it.
        self._sharpness_sum += sharpness
        self._offered += 1
        typical = self._sharpness_sum / self._offered
        held = self._bins.get(key)
        if held is None or abs(sharpness - typical) < abs(held.sharpness - typical):
            self._bins[key] = _Interior(patch=patch, inner=inner, gap=gap, sharpness=sharpness,
                                        triangles=delaunay(inner))

    def _choose(self, gap: float) -> _Interior | None:
        if not self._bins:
            return None
        # The least open interior at least as open as the target (a smaller one would show lip inside the
        # mouth), else the most open one; keep the previous choice when it is as good, against flicker.
        keys = sorted(self._bins)
        wanted = min(int(gap / BIN_SIZE), MAX_BINS - 1)
        fitting = [k for k in keys if k >= wanted]
        key = fitting[0] if fitting else keys[-1]
        if self._last in self._bins and self._last is not None and abs(self._last - key) <= 1:
            key = self._last
        self._last = key
        return self._bins[key]

    def fill(self, edit: MouthEdit, source_gap_px: float) -> bool:
        """Paint a stored interior into the edit's target mouth opening, in place.

        Args:
            edit: the warped mouth (its patch is changed).
            source_gap_px: the source frame's own inner-lip gap at 13-14, pixels.

        Returns:
            True when an interior was painted.
        """
        polygon = inner_polygon(edit.target)
        corners = (edit.target[OUTER_CORNERS[0]], edit.target[OUTER_CORNERS[1]])
        target_gap_px = float(np.linalg.norm(polygon[INNER_LIPS.index(14)] - polygon[INNER_LIPS.index(13)]))
        if target_gap_px <= 2.0:
            return False
        ratio = target_gap_px / max(source_gap_px, 0.5)
        weight = float(np.clip((ratio - FILL_START) / (FILL_FULL - FILL_START), 0.0, 1.0))
        # A slit stays the stretched seam of the lips: an interior squeezed into it is a speckled line of teeth.
        gap = _gap_over_width(polygon, corners)
        weight *= float(np.clip((gap - SLIT_GAP) / (MIN_STORED_GAP - SLIT_GAP), 0.0, 1.0))
        if weight <= 0.0:
            return False
        interior = self._choose(gap)
        h, w = edit.patch.shape[:2]
        local = polygon - [edit.x, edit.y]
        x0, y0 = np.floor(local.min(0)).astype(int) - 2
        x1, y1 = np.ceil(local.max(0)).astype(int) + 3
        x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
        if x1 - x0 < 3 or y1 - y0 < 3:
            return False
        hole = np.zeros((y1 - y0, x1 - x0), np.float32)
        # cv2's stub types a colour (Scalar) as a sequence; OpenCV takes a plain number too.
        cv2.fillPoly(hole, [np.round(local - [x0, y0]).astype(np.int32)], 1.0)  # type: ignore[call-overload]
        dist = cv2.distanceTransform((hole > 0).astype(np.uint8), cv2.DIST_L2, 3)
        if interior is not None:
            # Backward map from the target opening to the stored one, triangle by triangle through their
            # inner-lip points (triangulated where the stored mouth is open, so none is degenerate there).
            map_x, map_y = piecewise_affine_map(interior.inner, local, interior.triangles, x0, y0, x1 - x0,
                                                y1 - y0)
            # Bicubic, as the lip warp samples (core/mouth.py): teeth and lips resampled alike.
            painted = cv2.remap(interior.patch, map_x, map_y, cv2.INTER_CUBIC, borderMode=cv2.BORDER_REPLICATE)
        else:
            # This face has not opened its mouth yet: a shaded cavity in the darkest colour of its own lip
            # seam, rather than the seam stretched into streaks.
            painted = _cavity(edit.patch[y0:y1, x0:x1], hole > 0, dist)
        a = np.clip(dist / FEATHER_PX, 0.0, 1.0) * weight
        region = edit.patch[y0:y1, x0:x1].astype(np.float32)
        mixed = region + a[..., None] * (painted.astype(np.float32) - region)
        edit.patch[y0:y1, x0:x1] = np.clip(mixed + 0.5, 0, 255).astype(np.uint8)
        return True


def _cavity(region: np.ndarray, inside: np.ndarray, dist: np.ndarray) -> np.ndarray:
    """A mouth opening shaded from the darkest tenth of its own (stretched seam) pixels, darker towards the middle."""
    if not inside.any():
        return region
    dark = np.percentile(region[inside].reshape(-1, 3).astype(np.float32), 10, axis=0) * CAVITY_DARKEN
    depth = np.clip(dist / max(float(dist.max()), 1.0), 0.0, 1.0)[..., None]
    shade = dark * (1.0 - 0.4 * depth)
    return np.clip(shade + 0.5, 0, 255).astype(np.uint8) * np.ones_like(region)

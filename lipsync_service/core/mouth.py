"""Re-shape a mouth at the frame's own resolution: target lip landmarks from a lip shape, the mouth region and
its feathered mask, and a piecewise-affine warp that moves the source's own pixels there.

A lip shape is (opening, width) in the speaker's own standard deviations (docs/models-contract.md#lip-shape).
The speaker's statistics, measured on the source video as it streams, turn it into pixels: opening is the
inner-lip gap (Face Mesh points 13-14) over the face height (10-152), width the mouth-corner distance
(61-291) over the face width (234-454).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

import cv2
import numpy as np

from lipsync_service.core.landmarks import INNER_LIPS, OUTER_LIPS

# Lip points left to right in image space, paired column by column: the inner lower lip point i sits below
# the inner upper point i, and each outer point moves with the inner point of its column.
INNER_UPPER = (191, 80, 81, 82, 13, 312, 311, 310, 415)
INNER_LOWER = (95, 88, 178, 87, 14, 317, 402, 318, 324)
OUTER_UPPER = (185, 40, 39, 37, 0, 267, 269, 270, 409)
OUTER_LOWER = (146, 91, 181, 84, 17, 314, 405, 321, 375)
OUTER_CORNERS = (61, 291)
INNER_CORNERS = (78, 308)
FOREHEAD, CHIN, FACE_LEFT, FACE_RIGHT = 10, 152, 234, 454
UPPER_MID, LOWER_MID = 13, 14
EYE_LEFT, EYE_RIGHT = 33, 263

# Share of an opening change taken by the lower lip (the jaw drops) and the upper lip (it lifts a little).
LOWER_SHARE = 0.85
# Smallest spread (std of the opening over face height) a speaker's mouth is re-shaped with: below it the
# source's mouth is nearly still and its own spread would leave the new mouth nearly still too.
MIN_OPENING_SPREAD = 0.012
# The same for the width (the same share of the prior's spread): a mouth that never changes its width in the source
# still narrows and widens with the speech.
MIN_WIDTH_SPREAD = 0.007
# Shape of the opening along the mouth: gap = target * cos(u * pi / 2) ** power, u from -1 (corner) to 1.
GAP_PROFILE_POWER = 0.7
# Mouth corners follow an opening change this much (they drop slightly with the jaw).
CORNER_DROP = 0.25
# Dilation of the mouth region beyond the lips, as a fraction of the mouth width, and its floor in pixels:
# room for the skin around the lips to stretch; the warp fades to nothing at that distance.
MARGIN_OF_WIDTH = 0.22
MIN_MARGIN_PX = 4.0
# Zero-displacement anchors around the region that pin the warp at its edge.
RING_ANCHORS = 28
# Largest vertical blur (pixels) used to anti-alias a mouth interior squeezed shut.
MAX_CLOSING_BLUR = 3.0
# Triangulation topology is taken with the mouth at least this open (fraction of the mouth width).
TRIANGULATION_GAP = 0.12
# Articulations beyond opening and width (target_lips): a closure presses each lip's outer edge this share of its
# thickness towards the lip line; a tuck closes the gap this much from below, rolls the lower lip in (its outer
# edge rises this share of its thickness) and lifts the upper lip's edge a little; rounding narrows the mouth,
# rounds its opening (a smaller profile power is fuller towards the corners) and pushes the lips out.
CLOSURE_PRESS = 0.2
# A closure weaker than this draws no seam (it would change no pixel by more than a grey level or two).
MIN_SEAL = 0.02
# Pressed lips meet in a line this much darker than the lips and this wide (share of the mouth width) (_seal).
SEAM_DARKEN = 0.35
SEAM_WIDTH = 0.012
TUCK_CLOSE = 0.85
TUCK_ROLL = 0.4
TUCK_LIFT = 0.1
ROUND_NARROW = 0.15
ROUND_PROFILE_POWER = 0.35
ROUND_PUSH = 0.12
# The jaw line from one jaw angle round the chin to the other (Face Mesh oval points 288 ... 152 ... 58), and the
# chin's position in it. The chin moves JAW_SHARE of the lower lip's vertical change; a person opening the mouth
# drops the jaw, so a wide opening inside a fixed chin looks wrong.
JAW_LINE = (288, 397, 365, 379, 378, 400, 377, 152, 148, 176, 149, 150, 136, 172, 58)
JAW_CHIN = 7
JAW_SHARE = 0.7
# The zero-displacement ring lies at least this many times the jaw's move beyond the jaw line (the neck and collar
# take the stretch over a band, not a seam).
JAW_RING = 2.5


@dataclass
class SpeakerStats:
    """Running mean and spread of a speaker's own opening and width ratios, shrunk to priors early on.

    Attributes:
        count: frames observed.
    """

    # Priors from the training clips' Face Mesh measurements (typical talking faces), weighted as if
    # PRIOR_FRAMES frames had shown them, so the first frames of a stream do not map z to extremes.
    PRIOR_OPENING = (0.035, 0.025)
    PRIOR_WIDTH_STD = 0.015
    PRIOR_FRAMES = 25.0
    # From this many frames on, the opening is mapped through the speaker's own distribution (quantiles of the
    # last QUANTILE_WINDOW frames) rather than mean + z * std: a talking mouth is closed in many frames and
    # wide open in few, and a symmetric map would hold it half open far more often than the person does.
    QUANTILE_FRAMES = 50
    QUANTILE_WINDOW = 3000
    count: int = 0
    _sum: np.ndarray = field(default_factory=lambda: np.zeros(2))
    _sq: np.ndarray = field(default_factory=lambda: np.zeros(2))
    _openings: deque[float] = field(default_factory=deque)

    def observe(self, opening: float, width: float) -> None:
        """Add one frame's measured ratios."""
        v = np.array([opening, width], np.float64)
        self._sum += v
        self._sq += v * v
        self.count += 1
        self._openings.append(float(opening))
        if len(self._openings) > self.QUANTILE_WINDOW:
            self._openings.popleft()

    def shape_for(self, z_opening: float, z_width: float) -> tuple[float, float]:
        """The (opening, width) ratios at these z of the speaker's own spread.

        The opening is the quantile Phi(z) of the openings seen, or mean + z * std (with the prior) until enough
        frames were seen; the width is mean + z * std.
        """
        mean, std = self.mean_std()
        width = float(mean[1] + z_width * max(float(std[1]), MIN_WIDTH_SPREAD))
        if self.count >= self.QUANTILE_FRAMES and std[0] >= MIN_OPENING_SPREAD:
            q = 0.5 * (1.0 + math.erf(z_opening / math.sqrt(2.0)))
            return float(np.quantile(np.fromiter(self._openings, np.float64), q)), width
        # A mouth that barely moves in the source (a silent or still face) has no spread of its own to borrow:
        # it articulates with a typical talking spread instead.
        return float(mean[0] + z_opening * max(float(std[0]), MIN_OPENING_SPREAD)), width

    def mean_std(self) -> tuple[np.ndarray, np.ndarray]:
        """(mean, std) of (opening, width), each blended with its prior by the number of frames seen."""
        n, n0 = float(self.count), self.PRIOR_FRAMES
        if n == 0:
            raise ValueError("no frame observed yet")
        mean = self._sum / n
        var = np.maximum(self._sq / n - mean * mean, 0.0)
        prior_mean = np.array([self.PRIOR_OPENING[0], mean[1]])
        prior_var = np.array([self.PRIOR_OPENING[1] ** 2, self.PRIOR_WIDTH_STD**2])
        w = n / (n + n0)
        blended_mean = w * mean + (1 - w) * prior_mean
        blended_var = w * var + (1 - w) * prior_var
        return blended_mean, np.sqrt(np.maximum(blended_var, 1e-8))


@dataclass(frozen=True)
class FaceFrame:
    """A face's orientation and size in one frame, from its landmarks.

    Attributes:
        right: unit vector along the eye line (image left to right of the face).
        down: unit vector perpendicular to it, towards the chin.
        height: forehead (10) to chin (152) distance in pixels.
        width: face-oval width (234 to 454) in pixels.
    """

    right: np.ndarray
    down: np.ndarray
    height: float
    width: float

    @classmethod
    def of(cls, points: np.ndarray) -> FaceFrame:
        """The frame of a [468, 2+] landmark array."""
        p = points[:, :2].astype(np.float64)
        eye = p[EYE_RIGHT] - p[EYE_LEFT]
        angle = math.atan2(eye[1], eye[0])
        right = np.array([math.cos(angle), math.sin(angle)])
        down = np.array([-right[1], right[0]])
        return cls(right=right, down=down, height=float(np.linalg.norm(p[FOREHEAD] - p[CHIN])),
                   width=float(np.linalg.norm(p[FACE_LEFT] - p[FACE_RIGHT])))


def lip_ratios(points: np.ndarray) -> tuple[float, float]:
    """(opening, width) ratios of a face mesh: inner-lip gap over face height, corner distance over face width."""
    p = points[:, :2].astype(np.float64)
    face = FaceFrame.of(points)
    opening = float(np.linalg.norm(p[UPPER_MID] - p[LOWER_MID])) / max(face.height, 1e-6)
    width = float(np.linalg.norm(p[OUTER_CORNERS[0]] - p[OUTER_CORNERS[1]])) / max(face.width, 1e-6)
    return opening, width


def target_lips(points: np.ndarray, opening: float, width: float, *, closure: float = 0.0, tuck: float = 0.0,
                rounding: float = 0.0) -> dict[int, np.ndarray]:
    """Where the lip points (and, when the mouth opens or closes, the jaw line) go for a target shape.

    The lips move as units: each column of the inner lips opens to the target gap shaped by a rounded
    profile (full at the centre, closing towards the corners: the source's own column gaps are landmark
    noise as much as shape, and scaling them amplifies that into a wavy lip line), the lower lip taking
    LOWER_SHARE of the change; outer points follow their column; the width scales every lip point about
    the mouth centre along the eye line. Three articulations come on top (docs/models-contract.md#lip-shape):

    - closure (p, b, m): the lips meet and press: the gap closes and each lip's outer edge moves
      CLOSURE_PRESS of its thickness towards the lip line (pressed lips look thinner);
    - tuck (f, v): the lower lip rises to the upper teeth and rolls in: the gap nearly closes from below and the
      lower lip's outer edge rises TUCK_ROLL of its thickness; the upper lip lifts a little;
    - rounding (oo, w): the mouth narrows by ROUND_NARROW of its width, its opening becomes rounder across the
      columns, and the lips push out (thicker by ROUND_PUSH of their thickness).

    The jaw follows the lower lip: the chin moves JAW_SHARE of the lower lip's vertical change, the jaw line less
    towards its angles (docs/behaviour.md#jaw).

    Args:
        points: the face mesh [468, 2+] in frame pixels the target is built on (smoothed over time, so the
            drawn lips do not jitter).
        opening: target inner-lip gap over face height.
        width: target corner distance over face width.
        closure, tuck, rounding: strengths in [0, 1].

    Returns:
        Landmark index -> target position (x, y) in frame pixels, for every lip point, and for the jaw line's points
        when the jaw moves by at least half a pixel.
    """
    p = points[:, :2].astype(np.float64)
    face = FaceFrame.of(points)
    closure, tuck, rounding = (min(max(float(v), 0.0), 1.0) for v in (closure, tuck, rounding))
    centre = (p[OUTER_CORNERS[0]] + p[OUTER_CORNERS[1]]) / 2
    half = max(float((p[OUTER_CORNERS[1]] - p[OUTER_CORNERS[0]]) @ face.right) / 2, 1.0)
    source_gap = float((p[LOWER_MID] - p[UPPER_MID]) @ face.down)
    target_gap = max(opening, 0.0) * face.height * (1.0 - closure) * (1.0 - TUCK_CLOSE * tuck)
    d_half = (max(width, 0.0) * face.width) / 2 * (1.0 - ROUND_NARROW * rounding) - half
    power = GAP_PROFILE_POWER + (ROUND_PROFILE_POWER - GAP_PROFILE_POWER) * rounding
    # The lower lip's share of the change: a tuck lifts mostly the lower lip.
    lower_share = LOWER_SHARE + (1.0 - LOWER_SHARE) * tuck * 0.5

    out: dict[int, np.ndarray] = {}
    centre_drop = 0.0
    for up_in, low_in, up_out, low_out in zip(INNER_UPPER, INNER_LOWER, OUTER_UPPER, OUTER_LOWER):
        u = float((p[low_in] + p[up_in] - 2 * centre) @ face.right) / (2 * half)
        # Not clamped: where the mesh has the lips crossed, the change uncrosses them (every column ends at
        # exactly its target gap, so the target lip line never folds).
        gap = float((p[low_in] - p[up_in]) @ face.down)
        change = target_gap * math.cos(min(abs(u), 1.0) * math.pi / 2) ** power - gap
        sideways = face.right * (u * d_half)
        lower = face.down * (lower_share * change) + sideways
        upper = -face.down * ((1 - lower_share) * change) + sideways
        # Lip thicknesses of this column (outer edge to inner line), for pressing, rolling and pushing.
        thick_up = max(float((p[up_in] - p[up_out]) @ face.down), 0.0)
        thick_low = max(float((p[low_out] - p[low_in]) @ face.down), 0.0)
        grow = ROUND_PUSH * rounding
        out_up = upper - face.down * (thick_up * (grow - CLOSURE_PRESS * closure - TUCK_LIFT * tuck))
        out_low = lower + face.down * (thick_low * (grow - CLOSURE_PRESS * closure - TUCK_ROLL * tuck))
        out[low_in], out[low_out] = p[low_in] + lower, p[low_out] + out_low
        out[up_in], out[up_out] = p[up_in] + upper, p[up_out] + out_up
        if low_in == LOWER_MID:
            centre_drop = lower_share * change
    drop = face.down * (CORNER_DROP * lower_share * (target_gap - max(source_gap, 0.0)))
    for outer, inner in zip(OUTER_CORNERS, INNER_CORNERS):
        side = 1.0 if float((p[outer] - centre) @ face.right) > 0 else -1.0
        move = face.right * (side * d_half) + drop
        out[outer], out[inner] = p[outer] + move, p[inner] + move
    jaw = JAW_SHARE * centre_drop
    if abs(jaw) >= 0.5:
        for k, landmark in enumerate(JAW_LINE):
            # Full at the chin, nothing at the jaw's angles (the ends of JAW_LINE).
            t = abs(k - JAW_CHIN) / JAW_CHIN
            out[landmark] = p[landmark] + face.down * (jaw * math.cos(t * math.pi / 2) ** 2)
    return out


@dataclass(frozen=True)
class MouthEdit:
    """What re-shaping one mouth writes: a BGR patch and its blend weights, placed at (x, y) in the frame.

    Attributes:
        x, y: top-left of the patch in frame pixels (even, so the chroma planes align).
        patch: BGR uint8 [h, w, 3].
        alpha: float32 [h, w] in [0, 1]; exactly 0 outside the dilated mouth region.
        target: the target lip points (index -> x, y) in frame pixels.
    """

    x: int
    y: int
    patch: np.ndarray
    alpha: np.ndarray
    target: dict[int, np.ndarray]


def _uncrossed(points: np.ndarray) -> np.ndarray:
    """The mesh's x, y with every inner-lip column whose lower point lies above its upper one closed at their
    midpoint (the model reads a closed mouth's lip line a pixel or two either way)."""
    p = points[:, :2].astype(np.float64).copy()
    down = FaceFrame.of(points).down
    for up, low in zip(INNER_UPPER, INNER_LOWER):
        if float((p[low] - p[up]) @ down) < 0:
            p[up] = p[low] = (p[up] + p[low]) / 2
    return p


def _triangles(dst: np.ndarray, idx: list[int]) -> np.ndarray:
    """A triangulation [T, 3] (indices into dst) of the lip points and the ring around them.

    Computed on the target with the mouth held open (inner lower lip pushed down to at least
    TRIANGULATION_GAP of the mouth width), so the lips and the opening between them are triangles of their
    own even where the target closes the mouth (those then shrink to a seam).
    """
    ref = dst.copy()
    pos = {landmark: k for k, landmark in enumerate(idx)}
    width = float(np.linalg.norm(ref[pos[OUTER_CORNERS[1]]] - ref[pos[OUTER_CORNERS[0]]]))
    for up, low in zip(INNER_UPPER, INNER_LOWER):
        gap = ref[pos[low], 1] - ref[pos[up], 1]
        need = TRIANGULATION_GAP * width - gap
        if need > 0:
            ref[pos[low], 1] += need
    return delaunay(ref)


def delaunay(ref: np.ndarray) -> np.ndarray:
    """Delaunay triangles [T, 3] (indices into ref) of a point set; coincident points share one vertex."""
    x0, y0 = ref.min(0) - 2
    x1, y1 = ref.max(0) + 2
    subdiv = cv2.Subdiv2D((int(math.floor(x0)), int(math.floor(y0)),
                           int(math.ceil(x1 - x0)) + 2, int(math.ceil(y1 - y0)) + 2))
    # Points within 1/1000 px of an earlier one are left out: the earlier one stands for them. (A stable sort puts
    # the earliest of equal points first; np.unique(axis=0) does the same at twice the cost.)
    rounded = np.round(ref.astype(np.float64), 3)
    order = np.lexsort((rounded[:, 1], rounded[:, 0]))
    ranked = rounded[order]
    new = np.ones(len(ranked), bool)
    new[1:] = np.any(ranked[1:] != ranked[:-1], axis=1)
    first = np.sort(order[new])
    points = np.ascontiguousarray(ref[first], np.float32)
    subdiv.insert(points)  # type: ignore[call-overload]  # an [N, 2] float32 array is a vector of points to OpenCV
    # Subdiv2D keeps its vertices as float32, so a corner is found by the exact bits of its (x, y) pair.
    # (Matching rounded decimals instead drops every triangle at a point whose float32 value rounds the other
    # way, which left holes in the warp.) Corners that are none of our points are Subdiv2D's outer helpers.
    keys = points.view(np.int64)[:, 0]
    order = np.argsort(keys)
    corners = np.ascontiguousarray(subdiv.getTriangleList(), np.float32).reshape(-1, 2).view(np.int64)[:, 0]
    at = np.clip(np.searchsorted(keys, corners, sorter=order), 0, len(keys) - 1)
    found = keys[order[at]] == corners
    tris = first[order[at]].reshape(-1, 3)
    return tris[found.reshape(-1, 3).all(axis=1)].astype(np.int32)


def piecewise_affine_map(src: np.ndarray, dst: np.ndarray, triangles: np.ndarray, x0: int, y0: int, w: int,
                         h: int) -> tuple[np.ndarray, np.ndarray]:
    """Backward map of a piecewise-affine warp: for each pixel of the box (x0, y0, w, h), where to sample.

    Each target triangle maps affinely onto its source triangle, so the map never overshoots (unlike a
    spline through points that nearly coincide, which rings); pixels outside every triangle map to
    themselves.

    Returns:
        (map_x, map_y) float32 [h, w] in the same coordinates as src and dst.
    """
    ids = np.zeros((h, w), np.int32)
    shift = 4
    # Row t + 1: the affine map of triangle t as (a, b, c, d, e, f): x' = a x + b y + c, y' = d x + e y + f, in the
    # box's own coordinates (x - x0, y - y0) so float32 keeps sub-pixel precision; row 0: the identity.
    coeffs = np.zeros((len(triangles) + 1, 6), np.float64)
    coeffs[:, 0] = coeffs[:, 4] = 1.0
    if len(triangles):
        d = dst[triangles].astype(np.float64) - [x0, y0]  # [T, 3, 2]
        s_ = src[triangles].astype(np.float64) - [x0, y0]
        det_dst, det_src = _cross(d), _cross(s_)
        # Degenerate (closed) target triangles cover no pixel.
        live = np.abs(det_dst) >= 1e-6
        inv = np.where(live, 1.0 / np.where(live, det_dst, 1.0), 0.0)
        # The inverse of [[x0 x1 x2], [y0 y1 y2], [1 1 1]] by cofactors, for every triangle at once.
        (x_0, y_0), (x_1, y_1), (x_2, y_2) = (d[:, k].T for k in range(3))
        cof = np.stack([y_1 - y_2, y_2 - y_0, y_0 - y_1, x_2 - x_1, x_0 - x_2, x_1 - x_0,
                        x_1 * y_2 - x_2 * y_1, x_2 * y_0 - x_0 * y_2, x_0 * y_1 - x_1 * y_0], axis=1).reshape(-1, 3, 3)
        # Source coordinates at the three corners, times the inverse: a, b, c (x') and d, e, f (y').
        for row, axis in ((0, 0), (3, 1)):
            coeffs[1:, row : row + 3] = np.einsum("tk,tjk->tj", s_[:, :, axis], cof) * inv[:, None]
        # A flipped source triangle (the mesh crossed its own points there) would mirror the texture and cut
        # a seam into the lips: it moves by its vertices' mean shift instead.
        flipped = live & (det_src * det_dst <= 0)
        shift_xy = (s_ - d).mean(axis=1)
        coeffs[1:][flipped] = np.stack([np.ones(int(flipped.sum())), np.zeros(int(flipped.sum())),
                                        shift_xy[flipped, 0], np.zeros(int(flipped.sum())),
                                        np.ones(int(flipped.sum())), shift_xy[flipped, 1]], axis=1)
        corners = np.round(d * (1 << shift)).astype(np.int32)
        # A triangle whose corners do not move maps its pixels to themselves, as the background does: it is left
        # out (most of the ring around the mouth; each fill is a Python-level call).
        moved = np.abs(s_ - d).max(axis=(1, 2)) > 0
        for t in np.nonzero(live & moved)[0]:
            cv2.fillConvexPoly(ids, corners[t], (int(t) + 1,), lineType=cv2.LINE_8, shift=shift)
    # One gather of the six coefficients per pixel (half the time of six separate ones).
    per_pixel = np.take(coeffs.astype(np.float32), ids, axis=0)
    lx = np.arange(w, dtype=np.float32)[None, :]
    ly = np.arange(h, dtype=np.float32)[:, None]
    map_x = per_pixel[..., 0] * lx + per_pixel[..., 1] * ly + (per_pixel[..., 2] + np.float32(x0))
    map_y = per_pixel[..., 3] * lx + per_pixel[..., 4] * ly + (per_pixel[..., 5] + np.float32(y0))
    return map_x, map_y


def _cross(tri: np.ndarray) -> np.ndarray:
    """Twice the signed area of each triangle [T, 3, 2] (the determinant of its homogeneous corner matrix)."""
    a, b = tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]
    return a[:, 0] * b[:, 1] - a[:, 1] * b[:, 0]


def mouth_region(source: np.ndarray, target: dict[int, np.ndarray]) -> tuple[np.ndarray, float]:
    """The polygon the edit may touch before dilation (hull of the source and target outer lips, and of the jaw line
    when it moves) and the dilation margin in pixels."""
    src = source[list(OUTER_LIPS), :2].astype(np.float64)
    dst = np.array([target[i] for i in OUTER_LIPS])
    parts = [src, dst]
    mouth_width = float(np.linalg.norm(src[0] - src[OUTER_LIPS.index(OUTER_CORNERS[1])]))
    margin = max(MIN_MARGIN_PX, MARGIN_OF_WIDTH * mouth_width)
    if JAW_LINE[JAW_CHIN] in target:
        jaw = list(JAW_LINE)
        parts += [source[jaw, :2].astype(np.float64), np.array([target[i] for i in jaw])]
        move = float(np.linalg.norm(target[JAW_LINE[JAW_CHIN]] - source[JAW_LINE[JAW_CHIN], :2]))
        margin = max(margin, JAW_RING * move)
    hull = cv2.convexHull(np.vstack(parts).astype(np.float32))[:, 0].astype(np.float64)
    return hull, margin


def _ring(hull: np.ndarray, margin: float) -> np.ndarray:
    centre = hull.mean(0)
    angles = np.linspace(0, 2 * math.pi, RING_ANCHORS, endpoint=False)
    dirs = np.stack([np.cos(angles), np.sin(angles)], 1)
    reach = ((hull - centre) @ dirs.T).max(0)
    return centre + dirs * (reach + margin)[:, None]


def region_alpha(hull: np.ndarray, margin: float, x0: int, y0: int, w: int, h: int) -> np.ndarray:
    """Blend weights on the patch [y0, y0+h) x [x0, x0+w): 1 inside the hull, smoothly to exactly 0 at
    `margin` pixels outside it."""
    inside = np.zeros((h, w), np.uint8)
    # cv2's stub types a colour (Scalar) as a sequence; OpenCV takes a plain number too.
    cv2.fillPoly(inside, [np.round(hull - [x0, y0]).astype(np.int32)], 1)  # type: ignore[call-overload]
    dist = cv2.distanceTransform(1 - inside, cv2.DIST_L2, 5)
    t = np.clip(1.0 - dist / margin, 0.0, 1.0)
    return (t * t * (3.0 - 2.0 * t)).astype(np.float32)


def warp_mouth(bgr: np.ndarray, origin: tuple[int, int], source: np.ndarray, target: dict[int, np.ndarray],
               frame_size: tuple[int, int], seal: float = 0.0) -> MouthEdit | None:
    """Move the source's own pixels so its lips take the target positions.

    Args:
        bgr: BGR uint8 image of a part of the frame that holds the whole dilated mouth region (and some
            border: the warp samples a little outside it).
        origin: frame coordinates (x, y) of bgr's top-left pixel.
        source: the face mesh [468, 2+] in frame pixels as read in this frame (where the lips' pixels are).
        target: target lip positions from `target_lips`.
        frame_size: (width, height) of the frame: the edit stays inside it.
        seal: how strongly the lips are pressed shut (a closure's strength): the seam between them is then drawn as
            a lip line, not as the squeezed teeth of an open source mouth.

    Returns:
        The edit, or None when the region falls outside the frame or the image.
    """
    hull, margin = mouth_region(source, target)
    ring = _ring(hull, margin)
    fw, fh = frame_size
    ox, oy = origin
    x0 = max(int(math.floor(ring[:, 0].min())) // 2 * 2, 0, ox + (-ox % 2))
    y0 = max(int(math.floor(ring[:, 1].min())) // 2 * 2, 0, oy + (-oy % 2))
    x1 = min(int(math.ceil(ring[:, 0].max())) + 2, fw, ox + bgr.shape[1]) // 2 * 2
    y1 = min(int(math.ceil(ring[:, 1].max())) + 2, fh, oy + bgr.shape[0]) // 2 * 2
    if x1 - x0 < 4 or y1 - y0 < 4:
        return None
    idx = list(target)
    src = np.vstack([_uncrossed(source)[idx], ring])
    dst = np.vstack([np.array([target[i] for i in idx]), ring])
    map_x, map_y = piecewise_affine_map(src, dst, _triangles(dst, idx), x0, y0, x1 - x0, y1 - y0)
    # Bicubic: bilinear sampling at sub-pixel offsets low-passes every re-shaped lip (lip sharpness 0.55-0.84 of
    # the input on the eval clips once no triangle was left unwarped); bicubic keeps 0.79-1.11, with no halo
    # at 3x zoom.
    map_x -= ox
    map_y -= oy
    patch = cv2.remap(bgr, map_x, map_y, cv2.INTER_CUBIC, borderMode=cv2.BORDER_REPLICATE)
    _antialias_closing(patch, bgr, map_x, map_y, source, target, (x0, y0))
    if seal >= MIN_SEAL:
        _seal(patch, bgr, map_x, map_y, source, target, origin, (x0, y0), seal)
    alpha = region_alpha(hull, margin, x0, y0, x1 - x0, y1 - y0)
    return MouthEdit(x=x0, y=y0, patch=patch, alpha=alpha, target=target)


def _antialias_closing(patch: np.ndarray, bgr: np.ndarray, map_x: np.ndarray, map_y: np.ndarray,
                       source: np.ndarray, target: dict[int, np.ndarray], corner: tuple[int, int]) -> None:
    """Where the warp squeezes an open mouth shut, sample the squeezed interior from a blurred source.

    Squeezing the teeth and the dark of the mouth k times into a narrower gap without a low-pass filter
    aliases them into a hard speckled line, crisper than any real lip seam; the blur is the usual
    anti-aliasing sigma for a k-fold downscale, applied along the mouth's vertical only.
    """
    face = FaceFrame.of(source)
    src_gap = float((source[LOWER_MID, :2] - source[UPPER_MID, :2]) @ face.down)
    tgt_gap = float((target[LOWER_MID] - target[UPPER_MID]) @ face.down)
    k = src_gap / max(tgt_gap, 0.5)
    if src_gap < 2.0 or k < 1.25:
        return
    sigma = min(0.5 * math.sqrt(k * k - 1.0), MAX_CLOSING_BLUR)
    soft = cv2.remap(cv2.GaussianBlur(bgr, (0, 0), sigmaX=0.3, sigmaY=sigma), map_x, map_y, cv2.INTER_LINEAR,
                     borderMode=cv2.BORDER_REPLICATE)
    # The squeezed band: the target opening widened by the source gap's reach on either side.
    inner = np.zeros(patch.shape[:2], np.uint8)
    shifted: np.ndarray = inner_polygon(target) - np.asarray(corner, np.float64)
    poly = np.rint(shifted).astype(np.int32)
    cv2.fillPoly(inner, [poly], (1,))
    reach = max(1, int(round(src_gap / 2)))
    band = cv2.dilate(inner, np.ones((2 * reach + 1, 3), np.uint8)).astype(np.float32)
    weight = cv2.GaussianBlur(band, (0, 0), 1.0)[..., None]
    patch[...] = np.clip(patch + weight * (soft.astype(np.float32) - patch) + 0.5, 0, 255).astype(np.uint8)


def _seal(patch: np.ndarray, bgr: np.ndarray, map_x: np.ndarray, map_y: np.ndarray, source: np.ndarray,
          target: dict[int, np.ndarray], origin: tuple[int, int], corner: tuple[int, int], strength: float) -> None:
    """Draw pressed lips' seam: what the warp squeezed in from inside the source's open mouth (teeth, the dark of
    the mouth, the shadowed inner edge of the lips) is filled from the lips around it, and a thin line a little
    darker than the lips is drawn where they meet: a closed mouth shows a lip line, never a line of teeth."""
    interior = np.zeros(bgr.shape[:2], np.uint8)
    poly = np.rint(source[list(INNER_LIPS), :2] - np.asarray(origin, np.float64)).astype(np.int32)
    cv2.fillPoly(interior, [poly], (1,))
    if not interior.any():
        return
    grown = np.asarray(cv2.dilate(interior, np.ones((5, 5), np.uint8)), np.uint8)
    # Where each patch pixel sampled from: inside the (grown) source opening or not.
    from_inside = np.asarray(cv2.remap(grown.astype(np.float32), map_x, map_y, cv2.INTER_LINEAR,
                                       borderMode=cv2.BORDER_CONSTANT, borderValue=(0.0,)), np.float32)
    band = (from_inside > 0.1).astype(np.uint8)
    if not band.any():
        return
    # Only around the band: inpainting the whole (jaw-sized) patch cost several times more for the same pixels.
    ys, xs = np.nonzero(band)
    pad = 5
    y0, y1 = max(0, int(ys.min()) - pad), min(band.shape[0], int(ys.max()) + pad + 1)
    x0, x1 = max(0, int(xs.min()) - pad), min(band.shape[1], int(xs.max()) + pad + 1)
    filled = patch.copy()
    filled[y0:y1, x0:x1] = cv2.inpaint(np.ascontiguousarray(patch[y0:y1, x0:x1]),
                                       np.ascontiguousarray(band[y0:y1, x0:x1]), 3, cv2.INPAINT_TELEA)
    weight = strength * np.clip(2.0 * cv2.GaussianBlur(from_inside, (0, 0), 0.7), 0.0, 1.0)[..., None]
    mixed = patch + weight * (filled.astype(np.float32) - patch)
    # The line where the lips meet, along the target's inner lip line, in the lips' own colour darkened.
    lips = np.zeros(bgr.shape[:2], np.uint8)
    cv2.fillPoly(lips, [np.rint(source[list(OUTER_LIPS), :2] - np.asarray(origin, np.float64)).astype(np.int32)], (1,))
    lip_pixels = (lips > 0) & (grown == 0)
    if int(lip_pixels.sum()) >= 8:
        colour = np.median(bgr[lip_pixels].reshape(-1, 3).astype(np.float32), axis=0) * (1.0 - SEAM_DARKEN)
        ends = (INNER_CORNERS[0],) + INNER_UPPER + (INNER_CORNERS[1],)
        line: np.ndarray = np.array([target[i] for i in ends]) - np.asarray(corner, np.float64)
        width = float(np.linalg.norm(target[OUTER_CORNERS[1]] - target[OUTER_CORNERS[0]]))
        mask = np.zeros(patch.shape[:2], np.float32)
        cv2.polylines(mask, [np.rint(line * 4).astype(np.int32)], False, (1.0,), max(1, round(SEAM_WIDTH * width)),
                      cv2.LINE_AA, shift=2)
        mixed += (strength * mask)[..., None] * (colour[None, None, :] - mixed)
    patch[...] = np.clip(mixed + 0.5, 0, 255).astype(np.uint8)


def inner_polygon(target: dict[int, np.ndarray]) -> np.ndarray:
    """The target inner-lip polygon [20, 2] (the mouth opening), in frame pixels."""
    return np.array([target[i] for i in INNER_LIPS])

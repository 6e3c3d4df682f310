"""Blend edited pixels back into yuv420p frames through feathered masks (the mouth region, or the fallback
lower-face ellipse).

Works on the Y, U and V planes directly: only the crop region is converted, and a sample is written only
where the mask is non-zero, so every pixel outside the mask keeps its decoded value bit for bit.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import av
import cv2
import numpy as np

from lipsync_service.core.crops import CropRegion, bgr_to_i420, plane_arrays

# Blend ellipse in crop coordinates (fractions of the crop side): the mouth, lips, lower cheeks and chin.
MASK_CENTER = (0.5, 0.70)
MASK_RADII = (0.34, 0.26)
# Fraction of the radius over which the mask fades out, and the rows where it fades in below the
# model's mask line (rows above S/2 are never generated, so they are never written).
MASK_FEATHER = 0.4
MASK_TOP = 0.5
MASK_TOP_FEATHER = 0.07
# Colour matching may scale contrast only this much either way (a dark open mouth must not be brightened).
MAX_GAIN = 1.25


def _smoothstep(t: np.ndarray) -> np.ndarray:
    t = np.clip(t, 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


@lru_cache(maxsize=32)
def blend_mask(side: int) -> np.ndarray:
    """Feathered lower-face mask for a crop of side x side pixels: float32 in [0, 1], exactly 0 outside."""
    coords = (np.arange(side, dtype=np.float64) + 0.5) / side
    yy, xx = np.meshgrid(coords, coords, indexing="ij")
    r = np.sqrt(((xx - MASK_CENTER[0]) / MASK_RADII[0]) ** 2 + ((yy - MASK_CENTER[1]) / MASK_RADII[1]) ** 2)
    mask = _smoothstep((1.0 - r) / MASK_FEATHER) * _smoothstep((yy - MASK_TOP) / MASK_TOP_FEATHER)
    mask = mask.astype(np.float32)
    mask.flags.writeable = False
    return mask


def copy_frame(frame: av.VideoFrame) -> av.VideoFrame:
    """A new yuv420p frame with the same pixels and timing (decoded frames may be shared with the decoder)."""
    out = av.VideoFrame(frame.width, frame.height, "yuv420p")
    for src, dst in zip(plane_arrays(frame), plane_arrays(out)):
        dst[...] = src
    out.pts = frame.pts
    if frame.time_base is not None:
        out.time_base = frame.time_base
    for attr in ("color_range", "colorspace"):
        try:
            setattr(out, attr, getattr(frame, attr))
        except (AttributeError, TypeError, ValueError):
            pass  # not settable in this PyAV version; the encoder's settings decide
    return out


def _match_colour(gen: np.ndarray, orig: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """gen with its weighted mean/std moved to orig's (same weights: the feather ring, skin on both)."""
    total = float(weight.sum())
    if total < 1.0:
        return gen
    g = gen.astype(np.float32)
    o = orig.astype(np.float32)
    mg = float((g * weight).sum() / total)
    mo = float((o * weight).sum() / total)
    sg = float(np.sqrt(((g - mg) ** 2 * weight).sum() / total))
    so = float(np.sqrt(((o - mo) ** 2 * weight).sum() / total))
    gain = 1.0 if sg < 1e-3 else float(np.clip(so / sg, 1 / MAX_GAIN, MAX_GAIN))
    return (g - mg) * gain + mo


def _blend_plane(dst: np.ndarray, gen: np.ndarray, mask: np.ndarray, colour_match: bool) -> None:
    """dst += mask * (gen - dst), written only where mask > 0."""
    ring = mask * (1.0 - mask) * 4.0
    src = _match_colour(gen, dst, ring) if colour_match else gen.astype(np.float32)
    orig = dst.astype(np.float32)
    mixed = np.clip(orig + mask * (src - orig) + 0.5, 0, 255).astype(np.uint8)
    inside = mask > 0
    dst[inside] = mixed[inside]


@dataclass(frozen=True)
class Paste:
    """Where one blend wrote into a frame: weights `alpha` [h, w] with top-left (x, y), both even.

    A luma sample is written only where alpha > 0, a chroma sample only where its 2x2 luma block has some.
    """

    x: int
    y: int
    alpha: np.ndarray


def paste_patch(frame: av.VideoFrame, x: int, y: int, patch_bgr: np.ndarray, alpha: np.ndarray,
                colour_match: bool = False) -> Paste | None:
    """Blend a BGR patch into a writable yuv420p frame in place, weighted by alpha.

    Args:
        frame: the output frame (a copy of the decoded one: see copy_frame).
        x, y: frame position of the patch's top-left pixel (may lie partly outside the frame).
        patch_bgr: BGR uint8 [h, w, 3].
        alpha: float32 [h, w] in [0, 1]; samples where it is 0 keep their decoded values bit for bit.
        colour_match: move the patch's mean and contrast to the original's around the feathered edge.

    Returns:
        What was written (clipped to the frame's even area), or None when nothing was.
    """
    h, w = alpha.shape
    x0, y0 = max(x, 0) + (max(x, 0) % 2), max(y, 0) + (max(y, 0) % 2)
    x1, y1 = min(x + w, frame.width // 2 * 2) // 2 * 2, min(y + h, frame.height // 2 * 2) // 2 * 2
    if x1 <= x0 or y1 <= y0:
        return None
    a = alpha[y0 - y : y1 - y, x0 - x : x1 - x]
    rows, cols = np.nonzero(a.max(axis=1) > 0)[0], np.nonzero(a.max(axis=0) > 0)[0]
    if rows.size == 0:
        return None
    # Work only on the even-aligned box of the non-zero weights.
    x0, x1 = x0 + int(cols[0]) // 2 * 2, x0 + min((int(cols[-1]) + 2) // 2 * 2, x1 - x0)
    y0, y1 = y0 + int(rows[0]) // 2 * 2, y0 + min((int(rows[-1]) + 2) // 2 * 2, y1 - y0)
    a = np.ascontiguousarray(alpha[y0 - y : y1 - y, x0 - x : x1 - x], dtype=np.float32)
    gy, gu, gv = bgr_to_i420(np.ascontiguousarray(patch_bgr[y0 - y : y1 - y, x0 - x : x1 - x]))
    py, pu, pv = plane_arrays(frame)
    _blend_plane(py[y0:y1, x0:x1], gy, a, colour_match)
    # Area average keeps exact zeros where all four luma samples are outside the mask.
    ca = cv2.resize(a, ((x1 - x0) // 2, (y1 - y0) // 2), interpolation=cv2.INTER_AREA)
    _blend_plane(pu[y0 // 2 : y1 // 2, x0 // 2 : x1 // 2], gu, ca, colour_match)
    _blend_plane(pv[y0 // 2 : y1 // 2, x0 // 2 : x1 // 2], gv, ca, colour_match)
    return Paste(x=x0, y=y0, alpha=a)


def paste_face(frame: av.VideoFrame, region: CropRegion, generated_bgr: np.ndarray, colour_match: bool = True,
               alpha: np.ndarray | None = None) -> Paste | None:
    """Blend a generated crop into a writable yuv420p frame in place.

    Args:
        frame: the output frame (a copy of the decoded one: see copy_frame).
        region: the crop region the generator's input came from.
        generated_bgr: BGR uint8 [S, S, 3] generator output for that region.
        colour_match: match the generated region's colour to the original skin around it.
        alpha: blend weights over the region [side, side] (e.g. the mouth region from landmarks); the
            fixed lower-face ellipse (blend_mask) when None.

    Returns:
        What was written, or None when nothing was.
    """
    side = region.side
    weights = blend_mask(side) if alpha is None else alpha
    interp = cv2.INTER_CUBIC if side > generated_bgr.shape[0] else cv2.INTER_AREA
    gen = cv2.resize(generated_bgr, (side, side), interpolation=interp)
    return paste_patch(frame, region.x, region.y, gen, weights, colour_match)


def write_support(frame_width: int, frame_height: int, pastes: list[Paste]) -> tuple[np.ndarray, np.ndarray]:
    """Boolean maps of the luma and chroma samples these pastes may have written (for checks)."""
    luma = np.zeros((frame_height, frame_width), bool)
    chroma = np.zeros(((frame_height + 1) // 2, (frame_width + 1) // 2), bool)
    for paste in pastes:
        h, w = paste.alpha.shape
        luma[paste.y : paste.y + h, paste.x : paste.x + w] |= paste.alpha > 0
        ca = cv2.resize(paste.alpha, (w // 2, h // 2), interpolation=cv2.INTER_AREA)
        chroma[paste.y // 2 : paste.y // 2 + h // 2, paste.x // 2 : paste.x // 2 + w // 2] |= ca > 0
    return luma, chroma

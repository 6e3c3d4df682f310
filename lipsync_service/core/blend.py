"""Blend generated faces back into yuv420p frames through a feathered lower-face mask, colour-matched.

Works on the Y, U and V planes directly: only the crop region is converted, and a sample is written only
where the mask is non-zero, so every pixel outside the mask keeps its decoded value bit for bit.
"""

from __future__ import annotations

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


@lru_cache(maxsize=32)
def _chroma_mask(side: int) -> np.ndarray:
    # Area average keeps exact zeros where all four luma samples are outside the mask.
    m = cv2.resize(blend_mask(side), (side // 2, side // 2), interpolation=cv2.INTER_AREA)
    m.flags.writeable = False
    return m


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


@lru_cache(maxsize=32)
def _mask_bounds(side: int) -> tuple[int, int, int, int]:
    """Even-aligned (y0, y1, x0, x1) of the mask's non-zero samples in a crop of this side."""
    rows = np.nonzero(blend_mask(side).max(axis=1) > 0)[0]
    cols = np.nonzero(blend_mask(side).max(axis=0) > 0)[0]
    if rows.size == 0:
        return 0, 0, 0, 0
    return (int(rows[0]) // 2 * 2, min(side, (int(rows[-1]) + 2) // 2 * 2),
            int(cols[0]) // 2 * 2, min(side, (int(cols[-1]) + 2) // 2 * 2))


def paste_face(frame: av.VideoFrame, region: CropRegion, generated_bgr: np.ndarray, colour_match: bool = True) -> None:
    """Blend a generated crop into a writable yuv420p frame in place.

    Args:
        frame: the output frame (a copy of the decoded one: see copy_frame).
        region: the crop region the generator's input came from.
        generated_bgr: BGR uint8 [S, S, 3] generator output for that region.
        colour_match: match the generated region's colour to the original skin around it.
    """
    side = region.side
    x0, y0, x1, y1 = region.clipped(frame.width, frame.height)
    my0, my1, mx0, mx1 = _mask_bounds(side)
    # Work only where the mask is non-zero and the crop is inside the frame (crop coordinates, even).
    ax0, ay0 = max(mx0, x0 - region.x), max(my0, y0 - region.y)
    ax1, ay1 = min(mx1, x1 - region.x), min(my1, y1 - region.y)
    if ax1 <= ax0 or ay1 <= ay0:
        return
    interp = cv2.INTER_CUBIC if side > generated_bgr.shape[0] else cv2.INTER_AREA
    gen = cv2.resize(generated_bgr, (side, side), interpolation=interp)[ay0:ay1, ax0:ax1]
    gy, gu, gv = bgr_to_i420(np.ascontiguousarray(gen))
    py, pu, pv = plane_arrays(frame)
    fx, fy = region.x + ax0, region.y + ay0
    w, h = ax1 - ax0, ay1 - ay0
    _blend_plane(py[fy : fy + h, fx : fx + w], gy, blend_mask(side)[ay0:ay1, ax0:ax1], colour_match)
    cmask = _chroma_mask(side)[ay0 // 2 : ay1 // 2, ax0 // 2 : ax1 // 2]
    _blend_plane(pu[fy // 2 : (fy + h) // 2, fx // 2 : (fx + w) // 2], gu, cmask, colour_match)
    _blend_plane(pv[fy // 2 : (fy + h) // 2, fx // 2 : (fx + w) // 2], gv, cmask, colour_match)


def mask_support(frame_width: int, frame_height: int, regions: list[CropRegion]) -> tuple[np.ndarray, np.ndarray]:
    """Boolean maps of the luma and chroma samples paste_face may write for these regions (for checks)."""
    luma = np.zeros((frame_height, frame_width), bool)
    chroma = np.zeros(((frame_height + 1) // 2, (frame_width + 1) // 2), bool)
    for region in regions:
        x0, y0, x1, y1 = region.clipped(frame_width, frame_height)
        if x1 <= x0 or y1 <= y0:
            continue
        ox, oy = x0 - region.x, y0 - region.y
        luma[y0:y1, x0:x1] |= blend_mask(region.side)[oy : oy + y1 - y0, ox : ox + x1 - x0] > 0
        cm = _chroma_mask(region.side)[oy // 2 : oy // 2 + (y1 - y0) // 2, ox // 2 : ox // 2 + (x1 - x0) // 2]
        chroma[y0 // 2 : y1 // 2, x0 // 2 : x1 // 2] |= cm > 0
    return luma, chroma

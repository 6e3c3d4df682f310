"""Face crops for the generator: square crop boxes, crop extraction from yuv420p planes, masked model inputs.

The crop convention (shared with the training data builder, so a model sees at serving time what it saw
in training): a square centred on the detector's face box, `CROP_SCALE` times the box's larger side,
shifted down by `CROP_SHIFT` of the box height so the chin stays inside. On that square the generator's
input masks rows S/2..S-1 (docs/models-contract.md#generator-contract, #face-crops).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import av
import cv2
import numpy as np

# Side of the square crop as a multiple of the face box's larger side, and its downward shift as a
# fraction of the box height. MTCNN boxes run from the brows to the chin; 1.3x leaves room for an open
# jaw and puts the mouth at about 0.7 of the crop height, inside the masked lower half.
CROP_SCALE = 1.3
CROP_SHIFT = 0.05


def plane_arrays(frame: av.VideoFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Y, U, V of a yuv420p frame as uint8 views (no copy; writing to them writes the frame)."""
    if frame.format.name != "yuv420p":
        raise ValueError(f"expected a yuv420p frame, got {frame.format.name}")
    out = []
    for plane in frame.planes:
        # numpy 1.x's stub accepts only concrete buffer types; a PyAV plane exports the buffer protocol.
        arr = np.frombuffer(plane, np.uint8).reshape(plane.height, plane.line_size)  # type: ignore[call-overload]
        out.append(arr[:, : plane.width])
    return out[0], out[1], out[2]


@dataclass(frozen=True)
class SquareBox:
    """A square in frame pixels, as floats (the tracker smooths these).

    Attributes:
        cx, cy: centre.
        side: side length.
    """

    cx: float
    cy: float
    side: float

    @classmethod
    def around_face(cls, box: Sequence[float], scale: float = CROP_SCALE, shift: float = CROP_SHIFT) -> SquareBox:
        """The crop square for a face box (x1, y1, x2, y2)."""
        x1, y1, x2, y2 = (float(v) for v in box[:4])
        w, h = x2 - x1, y2 - y1
        return cls(cx=(x1 + x2) / 2, cy=(y1 + y2) / 2 + shift * h, side=scale * max(w, h))

    def pixel_region(self) -> CropRegion:
        """The integer, even-aligned square this box covers (may extend past the frame)."""
        side = max(4, int(round(self.side / 2)) * 2)
        x = int(round((self.cx - side / 2) / 2)) * 2
        y = int(round((self.cy - side / 2) / 2)) * 2
        return CropRegion(x=x, y=y, side=side)


@dataclass(frozen=True)
class CropRegion:
    """An even-aligned integer square in frame pixels: top-left (x, y), side length.

    Even alignment keeps the half-resolution chroma planes aligned with the luma region, so the
    blended region maps exactly onto whole U/V samples.
    """

    x: int
    y: int
    side: int

    def clipped(self, width: int, height: int) -> tuple[int, int, int, int]:
        """(x0, y0, x1, y1) of the part inside the frame's even-sized area (may be empty)."""
        w2, h2 = width // 2 * 2, height // 2 * 2
        return max(self.x, 0), max(self.y, 0), min(self.x + self.side, w2), min(self.y + self.side, h2)


def i420_to_bgr(y: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """BGR uint8 [H, W, 3] from even-sized Y [H, W] and U, V [H/2, W/2] (BT.601 video range, as OpenCV)."""
    h, w = y.shape
    buf = np.empty((h * 3 // 2, w), np.uint8)
    buf[:h] = y
    flat = buf[h:].reshape(-1)
    q = (h // 2) * (w // 2)
    flat[:q] = u.reshape(-1)
    flat[q:] = v.reshape(-1)
    return cv2.cvtColor(buf, cv2.COLOR_YUV2BGR_I420)


def bgr_to_i420(bgr: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Y [H, W], U, V [H/2, W/2] uint8 from an even-sized BGR image (inverse of i420_to_bgr)."""
    h, w = bgr.shape[:2]
    buf = cv2.cvtColor(bgr, cv2.COLOR_BGR2YUV_I420)
    flat = buf[h:].reshape(-1)
    q = (h // 2) * (w // 2)
    return buf[:h], flat[:q].reshape(h // 2, w // 2), flat[q:].reshape(h // 2, w // 2)


def extract_bgr(frame: av.VideoFrame, region: CropRegion) -> np.ndarray:
    """The crop region of a yuv420p frame as BGR uint8 [side, side, 3].

    Only the region is converted. Parts outside the frame repeat the nearest edge pixels, so a face at
    the border still gives the model a full square.
    """
    y, u, v = plane_arrays(frame)
    x0, y0, x1, y1 = region.clipped(frame.width, frame.height)
    if x1 <= x0 or y1 <= y0:
        return np.zeros((region.side, region.side, 3), np.uint8)
    bgr = i420_to_bgr(y[y0:y1, x0:x1], u[y0 // 2 : y1 // 2, x0 // 2 : x1 // 2], v[y0 // 2 : y1 // 2, x0 // 2 : x1 // 2])
    pads = (y0 - region.y, region.y + region.side - y1, x0 - region.x, region.x + region.side - x1)
    if any(pads):
        bgr = cv2.copyMakeBorder(bgr, *pads, borderType=cv2.BORDER_REPLICATE)
    return bgr


def extract_bgr_scaled(frame: av.VideoFrame, region: CropRegion, side: int) -> np.ndarray:
    """The crop region of a yuv420p frame as BGR uint8 [side, side, 3], scaled down (area filter) before the colour
    conversion; `side` >= region.side gives `extract_bgr`'s result. Parts outside the frame repeat the edge pixels.

    Converting a 4K face's surroundings at full size only to shrink them for a 192-pixel model input costs tens of
    milliseconds; shrinking the planes first costs a fraction of that and filters better than the model's own
    linear resampling.
    """
    if side >= region.side:
        return extract_bgr(frame, region)
    y, u, v = plane_arrays(frame)
    x0, y0, x1, y1 = region.clipped(frame.width, frame.height)
    scale = side / region.side
    out = np.zeros((side, side, 3), np.uint8)
    if x1 <= x0 or y1 <= y0:
        return out
    # Even target sizes, so the half-size chroma planes stay aligned with the luma.
    w = max(2, int(round((x1 - x0) * scale / 2)) * 2)
    h = max(2, int(round((y1 - y0) * scale / 2)) * 2)
    planes = [cv2.resize(y[y0:y1, x0:x1], (w, h), interpolation=cv2.INTER_AREA)]
    for c in (u, v):
        sub = c[y0 // 2 : y1 // 2, x0 // 2 : x1 // 2]
        planes.append(cv2.resize(sub, (w // 2, h // 2), interpolation=cv2.INTER_AREA))
    bgr = i420_to_bgr(*planes)
    top, left = int(round((y0 - region.y) * scale)), int(round((x0 - region.x) * scale))
    bottom, right = max(0, side - top - h), max(0, side - left - w)
    bgr = cv2.copyMakeBorder(bgr, top, bottom, left, right, borderType=cv2.BORDER_REPLICATE)
    return np.ascontiguousarray(bgr[:side, :side])


def extract_box_bgr(frame: av.VideoFrame, x0: int, y0: int, x1: int, y1: int) -> tuple[np.ndarray, tuple[int, int]]:
    """BGR uint8 of the frame's pixels in [x0, x1) x [y0, y1), clipped to the frame's even-sized area and even-aligned.

    Returns:
        (image, (x, y)): the pixels and the frame position of their top-left corner.
    """
    w2, h2 = frame.width // 2 * 2, frame.height // 2 * 2
    x0, y0 = min(max(0, x0 // 2 * 2), w2), min(max(0, y0 // 2 * 2), h2)
    x1, y1 = max(x0, min(w2, (x1 + 1) // 2 * 2)), max(y0, min(h2, (y1 + 1) // 2 * 2))
    if x1 - x0 < 2 or y1 - y0 < 2:
        return np.zeros((0, 0, 3), np.uint8), (x0, y0)
    y, u, v = plane_arrays(frame)
    bgr = i420_to_bgr(y[y0:y1, x0:x1], u[y0 // 2 : y1 // 2, x0 // 2 : x1 // 2], v[y0 // 2 : y1 // 2, x0 // 2 : x1 // 2])
    return bgr, (x0, y0)


def crop_image(img: np.ndarray, region: CropRegion) -> np.ndarray:
    """The crop region of an HxWx3 image (e.g. BGR frames in a training set), edge-replicated outside it.

    The numpy counterpart of extract_bgr for data that is not a yuv420p frame.
    """
    h, w = img.shape[:2]
    x0, y0 = max(region.x, 0), max(region.y, 0)
    x1, y1 = min(region.x + region.side, w), min(region.y + region.side, h)
    if x1 <= x0 or y1 <= y0:
        return np.zeros((region.side, region.side) + img.shape[2:], img.dtype)
    pads = (y0 - region.y, region.y + region.side - y1, x0 - region.x, region.x + region.side - x1)
    out = img[y0:y1, x0:x1]
    return cv2.copyMakeBorder(out, *pads, borderType=cv2.BORDER_REPLICATE) if any(pads) else out.copy()


def resize_square(img: np.ndarray, size: int) -> np.ndarray:
    """Resize a square image to size x size (area filter when shrinking, cubic when enlarging)."""
    if img.shape[0] == size:
        return img
    interp = cv2.INTER_AREA if img.shape[0] > size else cv2.INTER_CUBIC
    return cv2.resize(img, (size, size), interpolation=interp)


def model_face_input(crops: Sequence[np.ndarray], references: Sequence[np.ndarray] | None = None,
                     channel_order: str = "bgr") -> np.ndarray:
    """The generator's face tensor from model-sized crops.

    Args:
        crops: BGR uint8 [S, S, 3] target crops.
        references: BGR uint8 [S, S, 3] reference crops; at inference the same frames, unmasked
            (defaults to crops).
        channel_order: the model's channel order, "bgr" or "rgb".

    Returns:
        float32 [B, 6, S, S] in [0, 1]: the target with rows S/2.. zeroed, then the reference.
    """
    refs = crops if references is None else references
    target = np.stack(crops).astype(np.float32) * (1.0 / 255.0)
    ref = np.stack(refs).astype(np.float32) * (1.0 / 255.0)
    if channel_order == "rgb":
        target, ref = target[..., ::-1], ref[..., ::-1]
    size = target.shape[1]
    target[:, size // 2 :] = 0.0
    out = np.concatenate([target, ref], axis=3)
    return np.ascontiguousarray(out.transpose(0, 3, 1, 2))


def model_output_to_bgr(output: np.ndarray, channel_order: str = "bgr") -> list[np.ndarray]:
    """Generator output float32 [B, 3, S, S] in [0, 1] -> BGR uint8 [S, S, 3] images."""
    img = np.clip(output.transpose(0, 2, 3, 1) * 255.0 + 0.5, 0, 255).astype(np.uint8)
    if channel_order == "rgb":
        img = img[..., ::-1]
    return [np.ascontiguousarray(i) for i in img]


def batched(items: Sequence, size: int) -> Iterator[Sequence]:
    """Consecutive slices of at most size items."""
    step = max(1, int(size))
    for k in range(0, len(items), step):
        yield items[k : k + step]

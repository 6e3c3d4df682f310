"""Face detection: MTCNN (P-Net, R-Net, O-Net) on ONNX Runtime, run on a downscaled copy of the frame.

Why MTCNN from facenet-pytorch. The detector's weights must come inside a registry package, nothing may be
downloaded at run time, and it must run through ONNX Runtime. Candidates checked:
- facenet-pytorch 2.6.0 ships MTCNN's three small networks in its wheel (facenet_pytorch/data/*.pt, 2 MB)
  under the MIT licence (LICENSE.md in the wheel, (c) 2019 Timothy Esler; the weights were ported from
  David Sandberg's MIT-licensed facenet port of the original MTCNN). tools/export_mtcnn_onnx.py converts
  them to ONNX once (torch as a build step); the three ONNX files (2 MB) are committed under
  core/assets/mtcnn with that licence notice. It gives boxes and five landmarks (eyes, nose, mouth corners).
  facenet-pytorch itself is not a dependency (it pins torch<2.3).
- mediapipe 0.10.x (BlazeFace, Face Mesh) pins protobuf<5, which our gRPC/Triton stack cannot use.
- OpenCV's FaceDetectorYN needs a YuNet ONNX file that no PyPI package in our index ships;
  mtcnn-onnx-simple ships code only (no weights).
- OpenCV's Haar cascades (cv2.data) ship with opencv: frontal faces only, no landmarks, slower here.
Measured on this machine (2 CPU cores shared with other jobs, so times vary about 2x with load), every
frame of each clip, full-frame search with the frame's shorter side scaled to 320 px:
talking_1/2/3.mp4 135/135, 125/125, 125/125 frames with a face (100 %), 11-16 ms per frame quiet
(23-25 ms under load); face_static_720p 240/240 (23 ms quiet); talking_long_silent 550/550 (25 ms).
OpenCV's Haar cascade, on the same scaled frames under the same load, also found the face in every frame
of these clips but took 62-100 ms per frame (vs 23-42 ms for MTCNN) and gives no landmarks.
The processor searches the whole frame once a second and otherwise only a square around each tracked
face (scaled to 128 px, O-Net on its 2 best windows), about 4-7 ms per detection, and at head_movement_speed 0
only every third frame (at 25 frames/s; the cadence scales with the frame rate).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import av
import cv2
import numpy as np

from lipsync_service.core.ort_session import cpu_session
from lipsync_service.errors import InternalError

ASSETS_DIR = Path(__file__).resolve().parent / "assets" / "mtcnn"
# Per-stage score thresholds and the pyramid factor of the published MTCNN.
THRESHOLDS = (0.6, 0.7, 0.7)
PYRAMID_FACTOR = 0.709
# A square searched around one known face holds that face: R-Net's few best windows are enough for O-Net
# (its 48 px crops are most of a search's cost; a region yields about 5 windows, nearly all on that face).
ROI_REFINED = 2
# The search for small faces (wide shots): the frame's shorter side scaled to this, faces down to SMALL_FACE_PX of it.
SMALL_SEARCH_SIDE = 720
SMALL_FACE_PX = 20.0


@dataclass(frozen=True)
class Face:
    """One detected face in frame pixels.

    Attributes:
        box: (x1, y1, x2, y2).
        score: O-Net confidence in [0, 1].
        landmarks: [5, 2] (x, y): left eye, right eye, nose, left and right mouth corners.
    """

    box: tuple[float, float, float, float]
    score: float
    landmarks: np.ndarray | None = None

    @property
    def width(self) -> float:
        return self.box[2] - self.box[0]

    @property
    def height(self) -> float:
        return self.box[3] - self.box[1]

    @property
    def area(self) -> float:
        return max(0.0, self.width) * max(0.0, self.height)


def _nms(boxes: np.ndarray, scores: np.ndarray, threshold: float, mode: str = "union") -> np.ndarray:
    """Indices kept by greedy non-maximum suppression, best first."""
    if len(boxes) == 0:
        return np.zeros(0, np.int64)
    x1, y1, x2, y2 = boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3]
    area = (x2 - x1 + 1) * (y2 - y1 + 1)
    order = np.argsort(-scores, kind="stable")
    keep = []
    while order.size:
        i = order[0]
        keep.append(i)
        rest = order[1:]
        w = np.maximum(0.0, np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]) + 1)
        h = np.maximum(0.0, np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]) + 1)
        inter = w * h
        denom = np.minimum(area[i], area[rest]) if mode == "min" else area[i] + area[rest] - inter
        order = rest[inter / denom <= threshold]
    return np.asarray(keep, np.int64)


def _regress(boxes: np.ndarray, reg: np.ndarray) -> np.ndarray:
    """Apply the networks' box offsets (fractions of the box size)."""
    w = boxes[:, 2] - boxes[:, 0]
    h = boxes[:, 3] - boxes[:, 1]
    out = boxes.copy()
    out[:, 0] += reg[:, 0] * w
    out[:, 1] += reg[:, 1] * h
    out[:, 2] += reg[:, 2] * w
    out[:, 3] += reg[:, 3] * h
    return out


def _square(boxes: np.ndarray) -> np.ndarray:
    """Grow each box to a square around its centre (the next stage takes square crops)."""
    w = boxes[:, 2] - boxes[:, 0]
    h = boxes[:, 3] - boxes[:, 1]
    side = np.maximum(w, h)
    out = boxes.copy()
    out[:, 0] = boxes[:, 0] + w * 0.5 - side * 0.5
    out[:, 1] = boxes[:, 1] + h * 0.5 - side * 0.5
    out[:, 2] = out[:, 0] + side
    out[:, 3] = out[:, 1] + side
    return out


def _normalise(img: np.ndarray) -> np.ndarray:
    """uint8 HWC RGB (or NHWC) -> float32 NCHW in MTCNN's input range."""
    x = (img.astype(np.float32) - 127.5) * 0.0078125
    return np.ascontiguousarray(np.moveaxis(x, -1, -3))


def _crops(img: np.ndarray, boxes: np.ndarray, size: int) -> np.ndarray:
    """Zero-padded square crops of boxes resized to size x size, as a uint8 NHWC batch."""
    h, w = img.shape[:2]
    out = np.zeros((len(boxes), size, size, 3), np.uint8)
    for k, (x1, y1, x2, y2) in enumerate(np.round(boxes[:, :4]).astype(np.int64)):
        bw, bh = int(x2 - x1 + 1), int(y2 - y1 + 1)
        if bw <= 1 or bh <= 1:
            continue
        patch = np.zeros((bh, bw, 3), np.uint8)
        sx1, sy1, sx2, sy2 = max(x1, 0), max(y1, 0), min(x2 + 1, w), min(y2 + 1, h)
        if sx2 <= sx1 or sy2 <= sy1:
            continue
        patch[sy1 - y1 : sy2 - y1, sx1 - x1 : sx2 - x1] = img[sy1:sy2, sx1:sx2]
        out[k] = cv2.resize(patch, (size, size), interpolation=cv2.INTER_AREA)
    return out


class FaceDetector:
    """MTCNN face detector on ONNX Runtime.

    Thread-compatible: one instance per stream (ORT sessions are thread-safe, the small state is not shared).
    """

    def __init__(self, model_dir: Path = ASSETS_DIR, detect_side: int = 320, min_face_frac: float = 0.12,
                 roi_side: int = 128, roi_min_face_frac: float = 0.3, threads: int = 1) -> None:
        """Args:
            model_dir: folder with pnet.onnx, rnet.onnx, onet.onnx.
            detect_side: the frame is scaled so its shorter side is this many pixels before detection
                (never enlarged).
            min_face_frac: smallest face searched for, as a fraction of the frame's shorter side.
            roi_side: side in pixels a region of interest is scaled to (never enlarged).
            roi_min_face_frac: smallest face searched for in a region, as a fraction of its side.
            threads: ONNX Runtime intra-op threads per network.

        Raises:
            InternalError: the model files are missing or unreadable (a broken installation).
        """
        self._nets = {name: cpu_session(model_dir / f"{name}.onnx", threads, f"face detector network {name}")
                      for name in ("pnet", "rnet", "onet")}
        self.detect_side = detect_side
        self.min_face_frac = min_face_frac
        self.roi_side = roi_side
        self.roi_min_face_frac = roi_min_face_frac

    def _run(self, name: str, batch: np.ndarray) -> list[np.ndarray]:
        try:
            return self._nets[name].run(None, {"image": batch})
        except Exception as exc:  # ORT's own exception types; a failure here is ours, not the client's
            raise InternalError(f"face detector ({name}) failed on a {tuple(batch.shape)} input: {exc}") from exc

    def detect_rgb(self, img: np.ndarray, max_refined: int | None = None) -> list[Face]:
        """Faces in an RGB uint8 image, in that image's pixels, best score first.

        Args:
            img: the image.
            max_refined: at most this many of R-Net's best windows go on to O-Net (None: all of them).
        """
        h, w = img.shape[:2]
        min_face = max(12.0, self.min_face_frac * min(h, w))
        m = 12.0 / min_face
        scales: list[float] = []
        side = min(h, w) * m
        while side >= 12:
            scales.append(m * PYRAMID_FACTOR ** len(scales))
            side *= PYRAMID_FACTOR
        # Stage 1: P-Net over the image pyramid proposes windows.
        proposals = []
        for s in scales:
            sh, sw = int(math.ceil(h * s)), int(math.ceil(w * s))
            level = cv2.resize(img, (sw, sh), interpolation=cv2.INTER_AREA)
            prob, reg = self._run("pnet", _normalise(level)[None])
            rows, cols = np.nonzero(prob[0] >= THRESHOLDS[0])
            if rows.size == 0:
                continue
            score = prob[0, rows, cols]
            offsets = reg[0][:, rows, cols].T
            x1 = np.floor((2 * cols + 1) / s)
            y1 = np.floor((2 * rows + 1) / s)
            x2 = np.floor((2 * cols + 12) / s)
            y2 = np.floor((2 * rows + 12) / s)
            boxes = np.stack([x1, y1, x2, y2], axis=1)
            keep = _nms(boxes, score, 0.5)
            proposals.append(np.concatenate([boxes[keep], score[keep, None], offsets[keep]], axis=1))
        if not proposals:
            return []
        cand = np.concatenate(proposals)
        cand = cand[_nms(cand[:, :4], cand[:, 4], 0.7)]
        boxes = _square(_regress(cand[:, :4], cand[:, 5:9]))
        # Stage 2: R-Net rejects most windows and refines the rest.
        prob, reg = self._run("rnet", _normalise(_crops(img, boxes, 24)))
        keep = prob >= THRESHOLDS[1]
        boxes, prob, reg = boxes[keep], prob[keep], reg[keep]
        if len(boxes) == 0:
            return []
        keep = _nms(boxes, prob, 0.7)[:max_refined]
        boxes = _square(_regress(boxes[keep], reg[keep]))
        # Stage 3: O-Net gives the final boxes and the five landmarks.
        prob, reg, marks = self._run("onet", _normalise(_crops(img, boxes, 48)))
        keep = prob >= THRESHOLDS[2]
        boxes, prob, reg, marks = boxes[keep], prob[keep], reg[keep], marks[keep]
        if len(boxes) == 0:
            return []
        bw = (boxes[:, 2] - boxes[:, 0])[:, None]
        bh = (boxes[:, 3] - boxes[:, 1])[:, None]
        pts = np.stack([boxes[:, 0:1] + bw * marks[:, 0:5], boxes[:, 1:2] + bh * marks[:, 5:10]], axis=2)
        boxes = _regress(boxes, reg)
        keep = _nms(boxes, prob, 0.7, mode="min")
        return [Face(box=_box(boxes[k]), score=float(prob[k]), landmarks=pts[k].astype(np.float32)) for k in keep]

    def detect_image(self, bgr: np.ndarray) -> list[Face]:
        """Faces in a BGR uint8 image (e.g. frames of a training clip), in its pixels; scaled like detect_frame."""
        h, w = bgr.shape[:2]
        scale = min(1.0, self.detect_side / min(h, w))
        small = bgr if scale >= 1.0 else cv2.resize(bgr, (max(2, round(w * scale)), max(2, round(h * scale))),
                                                    interpolation=cv2.INTER_AREA)
        faces = self.detect_rgb(cv2.cvtColor(small, cv2.COLOR_BGR2RGB))
        fx, fy = w / small.shape[1], h / small.shape[0]
        return [Face(box=(f.box[0] * fx, f.box[1] * fy, f.box[2] * fx, f.box[3] * fy), score=f.score,
                     landmarks=None if f.landmarks is None else f.landmarks * np.array([fx, fy], np.float32))
                for f in faces]

    def detect_frame(self, frame: av.VideoFrame,
                     rois: Sequence[tuple[float, float, float]] | None = None, *, small: bool = False) -> list[Face]:
        """Faces in a decoded yuv420p video frame, in the frame's pixels.

        Args:
            frame: the frame.
            rois: optional squares (centre x, centre y, side) around faces seen before: only those
                regions are searched, each scaled to `roi_side` pixels, for faces of at least
                `roi_min_face_frac` of the square. Much cheaper than a full-frame search; the caller
                runs a full search now and then to find new faces.
            small: search the whole frame for small faces too (a wide shot): the frame is scaled to
                SMALL_SEARCH_SIDE instead of `detect_side` and faces down to SMALL_FACE_PX pixels of that
                are searched for. Several times the cost of a normal full search.

        Only the searched region is scaled (each plane with OpenCV's area filter) and converted to
        RGB, so the cost hardly depends on the input resolution.
        """
        if small:
            scale = min(1.0, SMALL_SEARCH_SIDE / min(frame.width, frame.height))
            frac = SMALL_FACE_PX / (scale * min(frame.width, frame.height))
            return self._detect_region(frame, 0, 0, frame.width, frame.height, scale, frac)
        if not rois:
            scale = min(1.0, self.detect_side / min(frame.width, frame.height))
            return self._detect_region(frame, 0, 0, frame.width, frame.height, scale, self.min_face_frac)
        faces: list[Face] = []
        for cx, cy, side in rois:
            x0, y0 = int(cx - side / 2), int(cy - side / 2)
            scale = min(1.0, self.roi_side / side)
            faces += self._detect_region(frame, x0, y0, x0 + int(side), y0 + int(side), scale, self.roi_min_face_frac,
                                         ROI_REFINED)
        if len(faces) > 1:
            boxes = np.array([f.box for f in faces])
            keep = _nms(boxes, np.array([f.score for f in faces]), 0.5, mode="min")
            faces = [faces[k] for k in keep]
        return faces

    def smallest_face_px(self, width: int, height: int) -> float:
        """The smallest face (box height, frame pixels) a normal full-frame search finds in a frame of this size."""
        scale = min(1.0, self.detect_side / min(width, height))
        return max(12.0, self.min_face_frac * min(width, height) * scale) / scale

    def _detect_region(self, frame: av.VideoFrame, x0: int, y0: int, x1: int, y1: int, scale: float,
                       min_face_frac: float, max_refined: int | None = None) -> list[Face]:
        w2, h2 = frame.width // 2 * 2, frame.height // 2 * 2
        x0, y0 = max(0, x0 // 2 * 2), max(0, y0 // 2 * 2)
        x1, y1 = min(w2, (x1 + 1) // 2 * 2), min(h2, (y1 + 1) // 2 * 2)
        if x1 - x0 < 24 or y1 - y0 < 24:
            return []
        dw = max(2, int(round((x1 - x0) * scale / 2)) * 2)
        dh = max(2, int(round((y1 - y0) * scale / 2)) * 2)
        rgb = _region_rgb(frame, x0, y0, x1, y1, dw, dh)
        saved = self.min_face_frac
        self.min_face_frac = min_face_frac
        try:
            faces = self.detect_rgb(rgb, max_refined)
        finally:
            self.min_face_frac = saved
        fx, fy = (x1 - x0) / dw, (y1 - y0) / dh
        offset = np.array([x0, y0], np.float32)
        return [
            Face(
                box=(f.box[0] * fx + x0, f.box[1] * fy + y0, f.box[2] * fx + x0, f.box[3] * fy + y0),
                score=f.score,
                landmarks=None if f.landmarks is None else f.landmarks * np.array([fx, fy], np.float32) + offset,
            )
            for f in faces
        ]


def _box(row: np.ndarray) -> tuple[float, float, float, float]:
    x1, y1, x2, y2 = (float(v) for v in row)
    return x1, y1, x2, y2


def _region_rgb(frame: av.VideoFrame, x0: int, y0: int, x1: int, y1: int, dw: int, dh: int) -> np.ndarray:
    """RGB uint8 [dh, dw, 3] of an even-aligned frame region, scaled plane by plane, then converted."""
    planes = []
    for k, plane in enumerate(frame.planes):
        # numpy 1.x's stub accepts only concrete buffer types; a PyAV plane exports the buffer protocol.
        arr = np.frombuffer(plane, np.uint8).reshape(plane.height, plane.line_size)  # type: ignore[call-overload]
        sub = 1 if k == 0 else 2
        region = arr[y0 // sub : y1 // sub, x0 // sub : x1 // sub]
        size = (dw // sub, dh // sub)
        planes.append(region if region.shape[1::-1] == size else cv2.resize(region, size, interpolation=cv2.INTER_AREA))
    buf = np.empty((dh * 3 // 2, dw), np.uint8)
    buf[:dh] = planes[0]
    flat = buf[dh:].reshape(-1)
    q = (dh // 2) * (dw // 2)
    flat[:q] = planes[1].reshape(-1)
    flat[q:] = planes[2].reshape(-1)
    return cv2.cvtColor(buf, cv2.COLOR_YUV2RGB_I420)

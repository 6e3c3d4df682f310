"""Dense face landmarks: MediaPipe's 468-point face mesh on ONNX Runtime, cropped the way MediaPipe crops."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from lipsync_service.core.ort_session import cpu_session
from lipsync_service.errors import InternalError

# mediapipe 0.10.14's face_landmark.tflite converted by tools/export_facemesh_onnx.py (Apache-2.0, see
# LICENSE.md beside it). Input image float32 [N, 192, 192, 3] RGB in [0, 1]; outputs landmarks [N, 1404]
# (x, y, z per point in input pixels) and face_flag [N, 1] (presence logit).
MODEL_PATH = Path(__file__).parent / "assets" / "facemesh" / "face_landmark.onnx"
INPUT_SIZE = 192
NUM_POINTS = 468

# MediaPipe grows its face rectangles by 1.5 (both the one from the face detector and the one from the
# previous frame's landmarks) into a square on the longer side: the mesh model was trained on such crops.
ROI_SCALE = 1.5
# MediaPipe's 1.5 applies to BlazeFace boxes; our MTCNN boxes (core/faces.py) run from the brows to the
# chin and are taller. Measured against MediaPipe's own crops on talking_1-3 and face_static_720p
# (125 frames): its square is 1.16-1.27x the MTCNN box's longer side and its centre lies 0.11-0.14 box
# heights below the box centre. These two constants map an MTCNN box onto the box MediaPipe would use.
MTCNN_BOX_TO_BLAZEFACE = 0.815
MTCNN_BOX_SHIFT_Y = 0.12
# MediaPipe's default min_tracking_confidence: below it the crop is taken not to hold a face and the
# landmarks are dropped (in video mode it then runs its face detector again).
PRESENCE_THRESHOLD = 0.5
# Crops smaller than this (frame pixels) carry too little detail for 468 points; report no face.
MIN_ROI_SIDE = 16.0

# Index facts from MediaPipe's FACEMESH_LIPS / FACEMESH_FACE_OVAL connection sets, chained into closed
# polygons. "Left"/"right" are image left/right of an unmirrored upright face, as core/faces.py names the
# MTCNN landmarks (so the left mouth corner is the subject's right one).
OUTER_LIPS: tuple[int, ...] = (61, 185, 40, 39, 37, 0, 267, 269, 270, 409, 291,
                               375, 321, 405, 314, 17, 84, 181, 91, 146)
INNER_LIPS: tuple[int, ...] = (78, 191, 80, 81, 82, 13, 312, 311, 310, 415, 308,
                               324, 318, 402, 317, 14, 87, 178, 88, 95)
FACE_OVAL: tuple[int, ...] = (10, 338, 297, 332, 284, 251, 389, 356, 454, 323, 361, 288, 397, 365, 379, 378,
                              400, 377, 152, 148, 176, 149, 150, 136, 172, 58, 132, 93, 234, 127, 162, 21,
                              54, 103, 67, 109)
NOSE_TIP = 1
CHIN = 152
LEFT_MOUTH_CORNER = 61
RIGHT_MOUTH_CORNER = 291
UPPER_INNER_LIP = 13
LOWER_INNER_LIP = 14
# Outer eye corners: MediaPipe levels the next frame's crop on the line between these two.
LEFT_EYE_OUTER = 33
RIGHT_EYE_OUTER = 263


@dataclass(frozen=True)
class FaceRoi:
    """The rotated square the model looks at, in frame pixels.

    Attributes:
        cx, cy: centre.
        side: side length.
        rotation: radians, clockwise on screen (y points down); the angle of the eye line.
    """

    cx: float
    cy: float
    side: float
    rotation: float = 0.0


@dataclass(frozen=True)
class FaceLandmarks:
    """The face mesh of one face.

    Attributes:
        points: float32 [468, 3]: x, y in frame pixels; z in pixels at the same scale, relative to the
            face (smaller is nearer the camera), as MediaPipe reports it.
        score: face presence probability in [0, 1].
        roi: the crop the points were read from.
    """

    points: np.ndarray
    score: float
    roi: FaceRoi


def _normalize_radians(angle: float) -> float:
    return angle - 2 * math.pi * math.floor((angle + math.pi) / (2 * math.pi))


def _angle(p0: Sequence[float], p1: Sequence[float]) -> float:
    """Rotation that makes the line p0 -> p1 horizontal (MediaPipe's DetectionsToRects, target angle 0)."""
    return _normalize_radians(math.atan2(float(p1[1]) - float(p0[1]), float(p1[0]) - float(p0[0])))


def roi_from_box(box: Sequence[float], eyes: np.ndarray | None = None) -> FaceRoi:
    """The model's crop for an MTCNN face box, as MediaPipe would crop the same face from its detector.

    Args:
        box: (x1, y1, x2, y2) in frame pixels, as `Face.box` from core/faces.py.
        eyes: optional [2, 2] (x, y) of the image-left then image-right eye (`Face.landmarks[:2]`);
            the crop is rotated so they are level. Without them the crop is upright.

    Returns:
        The rotated square.
    """
    x1, y1, x2, y2 = (float(v) for v in box[:4])
    w, h = x2 - x1, y2 - y1
    rotation = 0.0 if eyes is None else _angle(eyes[0], eyes[1])
    return FaceRoi(cx=(x1 + x2) / 2, cy=(y1 + y2) / 2 + MTCNN_BOX_SHIFT_Y * h,
                   side=ROI_SCALE * MTCNN_BOX_TO_BLAZEFACE * max(w, h), rotation=rotation)


def roi_from_landmarks(points: np.ndarray) -> FaceRoi:
    """The next frame's crop from this frame's mesh, as MediaPipe tracks a face.

    Args:
        points: [468, 2+] landmarks in frame pixels.

    Returns:
        A square 1.5x the longer side of the points' axis-aligned bounds, centred on them, rotated so the
        outer eye corners are level.
    """
    xy = np.asarray(points, np.float64)[:, :2]
    lo, hi = xy.min(axis=0), xy.max(axis=0)
    return FaceRoi(cx=float(lo[0] + hi[0]) / 2, cy=float(lo[1] + hi[1]) / 2,
                   side=ROI_SCALE * float(max(hi - lo)),
                   rotation=_angle(xy[LEFT_EYE_OUTER], xy[RIGHT_EYE_OUTER]))


def _crop_matrix(roi: FaceRoi) -> np.ndarray:
    """2x3 affine map from model-input pixels to frame pixels.

    MediaPipe maps the rotated square's corners onto the input's corners (0 and 192, no half-pixel
    offset) with OpenCV; the same map is used here so the crops agree sample for sample.
    """
    c, s = math.cos(roi.rotation), math.sin(roi.rotation)
    k = roi.side / INPUT_SIZE
    half = roi.side / 2
    return np.array([[c * k, -s * k, roi.cx - c * half + s * half],
                     [s * k, c * k, roi.cy - s * half - c * half]], np.float64)


def crop_for_model(image: np.ndarray, roi: FaceRoi) -> np.ndarray:
    """The 192x192 crop of a rotated square, bilinear, edge pixels repeated outside the image.

    Args:
        image: HxWx3 uint8 image (any channel order; it is kept).
        roi: the square.

    Returns:
        uint8 [192, 192, 3].
    """
    # Bilinear without a pre-filter and a replicated border, like MediaPipe's OpenCV ImageToTensor path:
    # the model was trained on what that produces.
    return cv2.warpAffine(image, _crop_matrix(roi), (INPUT_SIZE, INPUT_SIZE),
                          flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_REPLICATE)


def project_points(raw: np.ndarray, roi: FaceRoi) -> np.ndarray:
    """Map the model's points from its input back into the frame (MediaPipe's LandmarkProjection).

    Args:
        raw: [468, 3] x, y, z in model-input pixels (0..192).
        roi: the crop the model saw.

    Returns:
        float32 [468, 3] in frame pixels; z is scaled by the same factor as x and y.
    """
    m = _crop_matrix(roi)
    out = np.empty((len(raw), 3), np.float32)
    out[:, :2] = raw[:, :2] @ m[:, :2].T + m[:, 2]
    out[:, 2] = raw[:, 2] * (roi.side / INPUT_SIZE)
    return out


class FaceLandmarker:
    """MediaPipe's face mesh (468 points) on ONNX Runtime, CPU.

    Frames are BGR uint8 (the rest of core works in BGR via OpenCV); the crop is converted to the RGB the
    model expects. The instance holds no per-call state, so one instance may serve one thread per stream
    (ONNX Runtime sessions may run concurrently).
    """

    def __init__(self, model_path: Path = MODEL_PATH, threads: int = 1,
                 presence_threshold: float = PRESENCE_THRESHOLD) -> None:
        """Load the model.

        Args:
            model_path: the converted face_landmark.onnx.
            threads: ONNX Runtime intra-op threads.
            presence_threshold: faces scoring below this are reported as None.

        Raises:
            InternalError: the model file is missing or unreadable (a broken installation).
        """
        self._session = cpu_session(model_path, threads, "face landmark model")
        self.presence_threshold = presence_threshold

    def detect(self, bgr: np.ndarray, box: Sequence[float], eyes: np.ndarray | None = None) -> FaceLandmarks | None:
        """Landmarks of the face in a detector box.

        Args:
            bgr: the frame, BGR uint8 [H, W, 3].
            box: (x1, y1, x2, y2) in frame pixels, as `Face.box` from core/faces.py.
            eyes: optional [2, 2] eye centres (image-left first), as `Face.landmarks[:2]`; they level
                the crop, which helps on tilted heads.

        Returns:
            The mesh, or None when the crop holds no readable face.

        Raises:
            ValueError: the frame is not an HxWx3 uint8 array.
            InternalError: ONNX Runtime failed.
        """
        x1, y1, x2, y2 = (float(v) for v in box[:4])
        if not all(math.isfinite(v) for v in (x1, y1, x2, y2)) or x2 <= x1 or y2 <= y1:
            return None
        if eyes is not None and not np.all(np.isfinite(eyes)):
            eyes = None
        return self.detect_rois(bgr, [roi_from_box(box, eyes)])[0]

    def track(self, bgr: np.ndarray, previous: FaceLandmarks) -> FaceLandmarks | None:
        """Landmarks of a face in the crop derived from its landmarks in the previous frame.

        Args:
            bgr: the frame, BGR uint8 [H, W, 3].
            previous: the face's mesh in the previous frame.

        Returns:
            The mesh, or None when the face was lost (then detect it again).

        Raises:
            ValueError: the frame is not an HxWx3 uint8 array.
            InternalError: ONNX Runtime failed.
        """
        return self.detect_rois(bgr, [roi_from_landmarks(previous.points)])[0]

    def detect_rois(self, bgr: np.ndarray, rois: Sequence[FaceRoi]) -> list[FaceLandmarks | None]:
        """Landmarks for several crops of one frame in a single batched model call.

        Args:
            bgr: the frame, BGR uint8 [H, W, 3].
            rois: crops from `roi_from_box` or `roi_from_landmarks`.

        Returns:
            One entry per roi: the mesh, or None for a crop without a readable face.

        Raises:
            ValueError: the frame is not an HxWx3 uint8 array.
            InternalError: ONNX Runtime failed.
        """
        if bgr.ndim != 3 or bgr.shape[2] != 3 or bgr.dtype != np.uint8:
            raise ValueError(f"expected a BGR uint8 [H, W, 3] frame, got {bgr.dtype} {bgr.shape}")
        bgr = np.ascontiguousarray(bgr)  # OpenCV refuses reversed-stride views (e.g. rgb[..., ::-1])
        results: list[FaceLandmarks | None] = [None] * len(rois)
        usable = [k for k, r in enumerate(rois)
                  if all(math.isfinite(v) for v in (r.cx, r.cy, r.side, r.rotation)) and r.side >= MIN_ROI_SIDE]
        if not usable:
            return results
        batch = np.empty((len(usable), INPUT_SIZE, INPUT_SIZE, 3), np.float32)
        for row, k in enumerate(usable):
            # BGR -> RGB and [0, 255] -> [0, 1]: MediaPipe feeds this model RGB in [0, 1] (checked against
            # its output: [-1, 1] input moves the points by pixels, [0, 1] matches to a fraction of one).
            # (cvtColor, not a reversed view: numpy's multiply over a negative-stride view took 0.5 ms of it.)
            rgb = cv2.cvtColor(crop_for_model(bgr, rois[k]), cv2.COLOR_BGR2RGB)
            np.multiply(rgb, np.float32(1.0 / 255.0), out=batch[row])
        try:
            raw, flag = self._session.run(None, {"image": batch})
        except Exception as exc:  # ORT's own exception types; a failure here is ours, not the client's
            raise InternalError(f"face landmark model failed on a {tuple(batch.shape)} input: {exc}") from exc
        scores = 1.0 / (1.0 + np.exp(-np.clip(flag[:, 0].astype(np.float64), -80.0, 80.0)))
        for row, k in enumerate(usable):
            pts = raw[row].reshape(NUM_POINTS, 3)
            if scores[row] < self.presence_threshold or not np.all(np.isfinite(pts)):
                continue
            results[k] = FaceLandmarks(points=project_points(pts, rois[k]), score=float(scores[row]), roi=rois[k])
        return results

"""The mouth-occlusion model: the canonical crop's geometry, the mask mapped back to frame pixels, and the shipped
model on a real held-out frame (clean, a flat skin-coloured patch over the mouth, a hand over half of it)."""

from __future__ import annotations

import math
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from lipsync_service.core import occlusion as oc
from lipsync_service.core.faces import FaceDetector
from lipsync_service.core.landmarks import CHIN, NOSE_TIP, OUTER_LIPS, FaceLandmarker
from lipsync_service.core.lips import LipTracker
from lipsync_service.core.neural import OCCLUDER_GROW_OF_WIDTH, OCCLUDER_GROW_PX
from lipsync_service.errors import InternalError
from tests.conftest import media_path

# A held-out identity (the model was never trained or tuned on it) and a frame with the mouth a little open.
CLIP, FRAME = "talking_1.mp4", 40


def _mesh_with_corners(left: tuple[float, float], right: tuple[float, float]) -> np.ndarray:
    raw = np.zeros((468, 2), np.float64)
    raw[61], raw[291] = left, right
    return raw


def _canon_to_frame(to_canon: np.ndarray, u: float, v: float) -> np.ndarray:
    inv = cv2.invertAffineTransform(to_canon)
    return inv @ np.array([u, v, 1.0])


@pytest.mark.parametrize("left,right", [((100.0, 200.0), (196.0, 200.0)), ((310.5, 254.25), (371.0, 290.0)),
                                        ((900.0, 40.0), (880.0, 140.0))])
def test_canonical_transform_puts_the_mouth_corners_where_stated(left, right):
    m = oc.canonical_transform(_mesh_with_corners(left, right))
    assert m.shape == (2, 3) and m.dtype == np.float64
    for point, corner in zip((left, right), oc.CORNERS):
        np.testing.assert_allclose(m @ np.array([*point, 1.0]), corner, atol=1e-9)
        np.testing.assert_allclose(_canon_to_frame(m, *corner), point, atol=1e-9)
    # A similarity: no shear, the same scale on both axes.
    assert m[0, 0] == pytest.approx(m[1, 1]) and m[0, 1] == pytest.approx(-m[1, 0])


def test_canonical_transform_survives_a_collapsed_mouth():
    m = oc.canonical_transform(_mesh_with_corners((50.0, 50.0), (50.0, 50.0)))
    assert np.all(np.isfinite(m))
    with pytest.raises(ValueError):
        oc.canonical_transform(_mesh_with_corners((np.nan, 0.0), (1.0, 0.0)))


def _occlusion_with_block() -> oc.Occlusion:
    # Corners 96 px apart, level: 2 frame pixels per canonical pixel; canonical (24, 32) is frame (100, 200).
    to_canon = oc.canonical_transform(_mesh_with_corners((100.0, 200.0), (196.0, 200.0)))
    mask = np.zeros((oc.CANON_H, oc.CANON_W), np.float32)
    mask[30:40, 40:50] = 0.9  # frame x 131..151, y 195..215 (pixel edges)
    return oc.Occlusion(mask=mask, to_canon=to_canon, lip_share=0.0)


def test_in_box_maps_a_canonical_mask_onto_the_right_frame_pixels():
    occ = _occlusion_with_block()
    box = occ.in_box(120, 180, 50, 50, 0.0)
    assert box.shape == (50, 50) and box.dtype == np.float32
    assert set(np.unique(box)) <= {0.0, 1.0}
    ys, xs = np.nonzero(box)
    # Boundary pixels may go either way (the mask's edge falls on them); one pixel in, they are certain.
    assert xs.min() + 120 in (131, 132) and xs.max() + 120 in (150, 151)
    assert ys.min() + 180 in (195, 196) and ys.max() + 180 in (214, 215)
    assert box[200 - 180 : 212 - 180, 133 - 120 : 149 - 120].all()


def test_in_box_grows_by_frame_pixels_and_is_zero_outside_the_crop():
    occ = _occlusion_with_block()
    plain = occ.in_box(100, 170, 90, 80, 0.0)
    grown = occ.in_box(100, 170, 90, 80, 5.0)
    assert (grown >= plain).all()
    row = 205 - 170
    cols = np.nonzero(plain[row])[0]
    left_edge, right_edge = int(cols.min()), int(cols.max())
    assert grown[row, right_edge + 5] == 1.0 and grown[row, right_edge + 7] == 0.0
    assert grown[row, left_edge - 5] == 1.0 and grown[row, left_edge - 7] == 0.0
    # A box the canonical crop does not reach is all zero, however grown.
    assert not occ.in_box(1000, 1000, 40, 30, 10.0).any()
    # A mask that is all occluder fills exactly the crop's footprint: frame x 51..243 (canonical -0.5..95.5).
    full = oc.Occlusion(np.ones((oc.CANON_H, oc.CANON_W), np.float32), occ.to_canon, 1.0)
    line = full.in_box(0, 240, 300, 1, 0.0)[0]
    assert line[60:235].all() and not line[:45].any() and not line[250:].any()


def test_in_box_follows_a_rotated_face():
    to_canon = oc.canonical_transform(_mesh_with_corners((300.0, 300.0), (300.0, 372.0)))  # mouth on its side
    mask = np.zeros((oc.CANON_H, oc.CANON_W), np.float32)
    mask[50:56, 20:26] = 1.0
    occ = oc.Occlusion(mask, to_canon, 0.0)
    centre = _canon_to_frame(to_canon, 22.5, 52.5)
    box = occ.in_box(200, 250, 200, 150, 0.0)
    ys, xs = np.nonzero(box)
    assert abs(xs.mean() + 200 - centre[0]) < 1.0 and abs(ys.mean() + 250 - centre[1]) < 1.0


def test_a_missing_model_file_is_an_internal_error(tmp_path: Path):
    with pytest.raises(InternalError, match="missing.onnx"):
        oc.OcclusionDetector(tmp_path / "missing.onnx")


@pytest.fixture(scope="module")
def detector() -> oc.OcclusionDetector:
    return oc.OcclusionDetector()


@pytest.fixture(scope="module")
def held_out():
    """(BGR frame, face box, fps) of a held-out clip's frame."""
    path = media_path(CLIP)
    with av.open(str(path)) as container:
        fps = float(container.streams.video[0].average_rate)
        frame = next(f for k, f in enumerate(container.decode(video=0)) if k == FRAME).reformat(format="yuv420p")
    box = max(FaceDetector().detect_frame(frame), key=lambda f: f.area).box
    return frame.to_ndarray(format="bgr24"), box, fps


@pytest.fixture(scope="module")
def landmarker() -> FaceLandmarker:
    return FaceLandmarker()


def _read(bgr: np.ndarray, box, fps: float, landmarker: FaceLandmarker):
    """The lips of the face in `box`, as the service reads them (a fresh track: no help from earlier frames)."""
    frame = av.VideoFrame.from_ndarray(bgr, format="bgr24").reformat(format="yuv420p")
    lips = LipTracker(landmarker, fps).read(frame, FRAME, 0, box)
    assert lips is not None, "the landmark model did not read the face"
    return lips


def _cheek_colour(bgr: np.ndarray, raw: np.ndarray) -> tuple[int, ...]:
    r = 4
    pixels = [bgr[int(raw[i, 1]) - r : int(raw[i, 1]) + r, int(raw[i, 0]) - r : int(raw[i, 0]) + r].reshape(-1, 3)
              for i in (205, 425)]
    return tuple(int(c) for c in np.median(np.concatenate(pixels), axis=0))


def _mouth_width(raw: np.ndarray) -> float:
    return float(np.linalg.norm(raw[61] - raw[291]))


def test_the_crop_reaches_from_the_nose_to_the_chin(held_out, landmarker):
    bgr, box, fps = held_out
    lips = _read(bgr, box, fps, landmarker)
    m = oc.canonical_transform(lips.raw)
    pts = lips.raw @ m[:, :2].T + m[:, 2]
    lips_c = pts[list(OUTER_LIPS)]
    assert (lips_c[:, 0] > 8).all() and (lips_c[:, 0] < oc.CANON_W - 8).all()
    assert pts[NOSE_TIP, 1] < 8 and 0 < pts[2, 1] < 20  # the nose tip at the top edge, its base inside
    assert oc.CANON_H - 10 < pts[CHIN, 1] < oc.CANON_H + 6


def test_a_clean_mouth_is_not_flagged(held_out, landmarker, detector):
    bgr, box, fps = held_out
    lips = _read(bgr, box, fps, landmarker)
    occ = detector.measure(lips.image, lips.origin, lips.raw)
    assert occ.mask.shape == (oc.CANON_H, oc.CANON_W) and occ.mask.dtype == np.float32
    assert occ.mask.min() >= 0.0 and occ.mask.max() <= 1.0
    assert occ.lip_share < 0.05


def test_a_flat_skin_coloured_patch_is_found_and_every_pixel_of_it_is_kept(held_out, landmarker, detector):
    bgr, box, fps = held_out
    clean = _read(bgr, box, fps, landmarker)
    width = _mouth_width(clean.raw)
    lips = clean.raw[list(OUTER_LIPS)]
    (x0, y0), (x1, y1) = lips.min(0) - 0.25 * width, lips.max(0) + 0.25 * width
    patched = bgr.copy()
    cv2.rectangle(patched, (int(x0), int(y0)), (int(x1), int(y1)), _cheek_colour(bgr, clean.raw), -1)
    changed = np.abs(patched.astype(int) - bgr).max(axis=2) > 0
    lips_read = _read(patched, box, fps, landmarker)  # the mesh as the service would read the covered face
    occ = detector.measure(lips_read.image, lips_read.origin, lips_read.raw)
    assert occ.lip_share > 0.9
    bx, by = lips_read.origin
    bh, bw = lips_read.image.shape[:2]
    grown = occ.in_box(bx, by, bw, bh, OCCLUDER_GROW_OF_WIDTH * _mouth_width(lips_read.raw) + OCCLUDER_GROW_PX) > 0
    inside = changed[by : by + bh, bx : bx + bw]
    assert inside.sum() == changed.sum(), "the patch reaches beyond the mouth box"
    assert not (inside & ~grown).any(), f"{int((inside & ~grown).sum())} patch pixels outside the grown mask"


def test_a_hand_over_half_the_mouth_covers_part_of_the_lips(held_out, landmarker, detector):
    bgr, box, fps = held_out
    clean = _read(bgr, box, fps, landmarker)
    width = _mouth_width(clean.raw)
    left, right = clean.raw[61], clean.raw[291]
    centre = (left + right) / 2
    # Three fingers coming up from below over the image-left half of the mouth, and the palm under them.
    colour = np.array(_cheek_colour(bgr, clean.raw), np.float64) * 0.9
    hand = bgr.copy()
    finger = max(3, int(0.16 * width))
    for k in range(3):
        x = left[0] + finger + k * 2 * finger * 0.95
        cv2.line(hand, (int(x), int(centre[1] - 0.35 * width)), (int(x), int(centre[1] + 1.5 * width)),
                 tuple(colour * (0.92 + 0.04 * k)), 2 * finger, cv2.LINE_AA)
    cv2.ellipse(hand, (int(left[0] + 2.5 * finger), int(centre[1] + 1.5 * width)), (3 * finger, 2 * finger), 0, 0, 360,
                tuple(colour), -1, cv2.LINE_AA)
    lips_read = _read(hand, box, fps, landmarker)
    occ = detector.measure(lips_read.image, lips_read.origin, lips_read.raw)
    covered_x = left[0] + 6 * finger * 0.95
    # Covered enough to leave the whole mouth alone (the service's threshold is far below), and the model must not
    # call it clean. Where it reads the lips as only partly covered, the visible half must stay out of the mask.
    assert occ.lip_share > 0.2, occ.lip_share
    if occ.lip_share >= 0.8:
        return
    # The right half stays visible: its lip pixels are not in the mask.
    bx, by = lips_read.origin
    bh, bw = lips_read.image.shape[:2]
    mask = occ.in_box(bx, by, bw, bh, 0.0)
    right_lip = np.zeros(bgr.shape[:2], np.uint8)
    cv2.fillPoly(right_lip, [np.round(clean.raw[list(OUTER_LIPS)]).astype(np.int32)], (1,))
    right_lip[:, : int(math.ceil(covered_x + 0.15 * width))] = 0
    assert mask[right_lip[by : by + bh, bx : bx + bw] > 0].mean() < 0.1


def test_an_empty_mouth_image_counts_as_covered(detector):
    raw = _mesh_with_corners((10.0, 10.0), (50.0, 10.0))
    occ = detector.measure(np.zeros((0, 0, 3), np.uint8), (0, 0), raw)
    assert occ.lip_share == 1.0

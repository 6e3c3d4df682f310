"""Re-shaping the mouth at full resolution: the target shape is reached, nothing outside the dilated lip region is
written (lossless, real and synthetic clips), the source's own pixels are moved, and interiors come from the video."""

from __future__ import annotations

from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from lipsync_service import pipeline
from lipsync_service.core.faces import FaceDetector
from lipsync_service.core.landmarks import OUTER_LIPS, FaceLandmarker
from lipsync_service.core.mouth import (
    JAW_CHIN,
    JAW_LINE,
    JAW_RING,
    JAW_SHARE,
    MARGIN_OF_WIDTH,
    FaceFrame,
    SpeakerStats,
    delaunay,
    lip_ratios,
    mouth_region,
    target_lips,
    warp_mouth,
)
from lipsync_service.core.mouth_bank import MouthBank
from lipsync_service.core.neural import NeuralProcessor
from lipsync_service.job import EncodingMode, JobConfig, VideoEncodingSpec
from lipsync_service.settings import Settings
from tests import synth
from tests.core.fakes import ShapeBackend


def _first_frames(path: Path, count: int) -> list[np.ndarray]:
    out = []
    with av.open(str(path)) as container:
        for frame in container.decode(video=0):
            out.append(frame.to_ndarray(format="bgr24"))
            if len(out) == count:
                break
    return out


@pytest.fixture(scope="module")
def mesh():
    """A real frame of talking_1 and its face mesh."""
    from tests.conftest import media_path

    bgr = _first_frames(media_path("talking_1.mp4"), 1)[0]
    face = FaceDetector().detect_frame(av.VideoFrame.from_ndarray(bgr, format="bgr24").reformat(format="yuv420p"))[0]
    found = FaceLandmarker().detect(bgr, face.box, face.landmarks[:2])
    assert found is not None
    return bgr, found.points


@pytest.mark.parametrize("d_open,d_width", [(0.06, 0.0), (-0.02, 0.0), (0.03, 0.04), (0.0, -0.04)])
def test_target_lips_reach_the_requested_shape(mesh, d_open, d_width):
    _, points = mesh
    opening, width = lip_ratios(points)
    target = target_lips(points, max(opening + d_open, 0.0), width + d_width)
    moved = points[:, :2].copy()
    for i, xy in target.items():
        moved[i] = xy
    got_open, got_width = lip_ratios(moved)
    assert got_open == pytest.approx(max(opening + d_open, 0.0), abs=0.004)
    assert got_width == pytest.approx(width + d_width, abs=0.01)


def test_unchanged_shape_moves_nothing(mesh):
    bgr, points = mesh
    opening, width = lip_ratios(points)
    edit = warp_mouth(bgr, (0, 0), points, target_lips(points, opening, width), (bgr.shape[1], bgr.shape[0]))
    assert edit is not None
    region = bgr[edit.y : edit.y + edit.patch.shape[0], edit.x : edit.x + edit.patch.shape[1]].astype(int)
    assert np.abs(edit.patch.astype(int) - region)[edit.alpha > 0].mean() < 1.5


def test_the_warp_writes_only_near_the_lips(mesh):
    bgr, points = mesh
    opening, width = lip_ratios(points)
    target = target_lips(points, opening + 0.05, width)
    edit = warp_mouth(bgr, (0, 0), points, target, (bgr.shape[1], bgr.shape[0]))
    assert edit is not None
    hull, margin = mouth_region(points, target)
    yy, xx = np.nonzero(edit.alpha > 0)
    pts = np.stack([xx + edit.x, yy + edit.y], 1).astype(np.float32)
    far = [cv2.pointPolygonTest(hull.astype(np.float32), (float(x), float(y)), True) for x, y in pts[::7]]
    assert min(far) >= -margin - 1.5, "a weight beyond the dilated lip region"
    mouth_width = np.linalg.norm(points[61, :2] - points[291, :2])
    chin_move = np.linalg.norm(target[JAW_LINE[JAW_CHIN]] - points[JAW_LINE[JAW_CHIN], :2])
    assert margin == pytest.approx(max(4.0, MARGIN_OF_WIDTH * mouth_width, JAW_RING * chin_move))


def _moved(points: np.ndarray, target: dict) -> np.ndarray:
    out = points[:, :2].astype(np.float64).copy()
    for i, xy in target.items():
        out[i] = xy
    return out


def _lip_thickness(p: np.ndarray) -> tuple[float, float]:
    """Upper and lower lip thickness at the middle (outer edge to inner line), pixels."""
    return float(p[13, 1] - p[0, 1]), float(p[17, 1] - p[14, 1])


def test_a_closure_shuts_and_presses_the_lips(mesh):
    _, points = mesh
    opening, width = lip_ratios(points)
    moved = _moved(points, target_lips(points, opening + 0.04, width, closure=1.0))
    assert lip_ratios(moved)[0] == pytest.approx(0.0, abs=0.002)
    up, low = _lip_thickness(moved)
    up0, low0 = _lip_thickness(points[:, :2])
    assert up < up0 and low < low0  # pressed lips look thinner


def test_a_tuck_lifts_and_rolls_in_the_lower_lip(mesh):
    _, points = mesh
    opening, width = lip_ratios(points)
    plain = _moved(points, target_lips(points, opening + 0.03, width))
    tucked = _moved(points, target_lips(points, opening + 0.03, width, tuck=1.0))
    # The lower lip's outer edge rises towards the nose; the lower lip looks thinner.
    assert tucked[17, 1] < plain[17, 1] - 1.0
    assert _lip_thickness(tucked)[1] < _lip_thickness(plain)[1]
    assert lip_ratios(tucked)[0] < lip_ratios(plain)[0]


def test_rounding_narrows_the_mouth_and_rounds_its_opening(mesh):
    _, points = mesh
    opening, width = lip_ratios(points)
    plain = _moved(points, target_lips(points, opening + 0.03, width))
    rounded = _moved(points, target_lips(points, opening + 0.03, width, rounding=1.0))
    assert lip_ratios(rounded)[1] < 0.9 * lip_ratios(plain)[1]
    # Fuller towards the corners: the gap of the columns beside the middle is larger.
    side = [(81, 178), (311, 402)]
    assert all(rounded[lo, 1] - rounded[up, 1] > plain[lo, 1] - plain[up, 1] for up, lo in side)


def test_the_jaw_drops_with_the_opening_and_stays_inside_its_region(mesh):
    bgr, points = mesh
    opening, width = lip_ratios(points)
    target = target_lips(points, opening + 0.06, width)
    lower_lip = float(target[14][1] - points[14, 1])
    chin = float(target[152][1] - points[152, 1])
    assert chin == pytest.approx(JAW_SHARE * lower_lip, rel=0.05)
    # The jaw's angles stay where they are.
    assert np.allclose(target[JAW_LINE[0]], points[JAW_LINE[0], :2]) and np.allclose(target[JAW_LINE[-1]],
                                                                                     points[JAW_LINE[-1], :2])
    edit = warp_mouth(bgr, (0, 0), points, target, (bgr.shape[1], bgr.shape[0]))
    assert edit is not None
    hull, margin = mouth_region(points, target)
    yy, xx = np.nonzero(edit.alpha > 0)
    far = [cv2.pointPolygonTest(hull.astype(np.float32), (float(x + edit.x), float(y + edit.y)), True)
           for x, y in zip(xx[::5], yy[::5])]
    assert min(far) >= -margin - 1.5
    # The chin's pixels moved: the patch differs from the source just above the chin.
    cx, cy = int(points[152, 0]) - edit.x, int(points[152, 1] - 0.1 * abs(chin) - 3) - edit.y
    region = bgr[edit.y : edit.y + edit.patch.shape[0], edit.x : edit.x + edit.patch.shape[1]]
    near_chin = (slice(cy - 3, cy + 3), slice(cx - 3, cx + 3))
    assert np.abs(edit.patch[near_chin].astype(int) - region[near_chin]).mean() > 0


@pytest.mark.parametrize("offset", [0.0, 600.0, 1234.5678])
def test_triangulation_keeps_every_triangle_of_the_points(offset):
    # Every point, wherever float32 rounding puts it, keeps its triangles: a lost triangle is a hole in the
    # warp (its pixels would not move with the lips). Reference: OpenCV's own triangle list, less the
    # triangles at its three helper vertices far outside the points.
    rng = np.random.default_rng(1)
    for _ in range(50):
        pts = rng.uniform(0, 300, (int(rng.integers(4, 70)), 2)) + offset
        (x0, y0), (x1, y1) = pts.min(0) - 2, pts.max(0) + 2  # the rectangle delaunay() gives OpenCV
        subdiv = cv2.Subdiv2D((int(np.floor(x0)), int(np.floor(y0)), int(np.ceil(x1 - x0)) + 2,
                               int(np.ceil(y1 - y0)) + 2))
        subdiv.insert([(float(x), float(y)) for x, y in pts])
        corners = subdiv.getTriangleList().reshape(-1, 3, 2)
        inside = (corners >= [x0, y0]) & (corners <= [x1, y1])
        real = int(inside.all(axis=(1, 2)).sum())
        tris = delaunay(pts)
        assert len(tris) == real
        assert len({tuple(sorted(t)) for t in tris.tolist()}) == len(tris)
    # Coincident points share one vertex; the duplicate index never appears.
    pts = np.array([[0, 0], [10, 0], [0, 10], [10, 10], [0, 0]], np.float64) + offset
    tris = delaunay(pts)
    assert len(tris) == 2 and 4 not in tris


def test_speaker_stats_start_at_the_prior_and_learn_the_speaker():
    stats = SpeakerStats()
    stats.observe(0.02, 0.40)
    mean, std = stats.mean_std()
    assert 0.02 < mean[0] < 0.035 and mean[1] == pytest.approx(0.40)
    rng = np.random.default_rng(0)
    for _ in range(500):
        stats.observe(0.05 + 0.01 * rng.standard_normal(), 0.40 + 0.02 * rng.standard_normal())
    mean, std = stats.mean_std()
    assert mean[0] == pytest.approx(0.05, abs=0.003) and std[0] == pytest.approx(0.01, abs=0.003)
    assert std[1] == pytest.approx(0.02, abs=0.004)


def test_bank_paints_an_open_interior_from_an_earlier_frame(media):
    """A closed mouth opened by the warp shows the inside of this person's mouth, not stretched lip."""
    frames = _first_frames(media("talking_1.mp4"), 60)
    detector, marker = FaceDetector(), FaceLandmarker()
    bank = MouthBank()
    meshes = []
    for bgr in frames:
        face = detector.detect_frame(av.VideoFrame.from_ndarray(bgr, format="bgr24").reformat(format="yuv420p"))[0]
        m = marker.detect(bgr, face.box, face.landmarks[:2])
        assert m is not None
        meshes.append(m.points)
        bank.offer(bgr, (0, 0), m.points)
    assert len(bank) > 0, "talking_1 opens its mouth in its first 60 frames"
    closed = int(np.argmin([lip_ratios(p)[0] for p in meshes]))
    bgr, points = frames[closed], meshes[closed]
    opening, width = lip_ratios(points)
    target = target_lips(points, opening + 0.06, width)
    plain = warp_mouth(bgr, (0, 0), points, target, (bgr.shape[1], bgr.shape[0]))
    filled = warp_mouth(bgr, (0, 0), points, target, (bgr.shape[1], bgr.shape[0]))
    face = FaceFrame.of(points)
    assert filled is not None and plain is not None
    assert bank.fill(filled, float((points[14, :2] - points[13, :2]) @ face.down))
    inner = np.zeros(filled.alpha.shape, np.uint8)
    poly = np.array([target[i] for i in (78, 191, 80, 81, 82, 13, 312, 311, 310, 415, 308, 324, 318, 402, 317, 14,
                                         87, 178, 88, 95)]) - [filled.x, filled.y]
    cv2.fillPoly(inner, [np.round(poly).astype(np.int32)], 1)
    grey = lambda img: cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)[inner > 0].astype(float)  # noqa: E731
    # Stretching a closed mouth gives a smooth band of lip; a real interior has teeth against dark.
    assert np.abs(grey(filled.patch) - grey(plain.patch)).mean() > 8, "the interior was not painted"


def _decode_planes(path: Path) -> list[np.ndarray]:
    with av.open(str(path)) as container:
        return [f.to_ndarray(format="yuv420p") for f in container.decode(video=0)]


def _lossless_job(tmp_path: Path, video: Path, audio: Path) -> tuple[list[np.ndarray], list[np.ndarray]]:
    out = tmp_path / "out.mp4"
    cfg = JobConfig(video_encoding=VideoEncodingSpec(mode=EncodingMode.LOSSLESS))
    pipeline.run_files(cfg, Settings(), NeuralProcessor(ShapeBackend()), video, audio, out)
    return _decode_planes(video), _decode_planes(out)


def test_lossless_real_clip_changes_only_pixels_near_the_lips(media, tmp_path):
    """Every changed luma sample lies within the dilated mouth-and-jaw region of the input frame (the lips and the
    jaw line, measured here with the landmark model on the input), and most frames are changed."""
    video = media("talking_2.mp4")
    inputs, outputs = _lossless_job(tmp_path, video, media("speech_en_1.wav"))
    assert len(outputs) == len(inputs)
    detector, marker = FaceDetector(), FaceLandmarker()
    changed_frames = 0
    for k in range(0, len(inputs), 10):
        h = inputs[k].shape[0] * 2 // 3
        diff = inputs[k][:h] != outputs[k][:h]
        if not diff.any():
            continue
        changed_frames += 1
        bgr = cv2.cvtColor(inputs[k], cv2.COLOR_YUV2BGR_I420)
        face = detector.detect_frame(av.VideoFrame.from_ndarray(bgr, format="bgr24").reformat(format="yuv420p"))[0]
        points = marker.detect(bgr, face.box, face.landmarks[:2]).points
        lips = points[list(OUTER_LIPS) + list(JAW_LINE), :2].astype(np.float32)
        mouth_width = float(np.linalg.norm(points[61, :2] - points[291, :2]))
        face_h = FaceFrame.of(points).height
        # Dilation: the edit's margin (at least the jaw's ring beyond a chin moved by a 3-sigma opening) plus how
        # far that opening moves the lower lip, plus the landmark model's own frame-to-frame spread (smoothing).
        reach = max(MARGIN_OF_WIDTH * mouth_width, JAW_RING * JAW_SHARE * 0.12 * face_h) + 0.12 * face_h \
            + 0.05 * mouth_width
        ys, xs = np.nonzero(diff)
        dist = [-cv2.pointPolygonTest(cv2.convexHull(lips), (float(x), float(y)), True) for x, y in zip(xs, ys)]
        assert max(dist) <= reach, f"frame {k}: a pixel {max(dist):.1f} px from the lips changed (limit {reach:.1f})"
    assert changed_frames >= len(range(0, len(inputs), 10)) // 2


def test_lossless_clip_without_a_face_is_unchanged(tmp_path):
    video = synth.make_video(tmp_path / "in.mp4", seconds=1.0, size=(320, 240))
    audio = synth.make_wav(tmp_path / "speech.wav", seconds=1.0)
    inputs, outputs = _lossless_job(tmp_path, video, audio)
    assert len(outputs) == len(inputs)
    assert all(np.array_equal(a, b) for a, b in zip(inputs, outputs))


def test_unreadable_faces_pass_through_without_error():
    """A face the landmark model cannot read (here: no face at all in the box) is left as it is."""
    from lipsync_service.core.lips import LipTracker

    tracker = LipTracker(FaceLandmarker(), fps=25.0)
    frame = av.VideoFrame.from_ndarray(np.full((240, 320, 3), 128, np.uint8), format="bgr24").reformat(format="yuv420p")
    assert tracker.read(frame, 0, 1, (100.0, 60.0, 180.0, 160.0)) is None
    assert tracker.misses == 1



class _FaceEverywhere:
    """A detector that reports one face in every frame, where the picture holds none (test stand-in)."""

    def detect_frame(self, frame, rois=None, small=False):
        from lipsync_service.core.faces import Face

        eyes_mouth = np.array([[130, 95], [190, 95], [160, 125], [135, 150], [185, 150]], np.float32)
        return [Face(box=(110.0, 60.0, 210.0, 180.0), score=0.99, landmarks=eyes_mouth)]

    def smallest_face_px(self, width, height):
        return 40.0


def test_a_face_the_landmark_model_cannot_read_leaves_every_frame_as_it_was(tmp_path):
    """The stream runs to the end, every frame comes out bit for bit as it went in (lossless), and the job
    reports the frames as not lip-synced rather than failing."""
    video = synth.make_video(tmp_path / "in.mp4", seconds=1.0, size=(320, 240))
    audio = synth.make_wav(tmp_path / "speech.wav", seconds=1.0)
    out = tmp_path / "out.mp4"
    cfg = JobConfig(video_encoding=VideoEncodingSpec(mode=EncodingMode.LOSSLESS))
    processor = NeuralProcessor(ShapeBackend(), detector_factory=_FaceEverywhere)
    result = pipeline.run_files(cfg, Settings(), processor, video, audio, out)
    inputs, outputs = _decode_planes(video), _decode_planes(out)
    assert result.frames == len(inputs) == len(outputs) == 25
    assert all(np.array_equal(a, b) for a, b in zip(inputs, outputs))
    assert result.frames_without_face == 0 and result.frames_not_lipsynced == 25


def test_a_face_that_never_opened_its_mouth_gets_a_dark_cavity_not_streaks(mesh):
    """No stored interior yet: the opening is a shaded cavity in the seam's darkest colour, not stretched lip."""
    bgr, points = mesh
    opening, width = lip_ratios(points)
    target = target_lips(points, opening + 0.06, width)
    edit = warp_mouth(bgr, (0, 0), points, target, (bgr.shape[1], bgr.shape[0]))
    assert edit is not None
    before = edit.patch.copy()
    assert MouthBank().fill(edit, 0.5)
    inner = np.zeros(edit.alpha.shape, np.uint8)
    poly = np.array([target[i] for i in (78, 191, 80, 81, 82, 13, 312, 311, 310, 415, 308, 324, 318, 402, 317, 14,
                                         87, 178, 88, 95)]) - [edit.x, edit.y]
    cv2.fillPoly(inner, [np.round(poly).astype(np.int32)], 1)
    core = cv2.erode(inner, np.ones((5, 5), np.uint8)) > 0
    grey_before = cv2.cvtColor(before, cv2.COLOR_BGR2GRAY)[core].astype(float)
    grey_after = cv2.cvtColor(edit.patch, cv2.COLOR_BGR2GRAY)[core].astype(float)
    assert grey_after.mean() < 0.8 * grey_before.mean(), "the opening is not darker than the stretched seam"
    assert grey_after.std() < grey_before.std() + 1, "the cavity is smooth, not streaked"

"""Face detection on real talking-head clips: a face in (nearly) every frame, placed on the face."""

from __future__ import annotations

import av
import numpy as np
import pytest

from lipsync_service.core.faces import FaceDetector


@pytest.fixture(scope="module")
def detector() -> FaceDetector:
    return FaceDetector()


@pytest.mark.parametrize("clip", ["talking_1.mp4", "talking_2.mp4", "talking_3.mp4"])
def test_face_found_in_95_percent_of_frames(media, detector, clip):
    total = found = 0
    with av.open(str(media(clip))) as container:
        for frame in container.decode(video=0):
            total += 1
            faces = detector.detect_frame(frame)
            if faces:
                found += 1
                face = max(faces, key=lambda f: f.area)
                # Plausible placement: inside the frame, a sizeable square-ish box, mouth below the eyes.
                x1, y1, x2, y2 = face.box
                assert -0.1 * frame.width < x1 < x2 < 1.1 * frame.width
                assert 0.5 < face.width / face.height < 2.0
                eyes_y = face.landmarks[:2, 1].mean()
                mouth_y = face.landmarks[3:, 1].mean()
                assert y1 < eyes_y < mouth_y < y2
    assert total > 100
    assert found / total >= 0.95, f"{clip}: face found in {found}/{total} frames"


def test_no_face_in_a_flat_frame(detector):
    frame = av.VideoFrame.from_ndarray(np.full((240, 320, 3), 128, np.uint8), format="rgb24").reformat(format="yuv420p")
    assert detector.detect_frame(frame) == []


def test_boxes_are_in_full_frame_pixels(media, detector):
    """Detection runs on a downscaled copy; boxes must come back in the original frame's coordinates."""
    with av.open(str(media("face_static_720p_streamable.mp4"))) as container:
        frame = next(container.decode(video=0))
    small = FaceDetector(detect_side=160).detect_frame(frame)[0]
    big = detector.detect_frame(frame)[0]
    cx_small, cx_big = (small.box[0] + small.box[2]) / 2, (big.box[0] + big.box[2]) / 2
    assert abs(cx_small - cx_big) < 0.05 * big.width
    assert abs(small.width - big.width) < 0.2 * big.width
    assert big.width > 150  # the 720p clip's face is about 240 px wide


def test_search_around_a_known_face_finds_it_again(media, detector):
    """The tracker's cheap search (a square around the last box) finds the same face as a full search."""
    with av.open(str(media("talking_2.mp4"))) as container:
        frames = [f for _, f in zip(range(10), container.decode(video=0))]
    first = detector.detect_frame(frames[0])[0]
    cx, cy = (first.box[0] + first.box[2]) / 2, (first.box[1] + first.box[3]) / 2
    for frame in frames[1:]:
        full = detector.detect_frame(frame)[0]
        around = detector.detect_frame(frame, [(cx, cy, 2.2 * first.width)])
        assert len(around) == 1
        assert max(abs(a - b) for a, b in zip(around[0].box, full.box)) < 0.08 * full.width


def test_detect_image_on_bgr_arrays(media, detector):
    with av.open(str(media("talking_1.mp4"))) as container:
        frame = next(container.decode(video=0))
    from_frame = detector.detect_frame(frame)[0]
    from_image = detector.detect_image(frame.to_ndarray(format="bgr24"))[0]
    assert max(abs(a - b) for a, b in zip(from_frame.box, from_image.box)) < 0.05 * from_frame.width

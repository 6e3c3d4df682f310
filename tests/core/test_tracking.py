"""Tracking: stable ids, still crops for a still head at speed 0, fast follow at speed 1, speaker selection."""

from __future__ import annotations

import numpy as np
import pytest

from lipsync_service.core.faces import Face
from lipsync_service.core.select import TargetSelector, observations
from lipsync_service.core.tracking import FaceTracker, Observation, TrackingParams
from lipsync_service.speakers import FrameSpeakers, SpeakerBox


def _run(tracker: FaceTracker, boxes_per_frame: list[list[tuple]], detect_every: int = 1):
    """Feed observations with the processor's look-ahead and collect the faces of every frame."""
    radius = tracker.params.radius
    out = []
    for i, boxes in enumerate(boxes_per_frame):
        if i % detect_every == 0:
            tracker.observe(i, [Observation(box=b) for b in boxes])
        if i - radius >= 0:
            out.append(tracker.faces_at(i - radius))
    for j in range(max(0, len(boxes_per_frame) - radius), len(boxes_per_frame)):
        out.append(tracker.faces_at(j))
    return out


def test_still_head_with_detector_jitter_gives_a_still_crop_at_speed_0():
    rng = np.random.default_rng(0)
    base = np.array([300.0, 200.0, 500.0, 450.0])
    frames = [[tuple(base + rng.normal(0, 2.0, 4))] for _ in range(100)]
    faces = _run(FaceTracker(TrackingParams.for_speed(0, 25)), frames, detect_every=2)
    assert all(len(f) == 1 for f in faces)
    regions = {f[0].crop.pixel_region() for f in faces[10:]}
    assert len(regions) == 1, f"crop moved on a still head: {len(regions)} distinct crops"
    assert len({f[0].track_id for f in faces}) == 1


def test_fast_motion_is_followed_closely_at_speed_1_and_smoothed_at_speed_0():
    # The head moves 12 px per frame to the right, then stops.
    frames = [[(100.0 + 12 * min(i, 40), 100.0, 300.0 + 12 * min(i, 40), 350.0)] for i in range(80)]
    lag = {}
    for speed in (0, 1):
        faces = _run(FaceTracker(TrackingParams.for_speed(speed, 25)), frames)
        errors = [abs(f[0].crop.cx - (200.0 + 12 * min(i, 40))) for i, f in enumerate(faces)]
        lag[speed] = max(errors)
        assert errors[-1] < 0.03 * faces[-1][0].crop.side, "the crop must settle on the face once it stops"
    assert lag[1] < 12, f"speed 1 lags {lag[1]:.1f} px behind a fast head"
    assert lag[1] < lag[0]


def test_two_faces_keep_their_ids_when_they_cross_sizes():
    a = (50.0, 50.0, 150.0, 170.0)
    b = (400.0, 60.0, 520.0, 200.0)
    faces = _run(FaceTracker(TrackingParams.for_speed(1, 25)), [[a, b] if i % 2 else [b, a] for i in range(30)])
    ids = [{round(f.crop.cx): f.track_id for f in frame} for frame in faces]
    assert all(len(d) == 2 for d in ids)
    assert len({tuple(sorted(d.items())) for d in ids}) == 1, "ids swapped between faces"


def test_face_that_appears_later_is_not_drawn_before_it_appears():
    box = (100.0, 100.0, 200.0, 220.0)
    frames = [[] for _ in range(10)] + [[box] for _ in range(10)]
    faces = _run(FaceTracker(TrackingParams.for_speed(0, 25)), frames)
    assert [len(f) for f in faces] == [0] * 10 + [1] * 10


def _face(x1, y1, x2, y2):
    return Face(box=(x1, y1, x2, y2), score=0.99)


def test_without_speaker_data_the_largest_face_is_redrawn():
    tracker = FaceTracker(TrackingParams.for_speed(1, 25))
    tracker.observe(0, observations(None, lambda: [_face(0, 0, 50, 60), _face(100, 0, 200, 120)], tracker))
    chosen = TargetSelector().select(tracker.faces_at(0), None)
    assert len(chosen) == 1 and chosen[0].box == (100, 0, 200, 120)


def test_with_speaker_data_only_speaking_faces_and_several_at_once():
    tracker = FaceTracker(TrackingParams.for_speed(1, 25))
    speakers = FrameSpeakers(0, (SpeakerBox(0, 0, 50, 60, speaker_id=1, is_speaking=True),
                                 SpeakerBox(100, 0, 100, 120, speaker_id=2, is_speaking=False),
                                 SpeakerBox(300, 0, 80, 90, speaker_id=3, is_speaking=True)))
    detect_calls = []
    tracker.observe(0, observations(speakers, lambda: detect_calls.append(1) or [], tracker))
    chosen = TargetSelector().select(tracker.faces_at(0), speakers)
    assert sorted(f.speaker_id for f in chosen) == [1, 3]
    assert detect_calls == [], "client boxes need no detection"


def test_all_zero_box_falls_back_to_detection_for_that_speaker():
    tracker = FaceTracker(TrackingParams.for_speed(1, 25))
    speakers = FrameSpeakers(0, (SpeakerBox(0, 0, 0, 0, speaker_id=7, is_speaking=True),))
    obs = observations(speakers, lambda: [_face(10, 10, 40, 50), _face(100, 0, 200, 120)], tracker)
    tracker.observe(0, obs)
    chosen = TargetSelector().select(tracker.faces_at(0), speakers)
    assert len(chosen) == 1 and chosen[0].speaker_id == 7 and chosen[0].box == (100, 0, 200, 120)


def test_empty_speaker_list_means_detect_and_bypass_means_nothing():
    tracker = FaceTracker(TrackingParams.for_speed(1, 25))
    obs = observations(FrameSpeakers(0, ()), lambda: [_face(100, 0, 200, 120)], tracker)
    tracker.observe(0, obs)
    faces = tracker.faces_at(0)
    assert len(TargetSelector().select(faces, FrameSpeakers(0, ()))) == 1
    assert TargetSelector().select(faces, FrameSpeakers(0, (), bypass=True)) == []


@pytest.mark.parametrize("speed", [0, 1])
def test_lookahead_is_bounded(speed):
    p = TrackingParams.for_speed(speed, 60)
    assert p.radius <= 16

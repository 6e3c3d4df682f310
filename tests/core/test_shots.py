"""Shot boundaries on real talking-head frames: hard cuts, dissolves and fades, and no boundary inside a shot."""

from __future__ import annotations

import av
import cv2
import numpy as np
import pytest

from lipsync_service.core.shots import MAX_RUN, ShotDetector
from tests import footage, synth
from tests.conftest import media_path

SIZE = (320, 320)


@pytest.fixture(scope="module")
def people() -> tuple[list[np.ndarray], list[np.ndarray]]:
    a = footage.load(media_path("talking_1.mp4"), seconds=3.0, size=SIZE).frames
    b = footage.load(media_path("talking_3.mp4"), seconds=3.0, size=SIZE).frames
    return a, b


def _shots(frames: list[np.ndarray]) -> list:
    detector = ShotDetector()
    return [detector.observe(av.VideoFrame.from_ndarray(f, format="bgr24").reformat(format="yuv420p"), i)
            for i, f in enumerate(frames)]


def test_a_talking_head_is_one_shot(people) -> None:
    a, b = people
    assert {s.shot for s in _shots(a)} == {0}
    assert {s.shot for s in _shots(b)} == {0}
    assert not any(s.transition for s in _shots(a))


def test_a_hard_cut_starts_a_new_shot_at_its_frame(people) -> None:
    a, b = people
    shots = _shots(a[:40] + b[:40])
    assert [s.shot for s in shots] == [0] * 40 + [1] * 40
    assert shots[40].cut and not any(s.cut for k, s in enumerate(shots) if k != 40)


def test_a_dissolve_is_one_transition_and_the_shot_after_it_is_new(people) -> None:
    a, b = people
    mix = [cv2.addWeighted(a[40 + k], 1 - (k + 1) / 13, b[k], (k + 1) / 13, 0) for k in range(12)]
    shots = _shots(a[:40] + mix + b[12:52])
    assert shots[0].shot == 0 and shots[-1].shot == 1
    # Every frame of the dissolve is a transition frame, reported as it happens or marked from its first frame.
    marked = {k for k, s in enumerate(shots) if s.transition}
    for s in shots:
        if s.marked_from is not None:
            marked |= set(range(s.marked_from, 52))
    assert set(range(41, 52)) <= marked
    assert not marked & set(range(0, 40)) and not marked & set(range(53, len(shots)))


def test_a_fade_through_black_ends_the_shot(people) -> None:
    a, b = people
    out = [(a[30 + k] * (1 - (k + 1) / 8)).astype(np.uint8) for k in range(8)]
    into = [(b[k] * ((k + 1) / 8)).astype(np.uint8) for k in range(8)]
    shots = _shots(a[:30] + out + into + b[8:40])
    assert shots[0].shot == 0 and shots[-1].shot >= 1
    assert shots[37].transition  # black


def test_a_small_face_on_a_plain_wall_is_not_blank(people) -> None:
    a, _ = people
    wall = np.full((720, 1280, 3), 90, np.uint8)
    frames = []
    for f in a[:20]:
        frame = wall.copy()
        frame[300:364, 600:664] = cv2.resize(f, (64, 64), interpolation=cv2.INTER_AREA)
        frames.append(frame)
    assert not any(s.transition or s.cut for s in _shots(frames)[1:])


def test_footage_that_changes_a_cut_s_worth_every_frame_is_not_one_long_transition() -> None:
    # A fast pan or flicker jumps every frame; after a second of it that is the footage's own level of change, and
    # the frames after it can be edited again.
    frames = [synth.draw_frame(i, 160, 120)[..., ::-1].copy() for i in range(100)]
    shots = _shots(frames)
    assert not any(s.transition for s in shots[MAX_RUN + 2:])
    assert shots[-1].shot == shots[MAX_RUN + 2].shot

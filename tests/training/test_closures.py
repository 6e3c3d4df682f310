"""The closure measure: dips in the speech, and whether the mouth is closed at them."""

from __future__ import annotations

import numpy as np
import pytest

from lipsync_service.evaluation.closures import closed_level, closure_score, speech_dips


def _speech(frames: int = 100, dips: tuple[int, ...] = (20, 50, 80)) -> np.ndarray:
    env = np.full(frames, -20.0)
    for k in dips:
        env[k] = -40.0  # one quiet frame inside loud speech: a stop closure
    return env


def test_dips_are_short_quiet_frames_with_loud_speech_on_both_sides() -> None:
    env = _speech()
    env[60:64] = [-30.0, -45.0, -44.0, -30.0]  # a two-frame dip gives its quietest frame once
    env[90:] = -70.0  # the speech ends: the drop into silence is not a dip
    assert speech_dips(env) == [20, 50, 61, 80]
    shallow = _speech()
    shallow[50] = -25.0  # 5 dB is too shallow to be a closure
    assert speech_dips(shallow) == [20, 80]
    assert speech_dips(np.full(100, -20.0)) == []


def test_a_mouth_that_closes_at_the_dips_scores_a_lift_and_one_that_does_not_scores_none() -> None:
    env = _speech()
    talking = [0.08] * 100
    level = closed_level([0.0] * 10 + [0.1] * 90)  # the face's closed and open extremes
    assert level == pytest.approx(0.02)
    closing = list(talking)
    for k in (21, 49, 80):  # within a frame of every dip
        closing[k] = 0.0
    good = closure_score(closing, env, level)
    assert good.dips == 3 and good.closed_at_dips == 1.0
    # Loud frames (all but the 3 dips) with a closed frame within one frame: 20-22, 48-50 less the dips, 79, 81.
    assert good.closed_in_speech == pytest.approx(6 / 97)
    late = list(talking)
    late[23] = 0.0  # three frames after a dip: no credit
    assert closure_score(late, env, level).closed_at_dips == 0.0
    # Frames without a face neither count as closed nor leave a dip to score.
    blind = [None] * 100
    assert closure_score(blind, env, level).dips == 0
    assert closure_score(blind, env, level).closed_at_dips is None

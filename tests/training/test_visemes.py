"""The viseme measures of `eval` on synthetic landmark tracks and phones whose answer is known: no mediapipe, no
pocketsphinx, no video."""

from __future__ import annotations

import math

import numpy as np
import pytest

from lipsync_service.evaluation import visemes as vm
from lipsync_service.evaluation.phones import Phone

FPS = 25.0
EYES = 100.0  # px between the outer eye corners: the unit of width, lower-lip drop and jaw


def marks(opening: list[float | None], width: list[float] | None = None, drop: list[float] | None = None,
          jaw: list[float] | None = None) -> dict:
    """landmarks.py-style output whose shape tracks are the given ones (width, drop and jaw in eye spans)."""
    n = len(opening)
    width = width or [0.5] * n
    drop = drop or [0.4] * n
    jaw = jaw or [1.0] * n
    points: list[dict | None] = []
    for k in range(n):
        if opening[k] is None:
            points.append(None)
            continue
        cx, nose_y = 200.0, 200.0
        lips = [[cx, 250.0]] * 20
        lips[0] = [cx - width[k] * EYES / 2, 250.0]
        lips[10] = [cx + width[k] * EYES / 2, 250.0]
        lips[5] = [cx, nose_y + drop[k] * EYES]
        points.append({"lips": lips, "nose": [cx, nose_y], "chin": [cx, 100.0 + jaw[k] * EYES], "bridge": [cx, 100.0],
                       "eyes": [[cx - EYES / 2, 100.0], [cx + EYES / 2, 100.0]], "oval": []})
    return {"opening": opening, "points": points}


def phones_at(frames: list[str | None]) -> list[Phone]:
    """One phone per video frame (None: silence), each spanning exactly that frame."""
    return [Phone(p or "SIL", k / FPS, (k + 1) / FPS, "w") for k, p in enumerate(frames)]


def test_auc_counts_pairs_and_ties_half() -> None:
    assert vm.auc([2, 3], [0, 1]) == 1.0
    assert vm.auc([0, 1], [2, 3]) == 0.0
    assert vm.auc([1, 1], [1, 1]) == 0.5
    assert vm.auc([1, 3], [2]) == 0.5  # one pair above, one below
    assert vm.auc([2, 3], [2]) == 0.75  # a tie and a win
    with pytest.raises(ValueError):
        vm.auc([], [1])


def test_a_frame_takes_the_phone_at_its_centre() -> None:
    # At 25 fps frame k's centre is (k + 0.5) * 40 ms: P over 0-60 ms holds frame 0's centre (20 ms) only.
    phones = [Phone("P", 0.0, 0.06, "pa"), Phone("AA", 0.06, 0.2, "pa"), Phone("SIL", 0.2, 0.4, "<sil>")]
    assert vm.frame_phones(phones, FPS, 8) == ["P", "AA", "AA", "AA", "AA", None, None, None]
    assert vm.frame_phones(phones, FPS, 2) == ["P", "AA"]  # phones past the video are dropped


def test_window_min_looks_one_frame_either_way_and_skips_missing_faces() -> None:
    track = np.array([5.0, 1.0, 5.0, 5.0, math.nan, 5.0])
    assert list(vm.window_min(track)) == [1.0, 1.0, 1.0, 5.0, 5.0, 5.0]
    assert math.isnan(vm.window_min(np.array([math.nan, math.nan]))[0])


def _speech(reps: int = 8) -> list[str | None]:
    """A clip: silence, then reps of "maa naa bii fii uu eh daa" frame by frame (p/b/m at least three frames
    from t/d/n, as in most speech)."""
    unit = ["M", "AA", "AA", "N", "AA", "AA", "B", "IY", "IY", "F", "IY", "UW", "UW", "EH", "D", "AA", "AA"]
    return [None] * 5 + unit * reps + [None] * 5


def test_lips_closed_on_p_b_m_score_a_bilabial_contrast_of_one_even_a_frame_early() -> None:
    labels = _speech()
    open_ = [0.06 if p is not None else 0.0 for p in labels]
    on_time = [0.0 if p in vm.BILABIALS else v for p, v in zip(labels, open_)]
    s = vm.viseme_scores(marks(on_time), phones_at(labels), FPS)
    assert s.bilabial_contrast == 1.0 and s.closure_rate == 1.0
    # Closed one frame before each p/b/m (lips shut before the release): the +-1 frame tolerance still sees it
    # (t/d/n frames have the same window, so only those within two frames of a closure would share it).
    early = list(open_)
    for k, p in enumerate(labels):
        if p in vm.BILABIALS:
            early[k - 1] = 0.0
    s = vm.viseme_scores(marks(early), phones_at(labels), FPS)
    assert s.closure_rate == 1.0 and s.bilabial_contrast == 1.0
    # Two frames late is outside the tolerance: no better than chance.
    late = list(open_)
    for k, p in enumerate(labels):
        if p in vm.BILABIALS:
            late[k + 2] = 0.0
    assert vm.viseme_scores(marks(late), phones_at(labels), FPS).bilabial_contrast <= 0.5


def test_a_mouth_that_ignores_the_phones_scores_chance_and_an_inverted_one_scores_zero() -> None:
    labels = _speech(reps=40)
    rng = np.random.default_rng(3)
    noise = list(rng.uniform(0.01, 0.08, len(labels)))
    s = vm.viseme_scores(marks(noise, width=list(rng.uniform(0.4, 0.6, len(labels))),
                               drop=list(rng.uniform(0.3, 0.5, len(labels))),
                               jaw=list(rng.uniform(0.9, 1.1, len(labels)))), phones_at(labels), FPS)
    for value in (s.bilabial_contrast, s.labiodental_contrast, s.rounding_contrast):
        assert value == pytest.approx(0.5, abs=0.12)
    assert abs(s.jaw_coupling) < 0.2
    # Open wide on p/b/m, shut on t d n ...: 0.
    inverted = [0.1 if p in vm.BILABIALS else 0.0 if p in vm.ALVEOLARS else 0.05 for p in labels]
    assert vm.viseme_scores(marks(inverted), phones_at(labels), FPS).bilabial_contrast == 0.0


def test_closure_rate_counts_phones_closed_below_the_20th_percentile_of_speech() -> None:
    labels = _speech(reps=10)  # 20 p/b/m phones, one frame each
    rng = np.random.default_rng(0)
    opening = [float(v) for v in rng.uniform(0.03, 0.08, len(labels))]
    bilabial_frames = [k for k, p in enumerate(labels) if p in vm.BILABIALS]
    for k in bilabial_frames[:5]:  # 5 of 20 closed, the rest as open as any speech frame
        opening[k] = 0.0
    s = vm.viseme_scores(marks(opening), phones_at(labels), FPS)
    # The 20th percentile of speech openings lies above 0, so the 5 closed phones count; the open ones count only
    # where a neighbour within one frame dips under it by chance.
    level = np.percentile([v for v, p in zip(opening, labels) if p is not None], 20)
    expected = sum(min(opening[k - 1:k + 2]) < level for k in bilabial_frames) / len(bilabial_frames)
    assert s.closure_rate == pytest.approx(expected) and s.counts["closure_rate"] == 20
    assert 0.25 <= s.closure_rate < 1.0


def test_lower_lip_raised_on_f_v_scores_labiodental_contrast_of_one() -> None:
    labels = _speech()
    drop = [0.30 if p in vm.LABIODENTALS else 0.45 for p in labels]
    s = vm.viseme_scores(marks([0.04] * len(labels), drop=drop), phones_at(labels), FPS)
    assert s.labiodental_contrast == 1.0
    # Raised on the bilabials instead (they are not in the comparison set): f/v alone decide.
    drop_b = [0.30 if p in vm.BILABIALS else 0.45 for p in labels]
    assert vm.viseme_scores(marks([0.04] * len(labels), drop=drop_b), phones_at(labels), FPS).labiodental_contrast \
        <= 0.5


def test_rounding_contrast_is_one_for_narrow_oo_and_zero_when_inverted() -> None:
    labels = _speech()
    width = [0.40 if p in vm.ROUNDED else 0.55 if p in vm.SPREAD_VOWELS else 0.5 for p in labels]
    s = vm.viseme_scores(marks([0.04] * len(labels), width=width), phones_at(labels), FPS)
    assert s.rounding_contrast == 1.0
    inverted = [0.60 if p in vm.ROUNDED else 0.45 if p in vm.SPREAD_VOWELS else 0.5 for p in labels]
    assert vm.viseme_scores(marks([0.04] * len(labels), width=inverted), phones_at(labels), FPS).rounding_contrast \
        == 0.0


def test_jaw_coupling_is_the_correlation_of_opening_and_chin_over_speech_only() -> None:
    labels = _speech()
    rng = np.random.default_rng(1)
    opening = [float(v) for v in rng.uniform(0.0, 0.08, len(labels))]
    jaw = [1.0 + 2.0 * v for v in opening]
    # Outside speech the jaw does something else: those frames are left out.
    for k, p in enumerate(labels):
        if p is None:
            jaw[k] = 3.0 - 10 * opening[k]
    s = vm.viseme_scores(marks(opening, jaw=jaw), phones_at(labels), FPS)
    assert s.jaw_coupling == pytest.approx(1.0)
    assert s.counts["jaw_coupling"] == sum(p is not None for p in labels)


def test_too_few_frames_or_no_face_leave_a_measure_unmeasured_with_the_reason() -> None:
    labels = ["AA", "M", "AA", "N", "AA"] + [None] * 5
    s = vm.viseme_scores(marks([0.04] * len(labels)), phones_at(labels), FPS)
    assert s.bilabial_contrast is None and "too few frames: 1 of b/m/p" in s.not_measured["bilabial_contrast"]
    assert s.closure_rate is None and s.jaw_coupling is None and s.rounding_contrast is None
    assert set(s.not_measured) == set(vm.MEASURES)
    # No face in any frame: nothing is scored, nothing raises.
    blind = vm.viseme_scores(marks([None] * 60), phones_at(_speech())[:60], FPS)
    assert all(getattr(blind, m) is None for m in vm.MEASURES)
    # Old landmark files without eyes and bridge: the opening measures still work.
    labels = _speech()
    old = marks([0.0 if p in vm.BILABIALS else 0.05 for p in labels])
    for pts in old["points"]:
        del pts["eyes"], pts["bridge"]
    s = vm.viseme_scores(old, phones_at(labels), FPS)
    assert s.bilabial_contrast == 1.0 and s.rounding_contrast is None
    assert vm.unmeasured("no phones").not_measured == dict.fromkeys(vm.MEASURES, "no phones")


@pytest.mark.slow  # MediaPipe over 11 short clips in the eval venv
def test_real_grid_speakers_with_their_transcripts_make_the_shapes_and_shifted_phones_do_not(media) -> None:
    """Every measure on real footage whose words are known: the 11 GRID clips, landmarks and phones joined end
    to end (825 frames, 10 speakers)."""
    from dataclasses import replace

    from lipsync_service.errors import Unavailable
    from lipsync_service.evaluation import DEFAULT_LANDMARK_PYTHON, load_speech, measure_landmarks
    from lipsync_service.evaluation import phones as ph
    from tests.training.grid import grid_transcript

    if not DEFAULT_LANDMARK_PYTHON.exists():
        pytest.skip(f"eval venv not found at {DEFAULT_LANDMARK_PYTHON}: run `lipsync-service eval-env`")
    try:
        ph._pocketsphinx()
    except Unavailable as exc:
        pytest.skip(str(exc))
    clips = ["bbaf2n", "brbk7n", "id2_swwp2s", "lbax4n", "lbbc2a", "lrwp9a", "lwbsza", "pwij3p", "sbia1a", "sbwe5n",
             "swiz3n"]
    joined: dict = {"opening": [], "points": []}
    phones: list[Phone] = []
    start = 0.0
    for clip in clips:
        video = media(f"train/lipnet_grid_{clip}.mpg")
        m = measure_landmarks(video)
        a = ph.align(load_speech(video), grid_transcript(video.name))
        assert a.problem is None, (clip, a.problem)
        joined["opening"] += m["opening"]
        joined["points"] += m["points"]
        phones += [replace(p, start=p.start + start, end=p.end + start) for p in a.phones]
        start += len(m["opening"]) / FPS
    s = vm.viseme_scores(joined, phones, FPS)
    assert s.not_measured == {}
    assert s.bilabial_contrast > 0.75 and s.closure_rate > 0.7 and s.labiodental_contrast > 0.7
    assert s.rounding_contrast > 0.65 and s.jaw_coupling > 0.5
    # The same faces against phones half a second off: chance.
    late = vm.viseme_scores(joined, [replace(p, start=p.start + 0.5, end=p.end + 0.5) for p in phones], FPS)
    for value in (late.bilabial_contrast, late.labiodental_contrast, late.rounding_contrast):
        assert value is not None and abs(value - 0.5) < 0.15
    assert late.closure_rate is not None and late.closure_rate < 0.5

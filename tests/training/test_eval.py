"""Evaluation metrics: sync correlation and lag, loudness envelope, PSNR outside the lower face, landmarks, report."""

from __future__ import annotations

import math
from dataclasses import asdict
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from lipsync_service import evaluation as ev


def test_sync_score_finds_correlation_and_lag() -> None:
    rng = np.random.default_rng(0)
    env = rng.normal(size=300)
    mouth_same = list(env + 0.1 * rng.normal(size=300))
    score = ev.sync_score(mouth_same, env)
    assert score.r_lag0 > 0.9 and score.best_lag == 0
    # The mouth follows the sound two frames late.
    late = list(np.concatenate([rng.normal(size=2), env[:-2]]))
    score = ev.sync_score(late, env)
    assert score.best_lag == 2 and score.r_best > 0.9 and score.r_lag0 < 0.3
    # Unrelated mouth movement scores about 0; frames without a face are left out.
    noise = [None if k % 10 == 0 else float(v) for k, v in enumerate(rng.normal(size=300))]
    score = ev.sync_score(noise, env)
    assert abs(score.r_lag0) < 0.2 and score.frames == 270


def test_loudness_envelope_follows_speech_bursts() -> None:
    sr, fps = 16000, 25.0
    t = np.arange(2 * sr) / sr
    on = (t >= 0.4) & (t < 1.2)
    speech = (0.5 * np.sin(2 * np.pi * 800 * t) * on).astype(np.float32)
    env = ev.loudness_envelope(speech, fps, 50)
    assert env.shape == (50,)
    assert env[15] - env[5] > 40 and env[15] - env[40] > 40  # 40 dB above silence inside the burst
    hum = (0.5 * np.sin(2 * np.pi * 60 * t)).astype(np.float32)  # outside the speech band
    assert ev.loudness_envelope(hum, fps, 50).max() < env.max() - 30


def _write_video(path: Path, frames: list[np.ndarray]) -> None:
    import av

    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264rgb", rate=Fraction(25))
        stream.width, stream.height = frames[0].shape[1], frames[0].shape[0]
        stream.pix_fmt = "rgb24"
        stream.options = {"qp": "0"}
        for img in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)


def test_psnr_outside_ignores_the_lower_face_only(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    base = [rng.integers(0, 256, (64, 64, 3), dtype=np.uint8) for _ in range(3)]
    inside = [f.copy() for f in base]
    for f in inside:
        f[40:60, 20:44] = 0  # change confined to the lower-face box
    _write_video(tmp_path / "a.mp4", base)
    _write_video(tmp_path / "b.mp4", inside)
    boxes = [[20, 40, 44, 60]] * 3
    assert ev.psnr_outside(tmp_path / "b.mp4", tmp_path / "a.mp4", boxes) == math.inf
    outside = [f.copy() for f in inside]
    for f in outside:
        f[0:4, 0:4] = np.clip(f[0:4, 0:4].astype(int) + 20, 0, 255)
    _write_video(tmp_path / "c.mp4", outside)
    psnr = ev.psnr_outside(tmp_path / "c.mp4", tmp_path / "a.mp4", boxes)
    assert 25 < psnr < 60
    # The eval's single pass over both videos gives the same PSNR (no face points: no fidelity frames).
    marks = {"lower_face": boxes, "points": [None] * 3}
    outside, fid = ev.compare_videos(tmp_path / "c.mp4", tmp_path / "a.mp4", marks, marks, None)
    assert outside == psnr and fid.frames == 0


def test_landmarks_measure_mouth_opening_on_real_footage(media) -> None:
    if not ev.DEFAULT_LANDMARK_PYTHON.exists():
        pytest.skip(f"eval venv not found at {ev.DEFAULT_LANDMARK_PYTHON}: run `lipsync-service eval-env`")
    video = media("train/lipnet_grid_bbaf2n.mpg")
    marks = ev.measure_landmarks(video)
    opening = [v for v in marks["opening"] if v is not None]
    assert len(marks["opening"]) == 75 and len(opening) >= 70
    # A GRID speaker reads a sentence: the mouth opens and closes.
    assert max(opening) > 3 * (min(opening) + 1e-3)
    # And it follows his own speech (the reference measure of docs/models-contract.md#sync-measure).
    env = ev.loudness_envelope(ev.load_speech(video), 25.0, 75)
    assert ev.sync_score(marks["opening"], env).r_best > 0.3
    # The points the fidelity measures need, for every frame with a face, rounded to 0.1 px.
    assert len(marks["points"]) == 75
    for pts in marks["points"]:
        if pts is None:
            continue
        assert len(pts["lips"]) == 20 and len(pts["oval"]) == 36 and len(pts["nose"]) == len(pts["chin"]) == 2
        assert len(pts["eyes"]) == 2 and pts["eyes"][0][0] < pts["bridge"][0] < pts["eyes"][1][0]  # the viseme unit
        assert pts["oval"][0][1] < pts["nose"][1] < pts["chin"][1]  # forehead above the nose tip above the chin
        assert all(round(v, 1) == v for xy in pts["lips"] + pts["oval"] for v in xy)
    # The video against itself: every fidelity measure at its identity value, on the real landmarks.
    fid = ev.fidelity_scores(video, video, marks, marks, env)
    assert fid.frames == len(opening) and fid.lip_sharpness == fid.rest_sharpness == fid.lip_motion == 1.0
    assert fid.rest_psnr_db == math.inf
    assert ev.compare_videos(video, video, marks, marks, env) == (math.inf, fid)
    scores = {"frames": 75, "duration_s": 3.0, "psnr_outside_lower_face_db": math.inf,
              "model_output": asdict(ev.sync_score(marks["opening"], env)), "baseline": asdict(ev.sync_score(
                  marks["opening"], env)), "fidelity": asdict(fid), "targets": ev.TARGETS}
    assert set(scores["fidelity"]) >= {"lip_sharpness", "rest_sharpness", "rest_psnr_db", "lip_motion",
                                       "lip_motion_silent", "silent_frames", "silence_threshold_db"}
    assert "lip sharpness" in ev.format_table(scores)


def _scores(lip: float | None, rest_psnr: float, r0: float, lag: int) -> dict:
    sync = {"r_lag0": r0, "best_lag": lag, "r_best": max(r0, 0.5), "frames": 100}
    return {"frames": 100, "duration_s": 4.0, "psnr_outside_lower_face_db": math.inf,
            "model_output": sync, "baseline": {**sync, "r_lag0": 0.01}, "targets": ev.TARGETS,
            "fidelity": {"lip_sharpness": lip, "rest_sharpness": 0.95, "rest_psnr_db": rest_psnr,
                         "lip_motion": 0.8, "lip_motion_silent": 0.3, "frames": 100, "output_face_missing": 0,
                         "silent_frames": 12, "silence_threshold_db": -42.0}}


def test_format_table_shows_every_measure_with_its_target_and_verdict() -> None:
    table = ev.format_table(_scores(1.0, 40.0, 0.5, 0))
    for text in ("lip sharpness", "0.7-1.3", "rest of lower face sharpness", ">= 0.9",
                 "rest of lower face PSNR (the jaw moves with the mouth)", "40.00 dB",
                 "lip motion in silence (12 frames < -42.0 dB)", "PSNR outside the lower face",
                 "r lag0 >= 0.35 [ok]", "best lag within -1..+1 [ok]", "inf dB"):
        assert text in table, text
    assert "MISS" not in table and "n/a" not in table
    bad = ev.format_table(_scores(0.4, 30.0, 0.2, 3))
    assert bad.count("MISS") == 3  # lip sharpness, r lag 0, best lag (the rest's PSNR has no target: the jaw moves)
    assert "n/a" in ev.format_table(_scores(None, 40.0, 0.5, 0))  # no face: no lip measure


def test_format_table_shows_closures_with_their_lift() -> None:
    scores = _scores(1.0, 40.0, 0.5, 0)
    closure = {"dips": 40, "closed_at_dips": 0.6, "closed_in_speech": 0.2, "closed_level": 0.021}
    scores["closures"] = {"model_output": closure,
                          "baseline": {**closure, "closed_at_dips": 0.25, "closed_in_speech": 0.25}}
    table = ev.format_table(scores)
    assert "opening <= 0.021" in table
    out = next(line for line in table.splitlines() if line.strip().startswith("lip-synced output") and "0.60" in line)
    assert out.split()[-4:] == ["40", "0.60", "0.20", "3.00"]
    base = next(line for line in table.splitlines() if "baseline" in line and "0.25" in line)
    assert base.split()[-1] == "1.00"


def test_format_table_shows_the_visemes_with_their_targets_and_what_was_not_measured() -> None:
    from lipsync_service.evaluation.visemes import VisemeScores, unmeasured

    scores = _scores(1.0, 40.0, 0.5, 0)
    out = VisemeScores(0.52, 0.41, None, 0.74, 0.38, not_measured={"labiodental_contrast": "too few frames: 3 of f/v"})
    scores["phones"] = {"speech": {"source": "recognised", "text": "hello", "words": 120, "phones": 410,
                                   "words_fit": 0.8, "posterior": 0.55, "left_out": [], "problem": None},
                        "reference_speech": {"source": "recognised", "text": "", "words": 0, "phones": 0,
                                             "words_fit": None, "posterior": 0.27, "left_out": [],
                                             "problem": "not recognised as English speech"}}
    scores["visemes"] = {"model_output": asdict(out), "baseline": asdict(VisemeScores(0.5, 0.3, 0.5, 0.6, 0.2)),
                         "reference": asdict(unmeasured("not recognised as English speech"))}
    table = ev.format_table(scores)
    assert "speech: recognised, then aligned, 120 words, 410 phones, 80% of words fit, posterior 0.55" in table
    assert "own speech of the video: recognised, then aligned" in table and "-- not recognised as English" in table
    row = next(line for line in table.splitlines() if line.strip().startswith("lip-synced output") and "0.52" in line)
    assert row.split()[-5:] == ["0.52", "0.41", "n/a", "0.74", "0.38"]
    target = next(line for line in table.splitlines() if line.strip().startswith("target (output)") and "0.65" in line)
    assert "[bilabial MISS, closure MISS, rounding ok, jaw MISS]" in target
    assert "not measured, lip-synced output, labiodental contrast: too few frames: 3 of f/v" in table
    assert "not measured, reference (real footage, own speech): not recognised as English speech" in table


def test_phone_scores_without_pocketsphinx_or_with_bad_speech_leave_every_measure_unmeasured(monkeypatch) -> None:
    from lipsync_service.errors import Unavailable
    from lipsync_service.evaluation import runner
    from lipsync_service.evaluation.phones import PhoneAlignment
    from lipsync_service.evaluation.visemes import MEASURES

    def missing(speech, transcript=None):
        raise Unavailable("pocketsphinx is not installed: pip install 'lipsync-service[eval]'")

    monkeypatch.setattr(runner, "align", missing)
    rows = {"model_output": {"opening": [0.1] * 50, "points": [None] * 50}, "baseline": {"opening": [], "points": []}}
    alignment, scores = runner.phone_scores(np.zeros(16000, np.float32), None, rows, 25.0)
    assert alignment is None and set(scores) == set(rows)
    assert all(s.not_measured == dict.fromkeys(MEASURES, "pocketsphinx is not installed: pip install "
                                               "'lipsync-service[eval]'") for s in scores.values())
    monkeypatch.setattr(runner, "align", lambda speech, transcript=None: PhoneAlignment(
        "transcript", "bin blue", problem="the transcript does not match the speech: 0 of 2 words fit"))
    alignment, scores = runner.phone_scores(np.zeros(16000, np.float32), "bin blue", rows, 25.0)
    assert alignment is not None and scores["baseline"].bilabial_contrast is None
    assert scores["baseline"].not_measured["jaw_coupling"].startswith("the transcript does not match")

"""`lipsync-service eval`: lip-sync a clip with the current default model, then score the output, the unchanged
video and the real footage with its own speech against the independent landmark model."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from lipsync_service.errors import InvalidInput, LipsyncError, Unavailable
from lipsync_service.evaluation.closures import closed_level, closure_score
from lipsync_service.evaluation.landmarks import DEFAULT_LANDMARK_PYTHON, measure_landmarks
from lipsync_service.evaluation.phones import PhoneAlignment, align
from lipsync_service.evaluation.preservation import compare_videos
from lipsync_service.evaluation.report import TARGETS
from lipsync_service.evaluation.speech import load_speech, loudness_envelope, write_wav
from lipsync_service.evaluation.sync import sync_score
from lipsync_service.evaluation.visemes import VisemeScores, unmeasured, viseme_scores

if TYPE_CHECKING:
    from lipsync_service.settings import Settings


def _fps(video: Path) -> float:
    import av

    with av.open(str(video)) as c:
        s = c.streams.video[0]
        return float(s.average_rate or s.guessed_rate)


def phone_scores(speech: np.ndarray, transcript: str | None, rows: dict[str, dict],
                 fps: float) -> tuple[PhoneAlignment | None, dict[str, VisemeScores]]:
    """Align a speech track to phones and score the viseme measures of every video heard with it.

    Never raises for what the speech holds: an alignment with a problem, or no pocketsphinx, leaves every
    measure None with the reason.

    Args:
        speech: 16 kHz mono samples.
        transcript: the words spoken (None: recognise them).
        rows: row name -> `measure_landmarks` output of a video heard with this speech from its first frame.
        fps: the videos' frame rate.

    Returns:
        (the alignment, or None without pocketsphinx; row name -> VisemeScores).
    """
    try:
        alignment = align(speech, transcript)
    except Unavailable as exc:  # no pocketsphinx
        return None, {row: unmeasured(str(exc)) for row in rows}
    if alignment.problem is not None:
        return alignment, {row: unmeasured(alignment.problem) for row in rows}
    return alignment, {row: viseme_scores(marks, alignment.phones, fps) for row, marks in rows.items()}


def evaluate(video: Path, audio: Path, out_dir: Path, extend: str = "forward", settings: Settings | None = None,
             landmark_python: Path = DEFAULT_LANDMARK_PYTHON, reference_audio: Path | None = None,
             transcript: str | None = None, reference_transcript: str | None = None) -> dict:
    """Lip-sync `video` to `audio` (video extended to the speech's length) and score it.

    Args:
        video: input MP4 (H.264).
        audio: speech (any format PyAV reads).
        out_dir: where output.mp4, baseline.mp4, scores.json and phones.json (the aligned words and phones) go.
        extend: "forward" or "reverse" (EXTEND_VIDEO).
        settings: service settings (model repository, backend); default from the environment.
        landmark_python: the eval venv's python.
        reference_audio: the video's own speech for the reference score; default its own audio track, if any.
        transcript: the words of `audio`, for the phone alignment (None: recognised by pocketsphinx).
        reference_transcript: the words of the video's own speech (None: recognised).

    Returns:
        the scores (also written to out_dir/scores.json).
    """
    from lipsync_service import pipeline
    from lipsync_service.core.factory import build_processor
    from lipsync_service.core.processor import PassThroughProcessor
    from lipsync_service.job import (
        AudioCodec,
        EncodingMode,
        ExtendVideo,
        JobConfig,
        VideoEncodingSpec,
    )
    from lipsync_service.settings import get_settings

    settings = settings or get_settings()
    if not Path(landmark_python).exists():  # fail before minutes of lip-syncing, not after
        raise LipsyncError(f"landmark venv not found at {landmark_python}: create it with "
                           "`lipsync-service eval-env` or pass --landmark-python")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    speech = load_speech(audio)
    wav = out_dir / "speech.wav"
    write_wav(wav, speech)
    cfg = JobConfig(input_audio_codec=AudioCodec.WAV, extend_video=ExtendVideo(extend),
                    video_encoding=VideoEncodingSpec(mode=EncodingMode.LOSSLESS))
    output, baseline = out_dir / "output.mp4", out_dir / "baseline.mp4"
    processor = build_processor(settings)
    try:
        pipeline.run_files(cfg, settings, processor, video, wav, output)
    finally:
        processor.close()
    pipeline.run_files(cfg, settings, PassThroughProcessor(), video, wav, baseline)
    fps = _fps(output)
    marks_out = measure_landmarks(output, landmark_python)
    marks_base = measure_landmarks(baseline, landmark_python)
    frames = len(marks_out["opening"])
    envelope = loudness_envelope(speech, fps, frames)
    # One threshold for "closed" from the unchanged face, so all three rows judge the same lips alike.
    level = closed_level(marks_base["opening"])
    outside_db, fidelity = compare_videos(output, baseline, marks_out, marks_base, envelope)
    scores: dict = {
        "video": str(video), "audio": str(audio), "frames": frames, "fps": fps,
        "duration_s": frames / fps, "model": processor.model_info,
        "model_output": asdict(sync_score(marks_out["opening"], envelope)),
        "baseline": asdict(sync_score(marks_base["opening"], envelope)),
        "psnr_outside_lower_face_db": outside_db,
        "fidelity": asdict(fidelity),
        "closures": {"model_output": asdict(closure_score(marks_out["opening"], envelope, level)),
                     "baseline": asdict(closure_score(marks_base["opening"], envelope, level))},
        "targets": TARGETS,
    }
    alignment, visemes = phone_scores(speech, transcript, {"model_output": marks_out, "baseline": marks_base}, fps)
    alignments = {"speech": alignment}
    own = None
    if reference_audio is not None:
        own = load_speech(reference_audio)
    else:
        try:
            own = load_speech(video)
        except InvalidInput:
            own = None
    if own is not None and len(own):
        marks_in = measure_landmarks(video, landmark_python)
        n = len(marks_in["opening"])
        own_envelope = loudness_envelope(own, _fps(video), n)
        scores["reference"] = asdict(sync_score(marks_in["opening"], own_envelope))
        scores["closures"]["reference"] = asdict(closure_score(marks_in["opening"], own_envelope, level))
        own_alignment, own_visemes = phone_scores(own, reference_transcript, {"reference": marks_in}, _fps(video))
        alignments["reference_speech"] = own_alignment
        visemes.update(own_visemes)
    scores["phones"] = {key: None if a is None else a.summary() for key, a in alignments.items()}
    scores["visemes"] = {row: asdict(v) for row, v in visemes.items()}
    (out_dir / "phones.json").write_text(json.dumps(
        {key: None if a is None else a.segments() for key, a in alignments.items()}))
    (out_dir / "scores.json").write_text(json.dumps(scores, indent=2))
    return scores


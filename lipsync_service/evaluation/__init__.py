"""`lipsync-service eval`: lip-sync a video to a speech track and score sync and preservation.

Sync: Pearson correlation, at lag 0 and at the best lag within +-6 frames, between the mouth opening of
the output, measured by an independent landmark model (MediaPipe Face Mesh, run in its own venv as a
subprocess: `lipsync-service eval-env` creates it), and the per-frame loudness envelope of the speech. Preservation: PSNR
outside the lower face between the output and the unchanged input (both written losslessly, the input
extended the same way). The same sync scores are reported for the unchanged video with that speech
(baseline, about 0) and, when the input video has its own speech, for the real footage with it (reference).
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
import wave
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from lipsync_service.errors import InvalidInput, LipsyncError
from lipsync_service.media.types import MODEL_SAMPLE_RATE

# The landmark script and the script that builds its venv ship inside this package.
LANDMARK_ENV = Path(__file__).resolve().parent / "landmark_env"
LANDMARK_SCRIPT = LANDMARK_ENV / "landmarks.py"
CREATE_ENV_SCRIPT = LANDMARK_ENV / "create.sh"
DEFAULT_LANDMARK_PYTHON = Path.home() / ".cache" / "lipsync-service" / "eval-venv" / "bin" / "python"
MAX_LAG = 6
# Speech band used for the loudness envelope (where voiced energy and formants are).
BAND_HZ = (300.0, 3000.0)


@dataclass
class SyncScore:
    """Sync of mouth opening with speech loudness.

    Attributes:
        r_lag0: Pearson r at lag 0.
        best_lag: lag (frames, positive: mouth after sound) with the highest r within +-MAX_LAG.
        r_best: r at that lag.
        frames: frames scored (a face found by the landmark model).
    """

    r_lag0: float
    best_lag: int
    r_best: float
    frames: int


def load_speech(path: Path) -> np.ndarray:
    """Any audio file's first track as 16 kHz mono float32.

    Raises:
        InvalidInput: no readable audio track.
    """
    import av

    try:
        with av.open(str(path)) as container:
            if not container.streams.audio:
                raise InvalidInput(f"{path} has no audio track")
            resampler = av.AudioResampler(format="flt", layout="mono", rate=MODEL_SAMPLE_RATE)
            chunks = [o.to_ndarray().reshape(-1) for f in container.decode(container.streams.audio[0])
                      for o in resampler.resample(f)]
            chunks += [o.to_ndarray().reshape(-1) for o in resampler.resample(None)]
    except av.FFmpegError as exc:
        raise InvalidInput(f"cannot read audio from {path}: {exc}") from exc
    return np.concatenate(chunks).astype(np.float32) if chunks else np.zeros(0, np.float32)


def write_wav(path: Path, samples: np.ndarray, rate: int = MODEL_SAMPLE_RATE) -> None:
    """16-bit mono WAV."""
    pcm = (np.clip(samples, -1, 1) * 32767).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm.tobytes())


def loudness_envelope(speech: np.ndarray, fps: float, frames: int, rate: int = MODEL_SAMPLE_RATE) -> np.ndarray:
    """Per-frame loudness (dB) of the 300-3000 Hz band, over a two-frame window centred on each frame.

    Args:
        speech: mono samples.
        fps: video frame rate.
        frames: number of frames.
        rate: sample rate.

    Returns:
        float64 [frames].
    """
    spec = np.fft.rfft(speech.astype(np.float64))
    freqs = np.fft.rfftfreq(len(speech), 1.0 / rate)
    spec[(freqs < BAND_HZ[0]) | (freqs > BAND_HZ[1])] = 0
    band = np.fft.irfft(spec, n=len(speech))
    half = int(rate / fps)
    out = np.empty(frames)
    for k in range(frames):
        centre = int(round(k * rate / fps + rate / (2 * fps)))
        seg = band[max(0, centre - half): max(0, centre + half)]
        out[k] = 10 * math.log10(float(np.mean(seg * seg)) + 1e-10) if len(seg) else -100.0
    return out


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson r of two equal-length series (0 when either is constant)."""
    a = a - a.mean()
    b = b - b.mean()
    den = math.sqrt(float((a * a).sum() * (b * b).sum()))
    return float((a * b).sum() / den) if den > 0 else 0.0


def sync_score(opening: list[float | None], envelope: np.ndarray, max_lag: int = MAX_LAG) -> SyncScore:
    """Correlate mouth opening with loudness at lags -max_lag..max_lag (frames with a face only).

    Args:
        opening: per-frame mouth opening, None where no face was found.
        envelope: per-frame loudness.
        max_lag: largest lag tried.

    Returns:
        the SyncScore.
    """
    n = min(len(opening), len(envelope))
    mouth = np.array([np.nan if v is None else v for v in opening[:n]], np.float64)
    env = np.asarray(envelope[:n], np.float64)

    def r_at(lag: int) -> float:
        # lag > 0 compares the mouth at frame k + lag with the sound at frame k.
        m = mouth[lag:] if lag >= 0 else mouth[:lag]
        e = env[: n - lag] if lag >= 0 else env[-lag:]
        ok = ~np.isnan(m)
        return pearson(m[ok], e[ok]) if ok.sum() > 2 else 0.0

    lags = {lag: r_at(lag) for lag in range(-max_lag, max_lag + 1)}
    best = max(lags, key=lambda k: lags[k])
    return SyncScore(lags[0], best, lags[best], int((~np.isnan(mouth)).sum()))


def measure_landmarks(video: Path, python: Path = DEFAULT_LANDMARK_PYTHON) -> dict:
    """Run the independent landmark model over a video (in its own venv).

    Returns:
        {"opening": [float | None per frame], "lower_face": [[x0, y0, x1, y1] | None per frame]}.

    Raises:
        LipsyncError: the eval venv or the script is missing, or the model failed.
    """
    if not Path(python).exists():
        raise LipsyncError(f"landmark venv not found at {python}: create it with `lipsync-service eval-env` "
                           "or pass --landmark-python")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "landmarks.json"
        proc = subprocess.run([str(python), str(LANDMARK_SCRIPT), str(video), str(out)],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            raise LipsyncError(f"landmark model failed on {video}: {proc.stderr.strip()[-500:]}")
        return json.loads(out.read_text())


def psnr_outside(output: Path, original: Path, lower_face: list) -> float:
    """PSNR (dB) over all pixels outside the lower-face boxes, pooled over frames (inf when identical).

    Args:
        output: the lip-synced video.
        original: the unchanged video, same frames and size.
        lower_face: per-frame [x0, y0, x1, y1] from the original (None: the whole frame is compared).
    """
    import av

    se, count = 0.0, 0
    with av.open(str(output)) as a, av.open(str(original)) as b:
        for k, (fa, fb) in enumerate(zip(a.decode(a.streams.video[0]), b.decode(b.streams.video[0]))):
            x = fa.to_ndarray(format="rgb24").astype(np.int32)
            y = fb.to_ndarray(format="rgb24").astype(np.int32)
            keep = np.ones(x.shape[:2], bool)
            box = lower_face[k] if k < len(lower_face) else None
            if box is not None:
                x0, y0, x1, y1 = (int(round(v)) for v in box)
                keep[max(0, y0):max(0, y1), max(0, x0):max(0, x1)] = False
            d = (x - y)[keep]
            se += float((d * d).sum())
            count += d.size
    if count == 0 or se == 0:
        return math.inf
    return 10 * math.log10(255.0**2 / (se / count))


def _fps(video: Path) -> float:
    import av

    with av.open(str(video)) as c:
        s = c.streams.video[0]
        return float(s.average_rate or s.guessed_rate)


def evaluate(video: Path, audio: Path, out_dir: Path, extend: str = "forward", settings=None,
             landmark_python: Path = DEFAULT_LANDMARK_PYTHON, reference_audio: Path | None = None) -> dict:
    """Lip-sync `video` to `audio` (video extended to the speech's length) and score it.

    Args:
        video: input MP4 (H.264).
        audio: speech (any format PyAV reads).
        out_dir: where output.mp4, baseline.mp4 and scores.json go.
        extend: "forward" or "reverse" (EXTEND_VIDEO).
        settings: service settings (model repository, backend); default from the environment.
        landmark_python: the eval venv's python.
        reference_audio: the video's own speech for the reference score; default its own audio track, if any.

    Returns:
        the scores (also written to out_dir/scores.json).
    """
    from lipsync_service import pipeline
    from lipsync_service.config import AudioCodec, EncodingMode, ExtendVideo, JobConfig, VideoEncodingSpec
    from lipsync_service.core.processor import PassThroughProcessor
    from lipsync_service.core.factory import build_processor
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
    scores: dict = {
        "video": str(video), "audio": str(audio), "frames": frames, "fps": fps,
        "duration_s": frames / fps, "model": processor.model_info,
        "model_output": asdict(sync_score(marks_out["opening"], envelope)),
        "baseline": asdict(sync_score(marks_base["opening"], envelope)),
        "psnr_outside_lower_face_db": psnr_outside(output, baseline, marks_base["lower_face"]),
    }
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
        scores["reference"] = asdict(sync_score(marks_in["opening"], loudness_envelope(own, _fps(video), n)))
    (out_dir / "scores.json").write_text(json.dumps(scores, indent=2))
    return scores


def format_table(scores: dict) -> str:
    """The scores as a small text table."""
    rows = [("default model", scores["model_output"]), ("baseline (unchanged video)", scores["baseline"])]
    if "reference" in scores:
        rows.append(("reference (real footage, own speech)", scores["reference"]))
    lines = [f"{'':38s} {'r lag0':>7s} {'best lag':>8s} {'r best':>7s} {'frames':>6s}"]
    for name, s in rows:
        lines.append(f"{name:38s} {s['r_lag0']:7.3f} {s['best_lag']:8d} {s['r_best']:7.3f} {s['frames']:6d}")
    lines.append(f"PSNR outside the lower face: {scores['psnr_outside_lower_face_db']:.2f} dB "
                 f"over {scores['duration_s']:.1f} s")
    return "\n".join(lines)

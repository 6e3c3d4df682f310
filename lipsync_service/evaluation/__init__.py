"""`lipsync-service eval`: lip-sync a video to a speech track and score sync, fidelity and stability.

Sync: Pearson correlation, at lag 0 and at the best lag within +-6 frames, between the mouth opening of
the output, measured by an independent landmark model (MediaPipe Face Mesh, run in its own venv as a
subprocess: `lipsync-service eval-env` creates it), and the per-frame loudness envelope of the speech. The
same sync scores are reported for the unchanged video with that speech (baseline, about 0) and, when the
input video has its own speech, for the real footage with it (reference).

Fidelity and stability (`evaluation.fidelity`), output vs the unchanged input at the same frame index (both
written losslessly, the input extended the same way), on the landmark model's points: lip sharpness,
sharpness and PSNR of the rest of the lower face, lip motion between frames (all frames, and in silence),
and PSNR outside the lower face.

Closures (`evaluation.closures`): how often the mouth is closed at the speech's short dips (stop closures,
p/b/m among them) against how often it is closed during loud speech anywhere, for the output, the unchanged
video and the real footage with its own speech.
"""

from __future__ import annotations

import json
import math
import subprocess
import tempfile
import wave
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from lipsync_service.errors import InvalidInput, LipsyncError
from lipsync_service.evaluation.closures import closed_level, closure_score
from lipsync_service.evaluation.fidelity import FidelityMeter, FidelityScores, measure_fidelity
from lipsync_service.media.types import MODEL_SAMPLE_RATE

if TYPE_CHECKING:
    from lipsync_service.settings import Settings

# The landmark script and the script that builds its venv ship inside this package.
LANDMARK_ENV = Path(__file__).resolve().parent / "landmark_env"
LANDMARK_SCRIPT = LANDMARK_ENV / "landmarks.py"
CREATE_ENV_SCRIPT = LANDMARK_ENV / "create.sh"
DEFAULT_LANDMARK_PYTHON = Path.home() / ".cache" / "lipsync-service" / "eval-venv" / "bin" / "python"
MAX_LAG = 6
# Speech band used for the loudness envelope (where voiced energy and formants are).
BAND_HZ = (300.0, 3000.0)
#: Target ranges, [low, high] (None: unbounded), written into scores.json and printed beside the measures.
TARGETS: dict[str, list[float | None]] = {
    "lip_sharpness": [0.7, 1.3],
    "rest_sharpness": [0.9, None],
    "rest_psnr_db": [35.0, None],
    "sync_r_lag0": [0.35, None],
    "sync_best_lag": [-1, 1],
}


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
    """Any audio file's first track as 16 kHz mono float32, decoded as serving decodes a request's speech.

    Channels are averaged (`lipsync_service.media.audio.load_speech_file`), so the model, the training data
    and this evaluation hear a stereo file at the same level.

    Raises:
        InvalidInput: no readable audio track.
    """
    from lipsync_service.media.audio import load_speech_file

    return load_speech_file(str(path))


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
        {"opening": [float | None per frame], "lower_face": [[x0, y0, x1, y1] | None per frame],
        "points": [{"lips", "nose", "chin", "oval"} | None per frame]} (see landmark_env/landmarks.py).

    Raises:
        LipsyncError: the eval venv or the script is missing, or the model failed.
    """
    if not Path(python).exists():
        raise LipsyncError(f"landmark venv not found at {python}: create it with `lipsync-service eval-env` "
                           "or pass --landmark-python")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "landmarks.json"
        proc = subprocess.run([str(python), str(LANDMARK_SCRIPT), str(video), str(out)],
                              capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise LipsyncError(f"landmark model failed on {video}: {proc.stderr.strip()[-500:]}")
        return json.loads(out.read_text())


class _OutsidePsnr:
    """PSNR over the pixels outside per-frame lower-face boxes, pooled over frames, one frame pair at a time."""

    def __init__(self) -> None:
        self.se = 0.0
        self.count = 0

    def add(self, output: np.ndarray, original: np.ndarray, box: list | None) -> None:
        x = output.astype(np.int32)
        y = original.astype(np.int32)
        keep = np.ones(x.shape[:2], bool)
        if box is not None:
            x0, y0, x1, y1 = (int(round(v)) for v in box)
            keep[max(0, y0):max(0, y1), max(0, x0):max(0, x1)] = False
        d = (x - y)[keep]
        self.se += float((d * d).sum())
        self.count += d.size

    def db(self) -> float:
        if self.count == 0 or self.se == 0:
            return math.inf
        return 10 * math.log10(255.0**2 / (self.se / self.count))


def psnr_outside(output: Path, original: Path, lower_face: list) -> float:
    """PSNR (dB) over all pixels outside the lower-face boxes, pooled over frames (inf when identical).

    Args:
        output: the lip-synced video.
        original: the unchanged video, same frames and size.
        lower_face: per-frame [x0, y0, x1, y1] from the original (None: the whole frame is compared).
    """
    meter = _OutsidePsnr()
    for k, (x, y) in enumerate(zip(_frames(output), _frames(original))):
        meter.add(x, y, lower_face[k] if k < len(lower_face) else None)
    return meter.db()


def _frames(video: Path) -> Iterator[np.ndarray]:
    """The video's frames as RGB uint8 arrays, one at a time."""
    import av

    with av.open(str(video)) as c:
        for frame in c.decode(c.streams.video[0]):
            yield frame.to_ndarray(format="rgb24")


def compare_videos(output: Path, original: Path, marks_out: dict, marks_in: dict,
                   envelope: np.ndarray | None) -> tuple[float, FidelityScores]:
    """`psnr_outside` on the original's lower-face boxes and `fidelity_scores`, from one decode of each video.

    Returns:
        (PSNR outside the lower face in dB, the fidelity scores).
    """
    outside = _OutsidePsnr()
    meter = FidelityMeter()
    boxes, points_in, points_out = marks_in["lower_face"], marks_in["points"], marks_out["points"]
    for k, (x, y) in enumerate(zip(_frames(output), _frames(original))):
        outside.add(x, y, boxes[k] if k < len(boxes) else None)
        if k < len(points_in):
            meter.add(x, y, points_out[k] if k < len(points_out) else None, points_in[k])
    return outside.db(), meter.scores(envelope)


def fidelity_scores(output: Path, original: Path, marks_out: dict, marks_in: dict,
                    envelope: np.ndarray | None) -> FidelityScores:
    """Lip and lower-face sharpness, lower-face PSNR and lip motion (all and in silence) of the output against
    the unchanged video at the same frame index, on the landmark model's points (see `fidelity`).

    Args:
        output: the lip-synced video.
        original: the unchanged video, same frames and size.
        marks_out: `measure_landmarks` of the output.
        marks_in: `measure_landmarks` of the original.
        envelope: per-frame speech loudness (dB).
    """
    return measure_fidelity(_frames(output), _frames(original), marks_out["points"], marks_in["points"], envelope)


def _fps(video: Path) -> float:
    import av

    with av.open(str(video)) as c:
        s = c.streams.video[0]
        return float(s.average_rate or s.guessed_rate)


def evaluate(video: Path, audio: Path, out_dir: Path, extend: str = "forward", settings: Settings | None = None,
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
    (out_dir / "scores.json").write_text(json.dumps(scores, indent=2))
    return scores


def _target_text(low: float | None, high: float | None, unit: str = "") -> str:
    if low is not None and high is not None:
        return f"{low:g}-{high:g}{unit}"
    return f">= {low:g}{unit}" if low is not None else f"<= {high:g}{unit}"


def _within(value: float | None, low: float | None, high: float | None) -> str:
    if value is None or math.isnan(value):
        return "n/a"
    ok = (low is None or value >= low) and (high is None or value <= high)
    return "ok" if ok else "MISS"


def _num(value: float | None, fmt: str = ".2f", unit: str = "") -> str:
    if value is None:
        return "n/a"
    return ("inf" if math.isinf(value) else format(value, fmt)) + unit


def format_table(scores: dict) -> str:
    """The scores as a small text table, with the target ranges beside them."""
    targets = scores.get("targets", TARGETS)
    r_lo, r_hi = targets["sync_r_lag0"]
    lag_lo, lag_hi = targets["sync_best_lag"]
    rows = [("lip-synced output", scores["model_output"]), ("baseline (unchanged video)", scores["baseline"])]
    if "reference" in scores:
        rows.append(("reference (real footage, own speech)", scores["reference"]))
    lines = [f"sync: mouth opening vs speech loudness ({scores['frames']} frames, {scores['duration_s']:.1f} s)",
             f"  {'':38s} {'r lag0':>7s} {'best lag':>8s} {'r best':>7s} {'frames':>6s}"]
    for name, s in rows:
        lines.append(f"  {name:38s} {s['r_lag0']:7.3f} {s['best_lag']:8d} {s['r_best']:7.3f} {s['frames']:6d}")
    out = scores["model_output"]
    lag_ok = "ok" if lag_lo <= out["best_lag"] <= lag_hi else "MISS"
    lines.append(f"  target (output): r lag0 {_target_text(r_lo, r_hi)} [{_within(out['r_lag0'], r_lo, r_hi)}], "
                 f"best lag within {lag_lo:+d}..{lag_hi:+d} [{lag_ok}]")
    fid = scores.get("fidelity")
    if fid:
        missing = fid["output_face_missing"]
        lines.append(f"fidelity: output vs unchanged input ({fid['frames']} frames with a face"
                     + (f", {missing} without one in the output" if missing else "")
                     + ")")
        lines.append(f"  {'':52s} {'value':>9s}  target")
        silence = (f"{fid['silent_frames']} frames < {fid['silence_threshold_db']:.1f} dB"
                   if fid.get("silence_threshold_db") is not None else "no envelope")
        measures = [
            ("lip sharpness (Laplacian variance, median ratio)", fid["lip_sharpness"], "", "lip_sharpness"),
            ("rest of lower face sharpness (median ratio)", fid["rest_sharpness"], "", "rest_sharpness"),
            ("rest of lower face PSNR", fid["rest_psnr_db"], " dB", "rest_psnr_db"),
            ("lip motion (mean abs frame diff, ratio)", fid["lip_motion"], "", None),
            (f"lip motion in silence ({silence})", fid["lip_motion_silent"], "", None),
            ("PSNR outside the lower face", scores["psnr_outside_lower_face_db"], " dB", None),
        ]
        for name, value, unit, key in measures:
            if key is None:
                target, verdict = "-", ""
            else:
                lo, hi = targets[key]
                target, verdict = _target_text(lo, hi, unit.strip() and " dB"), _within(value, lo, hi)
            lines.append(f"  {name:52s} {_num(value, unit=unit):>9s}  {target:10s} {verdict}".rstrip())
    else:
        lines.append(f"PSNR outside the lower face: {_num(scores['psnr_outside_lower_face_db'], unit=' dB')} "
                     f"over {scores['duration_s']:.1f} s")
    closures = scores.get("closures")
    if closures:
        first = next(iter(closures.values()))
        lines.append(f"closures: mouth closed (opening <= {first['closed_level']:.3f}) at short dips of the speech "
                     "(stops: p b m, also t d k) vs in loud speech anywhere")
        lines.append(f"  {'':38s} {'dips':>5s} {'at dips':>8s} {'anywhere':>8s} {'lift':>5s}")
        names = {"model_output": "lip-synced output", "baseline": "baseline (unchanged video)",
                 "reference": "reference (real footage, own speech)"}
        for key, c in closures.items():
            at, anywhere = c["closed_at_dips"], c["closed_in_speech"]
            lift = at / anywhere if at is not None and anywhere else None
            lines.append(f"  {names[key]:38s} {c['dips']:5d} {_num(at):>8s} {_num(anywhere):>8s} {_num(lift):>5s}")
    return "\n".join(lines)

"""`lipsync-service eval`: lip-sync a video to a speech track and score the result against an independent
landmark model (MediaPipe Face Mesh, in a venv of its own), beside the unchanged video and the real footage
with its own speech.

One module per thing measured: `speech` (decoding, loudness), `sync` (mouth opening vs loudness),
`fidelity` and `preservation` (what must stay as it was), `closures` (the mouth at the speech's short dips),
`landmarks` (the landmark model's subprocess); `runner` runs a clip, `report` prints the table.
"""

from lipsync_service.evaluation.landmarks import (
    CREATE_ENV_SCRIPT,
    DEFAULT_LANDMARK_PYTHON,
    LANDMARK_ENV,
    LANDMARK_SCRIPT,
    measure_landmarks,
)
from lipsync_service.evaluation.preservation import compare_videos, fidelity_scores, psnr_outside
from lipsync_service.evaluation.report import TARGETS, format_table
from lipsync_service.evaluation.runner import evaluate
from lipsync_service.evaluation.speech import BAND_HZ, load_speech, loudness_envelope, write_wav
from lipsync_service.evaluation.sync import MAX_LAG, SyncScore, pearson, sync_score

__all__ = [
    "BAND_HZ", "CREATE_ENV_SCRIPT", "DEFAULT_LANDMARK_PYTHON", "LANDMARK_ENV", "LANDMARK_SCRIPT", "MAX_LAG",
    "TARGETS", "SyncScore", "compare_videos", "evaluate", "fidelity_scores", "format_table", "load_speech",
    "loudness_envelope", "measure_landmarks", "pearson", "psnr_outside", "sync_score", "write_wav",
]

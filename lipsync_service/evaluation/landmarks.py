"""The independent landmark model (MediaPipe Face Mesh), run over a video in its own venv as a subprocess.

MediaPipe pins protobuf<5, which the service's protobuf 6 rules out, so it lives in a venv of its own
(`lipsync-service eval-env` runs `landmark_env/create.sh`); `landmark_env/landmarks.py` is the script it runs.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
from pathlib import Path

from lipsync_service.errors import LipsyncError

# The landmark script and the script that builds its venv ship inside this package.
LANDMARK_ENV = Path(__file__).resolve().parent / "landmark_env"
LANDMARK_SCRIPT = LANDMARK_ENV / "landmarks.py"
CREATE_ENV_SCRIPT = LANDMARK_ENV / "create.sh"
DEFAULT_LANDMARK_PYTHON = Path.home() / ".cache" / "lipsync-service" / "eval-venv" / "bin" / "python"


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


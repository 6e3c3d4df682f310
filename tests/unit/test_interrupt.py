"""Clean interruption: Ctrl-C (SIGINT) or SIGTERM during `lipsync-service run` leaves neither the output nor its
hidden `.part` file, and the process exits with the shell's status for the signal (128 + its number)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests import synth

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def long_clip(tmp_path_factory) -> tuple[Path, Path]:
    """40 s at 25 fps: seconds of work for the pass-through processor, so a signal lands mid-run."""
    folder = tmp_path_factory.mktemp("long")
    return (synth.make_video(folder / "long.mp4", seconds=40.0, fps=25, size=(192, 144)),
            synth.make_wav(folder / "long.wav", seconds=40.0))


def _wait_for_frames_written(folder: Path, process: subprocess.Popen, timeout_s: float = 120.0) -> Path:
    """The temporary output once it holds encoded frames (the job is mid-run)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert process.poll() is None, f"run ended before it could be interrupted: {process.communicate()}"
        parts = [p for p in folder.iterdir() if p.name.endswith(".part") and p.stat().st_size > 0]
        if parts:
            return parts[0]
        time.sleep(0.02)
    process.kill()
    raise AssertionError(f"no frames written within {timeout_s} s")


@pytest.mark.parametrize(("sig", "status"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["SIGINT", "SIGTERM"])
def test_signal_during_run_leaves_no_file_and_exits_with_the_conventional_status(tmp_path, long_clip, sig,
                                                                                 status) -> None:
    video, audio = long_clip
    folder = tmp_path / "out"
    folder.mkdir()
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    process = subprocess.Popen(
        [sys.executable, "-m", "lipsync_service", "run", "--video", str(video), "--audio", str(audio),
         "--output", str(folder / "out.mp4"), "--processor", "passthrough"],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        part = _wait_for_frames_written(folder, process)
        assert part.name.startswith(".out.mp4.")
        process.send_signal(sig)
        _, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == status, err
    assert list(folder.iterdir()) == [], "neither the output nor its hidden .part file may remain"
    assert f"interrupted by {sig.name}; no output written" in err
    assert "Traceback" not in err

"""The package installs like a package: a wheel built from the checkout, installed into a fresh venv with its
own dependencies, runs the main job and serves from a folder that is not the checkout, with no settings."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests import synth
from tests.conftest import MEDIA_DIR, REPO_ROOT

pytestmark = pytest.mark.slow

# Variables that would point the installed service at the checkout or change its defaults.
_SERVICE_ENV_PREFIXES = ("NIM_", "NV_AI4M_", "PYTHONPATH", "VIRTUAL_ENV")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _clean_env(venv: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(_SERVICE_ENV_PREFIXES)}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    return env


def _tracked_copy(dest: Path) -> Path:
    """The committed and working-tree files of the checkout (git's view), without build outputs or venvs."""
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=REPO_ROOT,
                            capture_output=True, check=True, timeout=60).stdout.decode().split("\0")
    for name in filter(None, listed):
        src = REPO_ROOT / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)
    return dest


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with the wheel and the dependencies it declares (no borrowing from this interpreter)."""
    if shutil.which("git") is None or not (REPO_ROOT / ".git").exists():
        pytest.skip("needs a git checkout to know which files belong to the source tree")
    root = tmp_path_factory.mktemp("wheel")
    src = _tracked_copy(root / "src")
    dist = root / "dist"
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(dist), str(src)],
                           capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, f"pip wheel failed:\n{build.stdout[-3000:]}\n{build.stderr[-3000:]}"
    wheels = list(dist.glob("lipsync_service-*.whl"))
    assert len(wheels) == 1, f"expected one wheel, got {wheels}"
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    install = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", str(wheels[0])],
                             capture_output=True, text=True, timeout=900)
    assert install.returncode == 0, f"pip install failed:\n{install.stdout[-3000:]}\n{install.stderr[-3000:]}"
    return venv


def _inputs(folder: Path) -> tuple[Path, Path]:
    """A real talking head when the shared media is there, else a synthetic clip (the package is what is tested)."""
    video, audio = MEDIA_DIR / "talking_1.mp4", MEDIA_DIR / "speech_en_1.wav"
    if video.is_file() and audio.is_file():
        return video, audio
    return (synth.make_video(folder / "in.mp4", seconds=2.0, size=(320, 240)),
            synth.make_wav(folder / "speech.wav", seconds=2.0))


def test_the_installed_wheel_runs_the_main_job_from_another_folder(installed: Path, tmp_path: Path) -> None:
    site = next((installed / "lib").glob("python3*/site-packages"))
    repo = site / "lipsync_service" / "model_repository" / "lipsync_generator" / "config.pbtxt"
    assert repo.is_file(), "the default model repository must be inside the installed package"
    work = tmp_path / "elsewhere"
    work.mkdir()
    video, audio = _inputs(tmp_path)
    result = subprocess.run(["lipsync-service", "run", "--video", str(video), "--audio", str(audio),
                             "--output", "out.mp4"], cwd=work, env=_clean_env(installed),
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    info = synth.probe(work / "out.mp4")
    assert info["frame_count"] > 0 and info["video_codec"] == "h264"


def test_the_installed_wheel_serves_until_ready(installed: Path, tmp_path: Path) -> None:
    http, grpc_port = _free_port(), _free_port()
    env = {**_clean_env(installed), "NIM_HTTP_API_PORT": str(http), "NIM_GRPC_API_PORT": str(grpc_port),
           "NIM_HOST": "127.0.0.1"}
    proc = subprocess.Popen(["lipsync-service", "serve"], cwd=tmp_path, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    ready = False
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{http}/v1/health/ready", timeout=2) as reply:
                    ready = reply.status == 200
            except (urllib.error.URLError, OSError):
                pass
            if ready:
                break
            time.sleep(0.5)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            _, err = proc.communicate(timeout=90)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
    assert ready, f"the installed server never reported ready:\n{err[-3000:]}"
    assert proc.returncode == 0, err[-3000:]

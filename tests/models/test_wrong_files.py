"""Clear errors for wrong files: a text file or an image given as a checkpoint, Matroska/WebM given as the video,
and where `models import-wav2lip` writes when no --repo is given."""

from __future__ import annotations

from pathlib import Path

import av
import cv2
import grpc
import numpy as np
import pytest

from lipsync_service._proto.nvidia.ai4m.audio.v1 import audio_pb2
from lipsync_service._proto.nvidia.ai4m.lipsync.v1 import lipsync_pb2, lipsync_pb2_grpc
from lipsync_service.cli import main
from lipsync_service.client import stream
from lipsync_service.errors import InvalidInput
from lipsync_service.media.probe import classify_mp4
from tests import synth

REMUX = "ffmpeg -i in.mkv -c copy out.mp4"


def _matroska(path: Path, fmt: str, codec: str) -> Path:
    """A short real Matroska or WebM file (10 frames)."""
    with av.open(str(path), "w", format=fmt) as container:
        video = container.add_stream(codec, rate=25)
        video.width, video.height, video.pix_fmt = 64, 64, "yuv420p"
        for i in range(10):
            frame = av.VideoFrame.from_ndarray(np.full((64, 64, 3), 20 * i, np.uint8), format="rgb24")
            for packet in video.encode(frame):
                container.mux(packet)
        for packet in video.encode():
            container.mux(packet)
    return path


@pytest.fixture(scope="module")
def matroska(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("matroska")
    files = {"mkv": _matroska(folder / "in.mkv", "matroska", "libx264")}
    if "libvpx-vp9" in av.codecs_available:
        files["webm"] = _matroska(folder / "in.webm", "webm", "libvpx-vp9")
    for path in files.values():
        assert path.read_bytes()[:4] == b"\x1a\x45\xdf\xa3"
    return files


@pytest.fixture(scope="module")
def speech(tmp_path_factory) -> Path:
    return synth.make_wav(tmp_path_factory.mktemp("speech") / "speech.wav", seconds=1.0)


def _one_line_error(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("lipsync-service models import-wav2lip: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


# Checkpoints ----------------------------------------------------------------------------------------


@pytest.fixture
def not_checkpoints(tmp_path) -> dict[str, Path]:
    text = tmp_path / "notes.pth"
    text.write_text("these are my notes, not a model\n" * 20)
    png = tmp_path / "face.png"
    ok, encoded = cv2.imencode(".png", np.zeros((32, 32, 3), np.uint8))
    assert ok
    png.write_bytes(encoded.tobytes())
    return {"text": text, "png": png}


@pytest.mark.parametrize("kind", ["text", "png"])
@pytest.mark.parametrize("trusted", [False, True], ids=["default", "trusted"])
def test_import_of_a_file_that_is_no_checkpoint_says_so_in_one_line(tmp_path, capsys, not_checkpoints, kind,
                                                                     trusted) -> None:
    pytest.importorskip("torch")
    argv = ["models", "import-wav2lip", str(not_checkpoints[kind]), "--repo", str(tmp_path / "repo")]
    assert main([*argv, "--trusted"] if trusted else argv) == 1
    captured = capsys.readouterr()
    line = _one_line_error(captured.err)
    assert f"{not_checkpoints[kind]} is not a PyTorch checkpoint" in line
    assert "--trusted" not in line, "a file that is no checkpoint gains nothing from --trusted"
    assert captured.out == ""
    assert not (tmp_path / "repo").exists()


def test_damaged_zip_checkpoint_is_one_line(tmp_path, capsys) -> None:
    pytest.importorskip("torch")
    damaged = tmp_path / "cut.pth"
    damaged.write_bytes(b"PK\x03\x04" + bytes(200))
    assert main(["models", "import-wav2lip", str(damaged), "--repo", str(tmp_path / "repo")]) == 1
    line = _one_line_error(capsys.readouterr().err)
    assert "is not a PyTorch checkpoint" in line and "or it is damaged (PytorchStreamReader" in line


def _write_checkpoint(path: Path) -> Path:
    torch = pytest.importorskip("torch")
    from .test_wav2lip_import import public_layout_state_dict

    torch.save({"state_dict": public_layout_state_dict()}, path)
    return path


def test_import_without_repo_writes_into_the_users_folder_and_says_how_to_serve(tmp_path, monkeypatch,
                                                                                 capsys) -> None:
    checkpoint = _write_checkpoint(tmp_path / "wav2lip.pth")
    monkeypatch.delenv("NV_AI4M_LS_MODEL_REPOSITORY", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    assert main(["models", "import-wav2lip", str(checkpoint), "--name", "mine"]) == 0
    repo = tmp_path / "data" / "lipsync-service" / "models"
    assert (repo / "mine" / "config.pbtxt").is_file()
    out = capsys.readouterr().out
    assert f"into {repo / 'mine'}" in out
    assert (f"serve it with: NV_AI4M_LS_MODEL_REPOSITORY={repo.resolve()} NV_AI4M_LS_MODEL_NAME=mine "
            "lipsync-service serve") in out


def test_import_without_repo_follows_the_environments_repository(tmp_path, monkeypatch, capsys) -> None:
    checkpoint = _write_checkpoint(tmp_path / "wav2lip.pth")
    monkeypatch.setenv("NV_AI4M_LS_MODEL_REPOSITORY", str(tmp_path / "env_repo"))
    from lipsync_service.settings import get_settings

    get_settings.cache_clear()
    try:
        assert main(["models", "import-wav2lip", str(checkpoint)]) == 0
    finally:
        get_settings.cache_clear()
    assert (tmp_path / "env_repo" / "wav2lip" / "config.pbtxt").is_file()
    assert f"NV_AI4M_LS_MODEL_REPOSITORY={(tmp_path / 'env_repo').resolve()}" in capsys.readouterr().out


# Matroska / WebM ------------------------------------------------------------------------------------


def test_probe_names_matroska_by_its_magic_bytes(matroska) -> None:
    with pytest.raises(InvalidInput, match="Matroska/WebM") as error:
        classify_mp4(matroska["mkv"].read_bytes()[:64])
    assert "MP4 (ISO BMFF)" in str(error.value) and REMUX in str(error.value)


@pytest.mark.parametrize("kind", ["mkv", "webm"])
def test_run_on_matroska_says_mp4_is_required_and_how_to_remux(tmp_path, capsys, matroska, speech, kind) -> None:
    if kind not in matroska:
        pytest.skip("this PyAV build cannot encode VP9")
    output = tmp_path / "out.mp4"
    code = main(["run", "--video", str(matroska[kind]), "--audio", str(speech), "--output", str(output),
                 "--processor", "passthrough"])
    err = capsys.readouterr().err
    assert code == 1
    assert "Matroska/WebM" in err and "MP4 (ISO BMFF)" in err and REMUX in err
    assert "corrupt" not in err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("kind", ["mkv", "webm"])
def test_server_answers_matroska_with_invalid_argument_and_the_remux_advice(matroska, speech, kind) -> None:
    if kind not in matroska:
        pytest.skip("this PyAV build cannot encode VP9")
    from tests.functional.helpers import running_server

    with running_server() as server, grpc.insecure_channel(server.target) as channel:
        stub = lipsync_pb2_grpc.LipSyncServiceStub(channel)
        config = lipsync_pb2.LipsyncConfig(input_audio_codec=audio_pb2.AUDIO_CODEC_WAV)
        with pytest.raises(grpc.RpcError) as error:
            stream.collect(stream.lipsync(stub, config, matroska[kind], speech, timeout=60))
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    details = error.value.details()
    assert "Matroska/WebM" in details and "MP4 (ISO BMFF)" in details and REMUX in details

"""What `lipsync-service run` and `serve` tell the user: the model in use, frames without a face, and input
cut from the output with the flag that keeps it (synthetic clips: they have no face)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from lipsync_service import cli
from lipsync_service.cli import service
from lipsync_service.settings import Settings
from tests import synth

MODEL_LINE = re.compile(r"^model lipsync_generator v\d+ \(onnxruntime, contract (rgb_face|lip_shape)\): \S", re.M)


def _use_settings(monkeypatch: pytest.MonkeyPatch, **overrides: Any) -> Settings:
    settings = Settings(**{"processor": "neural", "backend": "onnxruntime", "model_version": "",
                           "debug_mode": False, **overrides})
    monkeypatch.setattr(service, "get_settings", lambda: settings)
    return settings


@pytest.fixture
def neural(monkeypatch: pytest.MonkeyPatch) -> Settings:
    settings = _use_settings(monkeypatch)
    if not any((settings.model_repository / settings.model_name).glob("*/model.onnx")):
        pytest.skip("no generator model.onnx in the model repository")
    return settings


def _run(tmp_path: Path, video_s: float, speech_s: float, *extra: str) -> int:
    video = synth.make_video(tmp_path / "in.mp4", seconds=video_s)
    speech = synth.make_wav(tmp_path / "speech.wav", seconds=speech_s)
    return cli.main(["run", "--video", str(video), "--audio", str(speech), "--output", str(tmp_path / "out.mp4"),
                     *extra])


def test_run_names_the_model_counts_frames_without_a_face_and_the_speech_cut(neural, tmp_path, capsys) -> None:
    code = _run(tmp_path, 2.0, 3.0)
    err = capsys.readouterr().err
    assert code == 0, err
    assert MODEL_LINE.search(err), err
    assert "note: no face found in 50 of 50 frames: they are unchanged" in err
    assert ("note: 1.00 s of speech cut: the speech is longer than the video; "
            "pass --extend-video forward|reverse to keep it") in err


def test_run_says_how_much_video_was_cut_and_the_flag_that_keeps_it(monkeypatch, tmp_path, capsys) -> None:
    _use_settings(monkeypatch, processor="passthrough")
    code = _run(tmp_path, 2.0, 1.0)
    err = capsys.readouterr().err
    assert code == 0, err
    assert "model none (passthrough processor: frames are not lip-synced)" in err
    assert ("note: 1.00 s of video cut: the video is longer than the speech; "
            "pass --extend-audio silence to keep it") in err
    assert "no face" not in err, "the pass-through processor does not look for faces: nothing is claimed"


@pytest.mark.parametrize(("video_s", "speech_s", "flags"), [
    (2.0, 3.0, ("--extend-video", "forward")),
    (2.0, 1.0, ("--extend-audio", "silence")),
    (2.0, 2.0, ()),
])
def test_run_says_nothing_is_cut_when_nothing_is(monkeypatch, tmp_path, capsys, video_s, speech_s, flags) -> None:
    _use_settings(monkeypatch, processor="passthrough")
    code = _run(tmp_path, video_s, speech_s, *flags)
    err = capsys.readouterr().err
    assert code == 0, err
    assert " cut:" not in err


def test_server_logs_the_model_line_when_ready(neural, caplog) -> None:
    """`serve` says which model it serves once it has loaded it (no second load just to print it)."""
    from tests.functional.helpers import running_server

    with caplog.at_level("INFO", logger="lipsync_service.server.app"), running_server(processor="neural"):
        pass
    ready = [r.getMessage() for r in caplog.records if r.getMessage().startswith("ready: ")]
    assert ready and MODEL_LINE.search(ready[0].removeprefix("ready: ")), ready

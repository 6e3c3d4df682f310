"""`lipsync-service train ...` and `eval`: end-to-end on tiny synthetic data, and clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from lipsync_service.cli import main

pytest.importorskip("torch")


def test_train_run_then_export(synthetic_cache: Path, tmp_path: Path, capsys) -> None:
    import onnxruntime as ort

    cfg = tmp_path / "tiny.toml"
    cfg.write_text(f'[run]\ncache_dir = "{synthetic_cache}"\nout_dir = "{tmp_path / "run"}"\nthreads = 1\n'
                   'device = "cpu"\nlog_every = 1\n[expert]\nsteps = 2\nbatch = 4\nwidth = 8\n'
                   '[generator]\nsteps = 3\nbatch = 2\nwidth = 8\naudio_dim = 16\n[losses]\ndisc_width = 8\n')
    # Interrupted after 2 steps, then resumed to the end.
    assert main(["train", "run", str(cfg), "--max-steps", "2"]) == 0
    assert "resume" in capsys.readouterr().out
    assert main(["train", "run", str(cfg)]) == 0
    weights = tmp_path / "run" / "generator.pt"
    assert weights.exists()
    out = tmp_path / "model.onnx"
    assert main(["train", "export", str(weights), "--out", str(out)]) == 0
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["face", "mel"]


def test_errors_are_one_line_and_actionable(tmp_path: Path, capsys) -> None:
    missing = tmp_path / "none.toml"
    missing.write_text(f'[run]\ncache_dir = "{tmp_path / "nothing"}"\nout_dir = "{tmp_path / "o"}"\n')
    assert main(["train", "run", str(missing)]) == 2
    assert "run `lipsync-service train prepare` first" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["train", "prepare", str(empty), "--cache", str(tmp_path / "c")]) == 2
    assert "no video with speech found" in capsys.readouterr().err
    assert main(["eval", "--video", str(tmp_path / "v.mp4"), "--audio", str(tmp_path / "a.wav"),
                 "--landmark-python", str(tmp_path / "nopython"), "--out", str(tmp_path / "e")]) == 2
    assert "tools/eval_env/create.sh" in capsys.readouterr().err

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
    assert main(["train", "run", str(missing)]) == 1
    assert "run `lipsync-service train prepare` first" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["train", "prepare", str(empty), "--cache", str(tmp_path / "c")]) == 1
    assert "no video with speech found" in capsys.readouterr().err
    assert main(["eval", "--video", str(tmp_path / "v.mp4"), "--audio", str(tmp_path / "a.wav"),
                 "--landmark-python", str(tmp_path / "nopython"), "--out", str(tmp_path / "e")]) == 1
    assert "lipsync-service eval-env" in capsys.readouterr().err


def test_train_opening_aligns_labels_and_exports_a_served_model(tmp_path: Path, capsys) -> None:
    import numpy as np
    import onnxruntime as ort
    import torch

    from lipsync_models.dataset import write_clip
    from lipsync_models.training.warpnet import WarpGeneratorConfig, build_warp_generator
    from lipsync_service.core.mel import melspectrogram, window_start
    from lipsync_service.evaluation import write_wav

    from .conftest import FPS, synthetic_clip

    cache, labels = tmp_path / "cache", {}
    for n, (ident, split) in enumerate([("a", "train"), ("b", "train"), ("c", "val")]):
        faces, _, env = synthetic_clip(n, 120, 96, (120, 150, 200))
        # A 600 Hz tone gated by the mouth's envelope: inside the eval's 300-3000 Hz loudness band.
        t = np.arange(len(env) * 640) / 16000
        speech = (0.3 * np.repeat(env, 640) * np.sin(2 * np.pi * 600 * t)).astype(np.float32)
        wav = tmp_path / f"{ident}.wav"
        write_wav(wav, speech)
        starts = np.array([window_start(i, FPS) for i in range(len(faces))])
        write_clip(cache, f"clip_{ident}", ident, split, faces, np.ones(len(faces), bool), melspectrogram(speech),
                   starts, FPS, extra={"audio": str(wav), "video": str(wav)})
        # Labelled openings lead the sound by one frame, as real mouths do.
        labels[f"clip_{ident}"] = np.concatenate((env[1:], [0.0])).astype(np.float32)
    np.savez(tmp_path / "labels.npz", **labels)
    cfg = WarpGeneratorConfig(face_size=96, width=8, audio_dim=16, code_dim=1)
    torch.save({"kind": "warp_generator", "config": cfg.to_dict(),
                "state_dict": build_warp_generator(cfg).state_dict()}, tmp_path / "renderer.pt")
    out = tmp_path / "out"
    assert main(["train", "opening", str(cache), str(tmp_path / "labels.npz"), str(out), "--renderer",
                 str(tmp_path / "renderer.pt"), "--mlp-steps", "30", "--members", "2", "--gain", "2",
                 "--adv-seconds", "60", "--adv-steps", "3"]) == 0
    printed = capsys.readouterr().out
    assert "offset clip_a -1" in printed and "offset clip_b -1" in printed
    assert "mlp held-out r clip_c" in printed
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    got = session.run(None, {"face": np.random.default_rng(0).random((2, 6, 96, 96), dtype=np.float32),
                             "mel": np.zeros((2, 1, 80, 16), np.float32)})[0]
    assert got.shape == (2, 3, 96, 96)
    assert "ensemble x2" in session.get_modelmeta().custom_metadata_map["lipsync.description"]
    # The sharpening stage trained the copied renderer further.
    before = torch.load(tmp_path / "renderer.pt")["state_dict"]
    after = torch.load(out / "renderer.pt")["state_dict"]
    assert any(not torch.equal(before[k], after[k]) for k in before)
    # Reusing the renderer in place (same path) works too; a missing labels entry is a clear error.
    np.savez(tmp_path / "few.npz", clip_a=labels["clip_a"])
    assert main(["train", "opening", str(cache), str(tmp_path / "few.npz"), str(out), "--renderer",
                 str(out / "renderer.pt"), "--mlp-steps", "5"]) == 1
    assert "no labels for clip_b: run mouth_labels.py" in capsys.readouterr().err

"""Trained weights exported to the serving contract run in ONNX Runtime like in torch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnx")

from lipsync_models.training.export import export_trained, load_generator  # noqa: E402
from lipsync_models.training.warpnet import WarpGeneratorConfig, build_warp_generator  # noqa: E402
from lipsync_service.inference.base import INPUT_FACE, INPUT_MEL, OUTPUT_FACE  # noqa: E402


def _trained_like(path: Path) -> torch.nn.Module:
    torch.manual_seed(3)
    cfg = WarpGeneratorConfig(face_size=96, width=8, audio_dim=16)
    model = build_warp_generator(cfg)
    with torch.no_grad():
        # Non-zero head and a live speech path, as after training (the fresh head is zero).
        model.head.weight.normal_(0, 0.05)
        model.audio.fc[-1].weight.normal_(0, 0.5)
    torch.save({"kind": "warp_generator", "config": cfg.to_dict(), "state_dict": model.state_dict(), "step": 1}, path)
    return model.eval()


def test_onnx_matches_torch_and_keeps_the_contract(tmp_path: Path) -> None:
    import onnxruntime as ort

    model = _trained_like(tmp_path / "generator.pt")
    onnx_path = export_trained(tmp_path / "generator.pt", tmp_path / "model.onnx")
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == [INPUT_FACE, INPUT_MEL]
    assert [o.name for o in session.get_outputs()] == [OUTPUT_FACE]
    rng = np.random.default_rng(0)
    for batch in (1, 3):
        face = rng.random((batch, 6, 96, 96), dtype=np.float32)
        mel = rng.uniform(-4, 4, (batch, 1, 80, 16)).astype(np.float32)
        got = session.run(None, {INPUT_FACE: face, INPUT_MEL: mel})[0]
        with torch.no_grad():
            want = model(torch.from_numpy(face), torch.from_numpy(mel)).numpy()
        assert got.shape == (batch, 3, 96, 96)
        # Float32 sums in another order (ONNX Runtime's conv kernels differ between CPUs: 0.6e-4 on one machine,
        # 1.3e-4 on another): 5e-4 of the [0, 1] picture range is a tenth of a grey level.
        assert np.abs(got - want).max() < 5e-4
        # The upper half is the target's own; only the lower half is drawn.
        assert np.array_equal(got[:, :, :48], face[:, :3, :48])
    # Different speech, different mouth.
    face = np.repeat(rng.random((1, 6, 96, 96), dtype=np.float32), 2, axis=0)
    mel = np.stack([np.full((1, 80, 16), -4.0), rng.uniform(-1, 4, (1, 80, 16))]).astype(np.float32)
    out = session.run(None, {INPUT_FACE: face, INPUT_MEL: mel})[0]
    assert np.abs(out[0, :, 48:] - out[1, :, 48:]).mean() > 1e-3


def test_load_refuses_foreign_files(tmp_path: Path) -> None:
    torch.save({"state_dict": {}}, tmp_path / "x.pt")
    with pytest.raises(ValueError, match="not a generator"):
        load_generator(tmp_path / "x.pt")

"""Explicit mouth opening: per-clip labels, the speech MLP learns an audible opening, the served graph exports."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnx")

from lipsync_models.training import opening as op  # noqa: E402
from lipsync_models.training.warpnet import WarpGeneratorConfig, build_warp_generator  # noqa: E402

from lipsync_service.inference.base import INPUT_FACE, INPUT_MEL, OUTPUT_FACE  # noqa: E402


def test_zscore_is_per_clip_and_keeps_missing_frames() -> None:
    z = op.zscore_labels(np.array([0.1, np.nan, 0.3, 0.2], np.float32))
    assert np.isnan(z[1])
    assert abs(np.nanmean(z)) < 1e-6 and abs(np.nanstd(z) - 1) < 1e-5
    # A wider-mouthed person with the same pattern gets the same labels: identity is removed.
    z2 = op.zscore_labels(np.array([0.5, np.nan, 0.9, 0.7], np.float32))
    np.testing.assert_allclose(z, z2, atol=1e-5)


def test_mlp_learns_opening_from_loudness_on_held_out_windows() -> None:
    rng = np.random.default_rng(0)
    loud = rng.uniform(0, 1, 1200).astype(np.float32)
    # Louder low bands with the mouth open, on top of a random recording level and noise.
    x = rng.normal(0, 0.3, (1200, 80, 16)).astype(np.float32) + rng.normal(0, 2, (1200, 1, 1)).astype(np.float32)
    x[:, :30] += 2 * loud[:, None, None]
    y = (loud - loud.mean()) / loud.std()
    net = op.train_opening_net(x[:1000], y[:1000], steps=400)
    assert op.pearson(op.predict(net, x[1000:]), y[1000:]) > 0.8


def test_served_graph_follows_the_opening_and_exports_with_parity(tmp_path: Path) -> None:
    import onnxruntime as ort

    torch.manual_seed(0)
    cfg = WarpGeneratorConfig(face_size=96, width=8, audio_dim=16, code_dim=1)
    renderer = build_warp_generator(cfg)
    with torch.no_grad():
        renderer.head.weight.normal_(0, 0.05)
    torch.save({"kind": "warp_generator", "config": cfg.to_dict(), "state_dict": renderer.state_dict()},
               tmp_path / "renderer.pt")
    net = op.build_opening_net(16)
    with torch.no_grad():
        net.net[-1].weight.normal_(0, 1.0)
    torch.save(net.state_dict(), tmp_path / "opening.pt")
    out = op.export_served(tmp_path / "renderer.pt", tmp_path / "opening.pt", tmp_path / "model.onnx", gain=2.0,
                           hidden=16)
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == [INPUT_FACE, INPUT_MEL]
    assert [o.name for o in session.get_outputs()] == [OUTPUT_FACE]
    served = op.build_served(renderer.eval(), net.eval(), np.zeros(1, np.float32), np.ones(1, np.float32), 2.0)
    rng = np.random.default_rng(1)
    face = rng.random((3, 6, 96, 96), dtype=np.float32)
    mel = rng.normal(0, 1, (3, 1, 80, 16)).astype(np.float32)
    got = session.run(None, {INPUT_FACE: face, INPUT_MEL: mel})[0]
    with torch.no_grad():
        want = served(torch.from_numpy(face), torch.from_numpy(mel)).numpy()
    assert got.shape == (3, 3, 96, 96)
    assert np.abs(got - want).max() < 1e-4
    # Different speech, different lower face; the upper half is the input's.
    other = session.run(None, {INPUT_FACE: face, INPUT_MEL: -mel})[0]
    assert np.abs(other[:, :, 48:] - got[:, :, 48:]).mean() > 1e-4
    np.testing.assert_allclose(got[:, :, :48], face[:, :3, :48], atol=1e-6)

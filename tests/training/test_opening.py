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
    # Louder low bands with the mouth open, on top of a random recording level (+-10 dB) and noise.
    x = rng.normal(0, 0.3, (1200, 80, 16)).astype(np.float32) + rng.normal(0, 0.4, (1200, 1, 1)).astype(np.float32)
    x[:, :30] += 2 * loud[:, None, None]
    y = (loud - loud.mean()) / loud.std()
    net = op.train_opening_net(x[:1000], y[:1000], steps=400, members=2)
    assert len(net.members) == 2
    assert op.pearson(op.predict(net, x[1000:]), y[1000:]) > 0.8


def test_clip_offset_finds_a_mouth_that_leads_the_sound_and_alignment_undoes_it() -> None:
    rng = np.random.default_rng(3)
    envelope = np.convolve(rng.normal(0, 1, 400), np.ones(3) / 3, mode="same")
    # The mouth moves 2 frames before the sound: opening[k - 2] follows envelope[k].
    opening = np.concatenate((envelope[2:], rng.normal(0, 1, 2))) + rng.normal(0, 0.3, 400)
    opening[[10, 50]] = np.nan
    assert op.clip_offset(opening, envelope, 4) == -2
    assert op.clip_offset(opening, envelope, 1) == -1  # searched range only
    frames, labels = op.aligned_frames(np.isfinite(opening), -2)
    assert np.all(labels == frames - 2) and frames.min() == 2 and 12 not in frames
    # After the shift the training pairs line up at lag 0.
    assert op.pearson(opening[labels], envelope[frames]) > 0.8 > op.lagged_r(opening, envelope, 0) + 0.3
    # No structure: no preference for a shift (ties go to the smallest).
    assert op.clip_offset(np.ones(50), np.ones(50), 3) == 0


def test_served_graph_follows_the_opening_and_exports_with_parity(tmp_path: Path) -> None:
    import onnxruntime as ort

    torch.manual_seed(0)
    cfg = WarpGeneratorConfig(face_size=96, width=8, audio_dim=16, code_dim=1)
    renderer = build_warp_generator(cfg)
    with torch.no_grad():
        renderer.head.weight.normal_(0, 0.05)
    torch.save({"kind": "warp_generator", "config": cfg.to_dict(), "state_dict": renderer.state_dict()},
               tmp_path / "renderer.pt")
    net = op.build_opening_ensemble(members=2, hidden=16)
    with torch.no_grad():
        for member in net.members:
            member.net[-1].weight.normal_(0, 1.0)
    op.save_opening(net, tmp_path / "opening.pt", hidden=16, dropout=0.3)
    out = op.export_served(tmp_path / "renderer.pt", tmp_path / "opening.pt", tmp_path / "model.onnx", gain=2.0)
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == [INPUT_FACE, INPUT_MEL]
    assert [o.name for o in session.get_outputs()] == [OUTPUT_FACE]
    served = op.build_served(renderer.eval(), op.load_opening(tmp_path / "opening.pt"), np.zeros(1, np.float32),
                             np.ones(1, np.float32), 2.0)
    rng = np.random.default_rng(1)
    face = rng.random((3, 6, 96, 96), dtype=np.float32)
    mel = rng.normal(0, 1, (3, 1, 80, 16)).astype(np.float32)
    got = session.run(None, {INPUT_FACE: face, INPUT_MEL: mel})[0]
    with torch.no_grad():
        want = served(torch.from_numpy(face), torch.from_numpy(mel)).numpy()
    assert got.shape == (3, 3, 96, 96)
    assert np.abs(got - want).max() < 4e-3  # weights stored as float16 (export_served), computed in float32
    # Different speech, different lower face; the upper half is the input's.
    other = session.run(None, {INPUT_FACE: face, INPUT_MEL: -mel})[0]
    assert np.abs(other[:, :, 48:] - got[:, :, 48:]).mean() > 1e-4
    np.testing.assert_allclose(got[:, :, :48], face[:, :3, :48], atol=1e-6)


def test_load_opening_refuses_other_files(tmp_path: Path) -> None:
    torch.save({"kind": "warp_generator"}, tmp_path / "x.pt")
    with pytest.raises(ValueError, match="not an opening ensemble"):
        op.load_opening(tmp_path / "x.pt")

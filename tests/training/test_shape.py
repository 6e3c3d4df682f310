"""Speech -> lip shape (opening, width): per-clip labels, the ensemble learns both columns, the `lip_shape` ONNX."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnx")

from lipsync_models.training import shape as sh  # noqa: E402
from lipsync_service.cli import main  # noqa: E402


def synthetic_windows(n: int, seed: int = 0):
    """Mel windows whose low bands follow the loudness and whose upper bands follow a second, independent cue.

    Returns:
        (x [n, 80, 16], z-scored targets [n, 2]): opening = the loudness, width = minus the upper-band cue plus a
        little of the loudness (a rounded mouth is narrower), both a known function of the mel.
    """
    rng = np.random.default_rng(seed)
    loud = rng.uniform(0, 1, n).astype(np.float32)
    rounded = rng.uniform(0, 1, n).astype(np.float32)
    # On top of a random recording level (+-10 dB) and noise.
    x = rng.normal(0, 0.3, (n, 80, 16)).astype(np.float32) + rng.normal(0, 0.4, (n, 1, 1)).astype(np.float32)
    x[:, :30] += 2 * loud[:, None, None]
    x[:, 45:70] += 2 * rounded[:, None, None]
    width = 0.3 * loud - rounded
    y = np.stack([(loud - loud.mean()) / loud.std(), (width - width.mean()) / width.std()], axis=1)
    return x, y.astype(np.float32)


def test_zscore_shape_is_per_clip_and_per_column() -> None:
    raw = np.array([[0.01, 0.30], [np.nan, np.nan], [0.03, 0.34], [0.02, 0.32]], np.float32)
    z = sh.zscore_shape(raw)
    assert z.shape == (4, 2) and np.isnan(z[1]).all()
    np.testing.assert_allclose(np.nanmean(z, 0), 0, atol=1e-6)
    np.testing.assert_allclose(np.nanstd(z, 0), 1, atol=1e-5)
    # A wider-mouthed person with the same pattern gets the same labels: identity is removed.
    np.testing.assert_allclose(sh.zscore_shape(raw * [3, 1.2] + [0.01, 0.05]), z, atol=1e-5)
    with pytest.raises(ValueError, match=r"\[N, 2\]"):
        sh.zscore_shape(raw[:, 0])


def test_ensemble_learns_width_and_exports_the_lip_shape_contract(tmp_path: Path) -> None:
    import onnx
    import onnxruntime as ort

    x, y = synthetic_windows(1400)
    net = sh.train_shape_net(x[:1200], y[:1200], steps=400, members=2)
    assert len(net.members) == 2
    pred = sh.predict(net, x[1200:])
    assert pred.shape == (200, 2)
    assert sh.pearson(pred[:, 0], y[1200:, 0]) > 0.8
    assert sh.pearson(pred[:, 1], y[1200:, 1]) > 0.8

    out = sh.export_lip_shape(net, tmp_path / "model.onnx", [3.0, 1.0])
    model = onnx.load(str(out))
    assert {p.key: p.value for p in model.metadata_props}.keys() == {"lipsync_contract", "description"}
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["lipsync_contract"] == "lip_shape"
    assert "x2" in meta["description"] and "opening 3.00" in meta["description"] and "width 1.00" in meta["description"]
    assert [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")] == [17]
    # Weights stored as float16 (cast to float32 in the graph).
    assert any(i.data_type == onnx.TensorProto.FLOAT16 for i in model.graph.initializer)

    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    (inp,), (outp,) = session.get_inputs(), session.get_outputs()
    assert inp.name == "mel" and inp.type == "tensor(float)" and inp.shape[1:] == [1, 80, 16]
    assert outp.name == "lip_shape" and outp.type == "tensor(float)" and outp.shape[1:] == [2]
    assert isinstance(inp.shape[0], str) and isinstance(outp.shape[0], str)  # dynamic batch axis
    held = session.run(None, {"mel": x[1200:, None]})[0]
    assert held.shape == (200, 2) and held.dtype == np.float32
    # The served model is the gained, clamped ensemble, within 1e-3 of float32 torch.
    np.testing.assert_allclose(held, np.clip(pred * [3.0, 1.0], -3, 3), atol=1e-3)
    assert sh.pearson(held[:, 1], y[1200:, 1]) > 0.8
    for batch in (1, 7):
        loud = (20 * np.random.default_rng(batch).normal(0, 1, (batch, 1, 80, 16))).astype(np.float32)
        got = session.run(None, {"mel": loud})[0]
        assert got.shape == (batch, 2)
        assert np.all(np.abs(got) <= 3.0)
    assert np.abs(got).max() == pytest.approx(3.0)  # extreme input saturates at the clamp


def test_float32_weights_when_asked_and_refusals(tmp_path: Path) -> None:
    import onnx

    net = sh.build_shape_ensemble(members=1, hidden=8)
    out = sh.export_lip_shape(net, tmp_path / "m.onnx", [1.0, 1.0], fp16_weights=False)
    assert all(i.data_type != onnx.TensorProto.FLOAT16 for i in onnx.load(str(out)).graph.initializer)
    assert sh.served_error(sh.build_served(net, [1.0, 1.0]), out) < 1e-5
    # A float16 file that would move outputs by more than allowed is written with float32 weights instead.
    out = sh.export_lip_shape(net, tmp_path / "m16.onnx", [1.0, 1.0], max_fp16_error=0.0)
    assert all(i.data_type != onnx.TensorProto.FLOAT16 for i in onnx.load(str(out)).graph.initializer)
    sh.save_shape(net, tmp_path / "shape.pt", hidden=8, dropout=0.3)
    assert len(sh.load_shape(tmp_path / "shape.pt").members) == 1
    torch.save({"kind": "opening_ensemble"}, tmp_path / "x.pt")
    with pytest.raises(ValueError, match="not a lip-shape ensemble"):
        sh.load_shape(tmp_path / "x.pt")
    np.savez(tmp_path / "openings.npz", clip=np.zeros(5, np.float32))
    with pytest.raises(ValueError, match="shape_labels.py"):
        sh.load_shape_labels(tmp_path / "openings.npz")


def test_train_shape_cli_aligns_labels_and_exports_the_contract(tmp_path: Path, capsys) -> None:
    import onnx
    import onnxruntime as ort

    from lipsync_models.dataset import write_clip
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
        # Raw shapes in this person's own scale; the mouth leads the sound by one frame, as real mouths do,
        # and narrows as it opens.
        lead = np.concatenate((env[1:], [0.0])).astype(np.float32)
        labels[f"clip_{ident}"] = np.stack([0.02 + (n + 1) * 0.03 * lead, 0.4 - 0.02 * lead], axis=1)
    labels["clip_b"][5] = np.nan  # a frame without a face
    np.savez(tmp_path / "labels.npz", **labels)
    out = tmp_path / "out"
    assert main(["train", "shape", str(cache), str(tmp_path / "labels.npz"), str(out), "--mlp-steps", "30",
                 "--members", "2", "--width-gain", "calibrate"]) == 0
    printed = capsys.readouterr().out
    assert "offset clip_a -1" in printed and "offset clip_b -1" in printed
    assert "width gain calibration on training clips" in printed
    assert "held-out clip_c: r opening" in printed and "width" in printed
    assert (out / "shape_net.pt").exists()
    model = onnx.load(str(out / "model.onnx"))
    assert {p.key: p.value for p in model.metadata_props}["lipsync_contract"] == "lip_shape"
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    got = session.run(["lip_shape"], {"mel": np.zeros((3, 1, 80, 16), np.float32)})[0]
    assert got.shape == (3, 2) and np.all(np.abs(got) <= 3)
    # A fixed width gain is taken as given; opening labels only (mouth_labels.py) are a clear error.
    assert main(["train", "shape", str(cache), str(tmp_path / "labels.npz"), str(out), "--mlp-steps", "5",
                 "--members", "1", "--width-gain", "1.5", "--fp32"]) == 0
    capsys.readouterr()
    meta = {p.key: p.value for p in onnx.load(str(out / "model.onnx")).metadata_props}
    assert "width 1.50" in meta["description"]
    np.savez(tmp_path / "openings.npz", **{k: v[:, 0] for k, v in labels.items()})
    assert main(["train", "shape", str(cache), str(tmp_path / "openings.npz"), str(out), "--mlp-steps", "5"]) == 1
    assert "shape_labels.py" in capsys.readouterr().err

"""Speech -> lip shape: per video frame, the target (opening, width) of the lips, in the speaker's own z units.

The service moves the source video's own pixels with a landmark-driven warp; what it needs from a network is the
lip shape the speech asks for. Two columns, both Face Mesh measurements (shape_labels.py) z-scored per clip, so
identity cannot be learned and the service maps them back with the speaker's running statistics:

- column 0, opening: inner-lip gap (13-14) / face height (10-152),
- column 1, width: mouth-corner distance (61-291) / face width (234-454).

The recipe is the opening ensemble's (opening.py, round 3 of models/MODEL_CARD.md): small MLPs on the 80x16
log-mel window, level jitter, dropout, seeds averaged, labels shifted by each clip's audio-video offset (found on
the opening column, applied to both). Served ONNX contract `lip_shape` (docs: this module, `export_lip_shape`):

    mel [B, 1, 80, 16] float32 -> lip_shape [B, 2] float32 = clamp(gains * ensemble(mel), -3, 3)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lipsync_models.training.opening import (  # noqa: F401  (re-exported helpers of the shared recipe)
    aligned_frames,
    clip_offset,
    lagged_r,
    mel_windows,
    pearson,
    predict,
    zscore_labels,
)

COLUMNS = ("opening", "width")
CONTRACT = "lip_shape"
INPUT_MEL = "mel"
OUTPUT_SHAPE = "lip_shape"
META_CONTRACT = "lipsync_contract"
META_DESCRIPTION = "description"
CLAMP = 3.0


def zscore_shape(shape: np.ndarray) -> np.ndarray:
    """Per-clip z-score of each column of a clip's raw [N, 2] lip shape (NaN stays NaN)."""
    shape = np.asarray(shape, np.float32)
    if shape.ndim != 2 or shape.shape[1] != len(COLUMNS):
        raise ValueError(f"expected lip shapes [N, {len(COLUMNS)}], got {shape.shape}")
    return np.stack([zscore_labels(shape[:, c]) for c in range(shape.shape[1])], axis=1)


def build_shape_net(hidden: int = 128, dropout: float = 0.3, outputs: int = len(COLUMNS)):
    """One-hidden-layer MLP: [B, 1, 80, 16] log-mel -> [B, outputs] (the layout of opening.build_opening_net)."""
    from torch import nn

    class ShapeNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = nn.Sequential(nn.Flatten(), nn.Dropout(dropout / 2), nn.Linear(80 * 16, hidden), nn.ReLU(),
                                     nn.Dropout(dropout), nn.Linear(hidden, outputs))

        def forward(self, mel):
            return self.net(mel)

    return ShapeNet()


def build_shape_ensemble(members: int = 4, hidden: int = 128, dropout: float = 0.3):
    """The mean of `members` shape MLPs (independently seeded): [B, 1, 80, 16] -> [B, 2]."""
    from lipsync_models.training.opening import build_mean_ensemble

    return build_mean_ensemble(lambda: build_shape_net(hidden, dropout), members)


def train_shape_net(x: np.ndarray, y: np.ndarray, steps: int = 3000, batch: int = 256, lr: float = 1e-3,
                    weight_decay: float = 1e-3, seed: int = 0, hidden: int = 128, dropout: float = 0.3,
                    level_jitter: float = 0.5, members: int = 4):
    """Fit the shape ensemble on windows x [N, 80, 16] and z-scored targets y [N, 2] (MSE on both columns, Adam).

    Same schedule as opening.train_opening_net: each member its own seed, every window a random level offset
    of up to +-level_jitter (normalised log-mel units, 0.5 = 12.5 dB) so the recording level is not learned.

    Returns:
        the trained ensemble (eval mode).
    """
    if y.ndim != 2 or len(y) != len(x):
        raise ValueError(f"targets must be [N, 2] for {len(x)} windows, got {y.shape}")
    from lipsync_models.training.opening import fit_ensemble

    return fit_ensemble(build_shape_ensemble(members, hidden, dropout), x, y, steps, batch, lr, weight_decay, seed,
                        level_jitter)


def save_shape(net, path: Path, hidden: int, dropout: float) -> None:
    """Write a lip-shape ensemble (see opening.save_ensemble)."""
    from lipsync_models.training.opening import save_ensemble

    save_ensemble(net, path, "shape_ensemble", hidden, dropout)


def load_shape(path: Path):
    """The lip-shape ensemble written by save_shape (eval mode)."""
    from lipsync_models.training.opening import load_ensemble

    return load_ensemble(path, "shape_ensemble", build_shape_ensemble, "a lip-shape ensemble")


def load_shape_labels(path: Path) -> dict[str, np.ndarray]:
    """Labels written by shape_labels.py: clip name -> raw lip shapes [N, 2] (opening, width)."""
    with np.load(path) as z:
        out = {k: np.asarray(z[k], np.float32) for k in z.files}
    for name, shape in out.items():
        if shape.ndim != 2 or shape.shape[1] != len(COLUMNS):
            raise ValueError(f"{path}: labels of {name} are {shape.shape}, expected [N, 2] (opening, width) "
                             "as shape_labels.py writes them (mouth_labels.py writes openings only)")
    return out


def build_served(net, gains):
    """The serving graph: mel [B, 1, 80, 16] -> lip_shape [B, 2] = clamp(gains * net(mel), -3, 3)."""
    import torch
    from torch import nn

    class LipShape(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = net
            self.register_buffer("gains", torch.tensor(np.asarray(gains, np.float32).reshape(1, len(COLUMNS))))

        def forward(self, mel):
            return (self.net(mel) * self.gains).clamp(-CLAMP, CLAMP)

    return LipShape().eval()


def count_parameters(module) -> int:
    return sum(p.numel() for p in module.parameters())


def export_lip_shape(net, out: Path, gains, fp16_weights: bool = True, opset: int = 17,
                     max_fp16_error: float = 1e-3, check_mel: np.ndarray | None = None) -> Path:
    """Write the `lip_shape` ONNX: input `mel` [B,1,80,16], output `lip_shape` [B,2], dynamic batch, opset 17.

    Metadata: `lipsync_contract` = `lip_shape`, `description` = name, parameters, gains. With fp16_weights the
    large weights are stored as float16 and cast to float32 when the model loads (opening.py's shipped model
    does the same); the file is checked against the float32 torch graph on random and level-shifted windows (and
    on check_mel [N, 1, 80, 16], e.g. real windows, when given) and written with float32 weights instead when any
    output differs by more than max_fp16_error.

    Returns:
        out.
    """
    gains = [float(g) for g in np.asarray(gains, np.float32).ravel()]
    members = len(getattr(net, "members", [net]))
    description = (f"lipsync-lip-shape (speech MLP ensemble x{members}, {count_parameters(net) / 1e6:.2f} M params, "
                   f"mel [B,1,80,16] -> lip_shape [B,2] = per-clip z of (opening 13-14/10-152, width 61-291/234-454), "
                   f"gains opening {gains[0]:.2f} width {gains[1]:.2f}, clamped to +-{CLAMP:g})")
    return export_served(build_served(net.eval(), gains), out, description, fp16_weights, opset, max_fp16_error,
                         check_mel)


def export_served(served, out: Path, description: str, fp16_weights: bool = True, opset: int = 17,
                  max_fp16_error: float = 1e-3, check_mel: np.ndarray | None = None) -> Path:
    """Write a served lip-shape graph (mel [B,1,80,16] -> lip_shape [B,C], C = 2 or 5) as ONNX with the contract
    and `description` as metadata; float16 weights unless they move an output by more than max_fp16_error (see
    export_lip_shape).

    Returns:
        out.
    """
    import warnings

    import onnx
    import torch

    from lipsync_models.export import store_weights_fp16

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    mel = torch.randn(2, 1, 80, 16)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(served.eval(), (mel,), str(out), input_names=[INPUT_MEL], output_names=[OUTPUT_SHAPE],
                          dynamic_axes={INPUT_MEL: {0: "batch"}, OUTPUT_SHAPE: {0: "batch"}},
                          opset_version=opset, do_constant_folding=True, dynamo=False)
    model = onnx.load(str(out))
    del model.metadata_props[:]
    for key, value in ((META_CONTRACT, CONTRACT), (META_DESCRIPTION, description)):
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(model)
    plain = model.SerializeToString()
    if fp16_weights:
        store_weights_fp16(model)
        onnx.save(model, str(out))
        error = served_error(served, out)
        if check_mel is not None:
            error = max(error, served_error(served, out, check_mel))
        if error > max_fp16_error:
            out.write_bytes(plain)
    else:
        out.write_bytes(plain)
    return out


def served_error(served, path: Path, mel: np.ndarray | None = None, windows: int = 256, seed: int = 0) -> float:
    """Largest |ONNX - torch| over mel windows [N, 1, 80, 16] (default: random windows in the normalised
    log-mel range -4..4, half of them level-shifted)."""
    import onnxruntime as ort
    import torch

    if mel is None:
        rng = np.random.default_rng(seed)
        mel = np.clip(rng.normal(-1.0, 1.5, (windows, 1, 80, 16)), -4, 4).astype(np.float32)
        mel[windows // 2:] += rng.uniform(-1, 1, (windows - windows // 2, 1, 1, 1)).astype(np.float32)
    mel = np.ascontiguousarray(mel, np.float32)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run([OUTPUT_SHAPE], {INPUT_MEL: mel})[0]
    with torch.no_grad():
        want = served(torch.from_numpy(mel)).numpy()
    return float(np.abs(got - want).max())

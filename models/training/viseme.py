"""Speech -> lip shape and visemes: per video frame, the target (opening, width) in the speaker's own z units and the
probabilities that the lips close for p/b/m, tuck for f/v and round for uw/uh/ow/w/oy.

Five columns, the `lip_shape` contract's wide form (docs/models-contract.md#lip-shape):

- 0 opening_z, 1 width_z: regression on the clips' Face Mesh labels, z-scored per clip and shifted by each clip's
  audio-video offset exactly as shape.py does (MSE);
- 2 closure, 3 tuck, 4 round: classification on the phones of all training speech (clips and speech-only audio,
  phone_labels.py), binary cross-entropy with the positives weighted up (a closure lasts 1-3 frames). Training
  with a positive weight w moves the best logit by log(w); the served graph takes it off again, so the columns are
  probabilities at the training data's own rates.

Each member of the ensemble is one network with five outputs; the ensemble averages the regression outputs and the
classification logits. Served (`build_served`):

    mel [B, 1, 80, 16] -> lip_shape [B, 5] = (clamp(gains * z, -3, 3), sigmoid(logits - log(pos_weight)))
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lipsync_models.training.phone_labels import VISEME_HEADS
from lipsync_models.training.shape import CLAMP, count_parameters

COLUMNS = ("opening", "width", *VISEME_HEADS)
SHAPE_COLUMNS = 2
ARCHITECTURES = ("mlp", "conv")


def build_viseme_net(arch: str = "mlp", hidden: int = 128, dropout: float = 0.3, channels: int = 64):
    """One member: [B, 1, 80, 16] log-mel -> [B, 5] (two z-scores, three logits).

    "mlp": the shape MLP's layout (flattened window -> hidden ReLU -> 5). "conv": two 1-D convolutions along time
    over the 80 mel bands (kernel 3, the second dilated by 2: each output sees 7 mel frames, 90 ms), then the
    flattened feature map -> hidden ReLU -> 5.
    """
    from torch import nn

    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r} (one of {', '.join(ARCHITECTURES)})")

    class VisemeNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            if arch == "mlp":
                self.features = nn.Sequential(nn.Flatten(), nn.Dropout(dropout / 2))
                width = 80 * 16
            else:
                self.features = nn.Sequential(
                    nn.Flatten(1, 2), nn.Dropout(dropout / 2),
                    nn.Conv1d(80, channels, 3, padding=1), nn.ReLU(),
                    nn.Conv1d(channels, channels, 3, padding=2, dilation=2), nn.ReLU(), nn.Flatten())
                width = channels * 16
            self.head = nn.Sequential(nn.Linear(width, hidden), nn.ReLU(), nn.Dropout(dropout),
                                      nn.Linear(hidden, len(COLUMNS)))

        def forward(self, mel):
            return self.head(self.features(mel))

    return VisemeNet()


def build_viseme_ensemble(members: int = 4, arch: str = "mlp", hidden: int = 128, dropout: float = 0.3,
                          channels: int = 64):
    """The mean of `members` viseme networks (independently seeded): [B, 1, 80, 16] -> [B, 5] (z, z, logits)."""
    from lipsync_models.training.opening import build_mean_ensemble

    return build_mean_ensemble(lambda: build_viseme_net(arch, hidden, dropout, channels), members)


@dataclass
class TrainingSet:
    """Windows and targets of one kind of speech.

    Attributes:
        x: float32 [N, 80, 16] mel windows.
        shape: float32 [N, 2] z-scored (opening, width), NaN where there is no label (speech-only audio).
        visemes: float32 [N, 3] 1 / 0 per head, NaN where the phone is unknown.
    """

    x: np.ndarray
    shape: np.ndarray
    visemes: np.ndarray

    def __post_init__(self) -> None:
        n = len(self.x)
        if self.shape.shape != (n, SHAPE_COLUMNS) or self.visemes.shape != (n, len(VISEME_HEADS)):
            raise ValueError(f"targets {self.shape.shape} / {self.visemes.shape} do not fit {n} windows")


@dataclass
class Recipe:
    """How the ensemble is trained (the defaults are the shipped model's).

    Attributes:
        members: networks averaged.
        arch, hidden, dropout, channels: build_viseme_net's.
        steps: Adam steps per member.
        batch: windows per step, half from the clips and half from speech-only audio (all from the clips when there
            is none).
        lr, weight_decay: Adam's.
        level_jitter: a random level offset of up to +-this (normalised log-mel units; 0.5 = 12.5 dB) per window.
        pos_weight: positive weight of each viseme head's cross-entropy (closure, tuck, round).
        viseme_weight: the viseme loss's weight against the shape MSE.
        seed: first member's seed (member i: seed + i).
    """

    members: int = 12
    arch: str = "conv"
    hidden: int = 128
    dropout: float = 0.3
    channels: int = 64
    steps: int = 1500
    batch: int = 256
    lr: float = 1e-3
    weight_decay: float = 1e-3
    level_jitter: float = 0.5
    pos_weight: tuple[float, float, float] = (4.0, 4.0, 2.0)
    viseme_weight: float = 1.0
    seed: int = 0
    extra: dict = field(default_factory=dict)


def train_viseme(clips: TrainingSet, speech: TrainingSet | None, recipe: Recipe):
    """Train the ensemble on clip windows (both kinds of target) and speech-only windows (visemes only).

    Returns:
        the ensemble (eval mode).
    """
    import torch
    import torch.nn.functional as F

    ensemble = build_viseme_ensemble(recipe.members, recipe.arch, recipe.hidden, recipe.dropout, recipe.channels)
    sources = [clips] + ([speech] if speech is not None and len(speech.x) else [])
    tensors = [(torch.from_numpy(np.ascontiguousarray(s.x[:, None], np.float32)), torch.from_numpy(s.shape),
                torch.from_numpy(s.visemes)) for s in sources]
    share = [recipe.batch // len(sources)] * len(sources)
    share[0] += recipe.batch - sum(share)
    pos_weight = torch.tensor(recipe.pos_weight, dtype=torch.float32)
    for i, net in enumerate(ensemble.members):
        torch.manual_seed(recipe.seed + i)
        rng = np.random.default_rng(recipe.seed + i)
        opt = torch.optim.Adam(net.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
        net.train()
        for _ in range(recipe.steps):
            parts = [rng.integers(0, len(t[0]), n) for t, n in zip(tensors, share)]
            xb = torch.cat([t[0][torch.from_numpy(p)] for t, p in zip(tensors, parts)])
            yz = torch.cat([t[1][torch.from_numpy(p)] for t, p in zip(tensors, parts)])
            yv = torch.cat([t[2][torch.from_numpy(p)] for t, p in zip(tensors, parts)])
            if recipe.level_jitter:
                xb = xb + torch.empty(len(xb), 1, 1, 1).uniform_(-recipe.level_jitter, recipe.level_jitter)
            out = net(xb)
            z_ok = torch.isfinite(yz)
            v_ok = torch.isfinite(yv)
            loss = F.mse_loss(out[:, :SHAPE_COLUMNS][z_ok], yz[z_ok]) if z_ok.any() else out.sum() * 0
            if v_ok.any():
                weights = torch.where(yv > 0.5, pos_weight.expand_as(yv), torch.ones_like(yv))
                bce = F.binary_cross_entropy_with_logits(out[:, SHAPE_COLUMNS:][v_ok], yv[v_ok],
                                                         weight=weights[v_ok])
                loss = loss + recipe.viseme_weight * bce
            opt.zero_grad()
            loss.backward()
            opt.step()
        net.eval()
    return ensemble.eval()


def predict(net, x: np.ndarray, pos_weight=(1.0, 1.0, 1.0)) -> np.ndarray:
    """[N, 5] for windows x [N, 80, 16]: the two z-scores as the ensemble gives them (no gain) and the three
    probabilities (the positive weight's shift taken off)."""
    import torch

    with torch.no_grad():
        out = net(torch.from_numpy(np.ascontiguousarray(x[:, None], np.float32))).numpy().astype(np.float64)
    logits = out[:, SHAPE_COLUMNS:] - np.log(np.asarray(pos_weight, np.float64))
    return np.concatenate([out[:, :SHAPE_COLUMNS], 1.0 / (1.0 + np.exp(-logits))], axis=1)


def build_served(net, gains, pos_weight):
    """The serving graph: mel [B, 1, 80, 16] -> lip_shape [B, 5] (see the module docstring)."""
    import torch
    from torch import nn

    class LipShapeVisemes(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = net
            self.register_buffer("gains", torch.tensor(np.asarray(gains, np.float32).reshape(1, SHAPE_COLUMNS)))
            shift = -np.log(np.asarray(pos_weight, np.float32)).reshape(1, len(VISEME_HEADS))
            self.register_buffer("shift", torch.tensor(shift))

        def forward(self, mel):
            out = self.net(mel)
            z = (out[:, :SHAPE_COLUMNS] * self.gains).clamp(-CLAMP, CLAMP)
            return torch.cat([z, torch.sigmoid(out[:, SHAPE_COLUMNS:] + self.shift)], dim=1)

    return LipShapeVisemes().eval()


def export_viseme(net, out: Path, gains, pos_weight, recipe: Recipe, fp16_weights: bool = True,
                  check_mel: np.ndarray | None = None) -> Path:
    """Write the 5-column `lip_shape` ONNX (shape.export_served: float16 weights when they stay within 1e-3)."""
    from lipsync_models.training.shape import export_served

    gains = [float(g) for g in np.asarray(gains, np.float32).ravel()]
    description = (f"lipsync-lip-shape-visemes ({recipe.arch} ensemble x{recipe.members}, "
                   f"{count_parameters(net) / 1e6:.2f} M params, mel [B,1,80,16] -> lip_shape [B,5] = per-clip z of "
                   f"(opening 13-14/10-152, width 61-291/234-454) with gains {gains[0]:.2f}/{gains[1]:.2f} clamped "
                   f"to +-{CLAMP:g}, then P(closure p b m), P(tuck f v), P(round uw uh ow w oy))")
    return export_served(build_served(net.eval(), gains, pos_weight), out, description, fp16_weights,
                         check_mel=check_mel)


def save_viseme(net, path: Path, recipe: Recipe) -> None:
    """Write the ensemble with the recipe needed to rebuild it."""
    import dataclasses

    import torch

    torch.save({"kind": "viseme_ensemble", "recipe": dataclasses.asdict(recipe), "state_dict": net.state_dict()},
               path)


def load_viseme(path: Path):
    """(ensemble in eval mode, Recipe) written by save_viseme.

    Raises:
        ValueError: the file holds something else.
    """
    import torch

    saved = torch.load(path, map_location="cpu")
    if not isinstance(saved, dict) or saved.get("kind") != "viseme_ensemble":
        raise ValueError(f"{path} is not a viseme ensemble written by this training code")
    fields = dict(saved["recipe"])
    fields["pos_weight"] = tuple(fields["pos_weight"])
    recipe = Recipe(**fields)
    net = build_viseme_ensemble(recipe.members, recipe.arch, recipe.hidden, recipe.dropout, recipe.channels)
    net.load_state_dict(saved["state_dict"])
    return net.eval(), recipe

"""Explicit mouth opening: speech -> per-clip-normalised opening (MLP), opening -> the renderer's mouth code.

The audio model (a small ensemble of MLPs) regresses the Face Mesh opening of each training frame, z-scored
per clip so identity cannot be learned (docs/models-contract.md#sync-measure) and shifted by the clip's audio-video
offset so the mouth follows the sound it hears. A renderer trained on the true opening (opening_render.py) draws
the lower face for it. The served graph is render(face, clamp(gain * z_pred, -3, 3)).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lipsync_models.training.data import Clip


def zscore_labels(openings: np.ndarray) -> np.ndarray:
    """Per-clip z-score of a clip's openings (NaN where no face stays NaN)."""
    ok = np.isfinite(openings)
    out = np.full_like(openings, np.nan, dtype=np.float32)
    if ok.sum() > 1:
        out[ok] = (openings[ok] - openings[ok].mean()) / max(float(openings[ok].std()), 1e-6)
    return out


def mel_windows(clip: Clip) -> np.ndarray:
    """[N, 80, 16] mel windows of every frame of a clip."""
    return np.stack([clip.mel_window(i) for i in range(len(clip.window_starts))]).astype(np.float32)


def build_opening_net(hidden: int = 128, dropout: float = 0.3):
    """One-hidden-layer MLP: [B, 1, 80, 16] log-mel -> [B] normalised opening.

    The absolute level is kept (round 2 removed each window's mean): silence against speech is the
    strongest cue for a closed mouth, and recording levels are covered by level jitter in training.
    """
    from torch import nn

    class OpeningNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = nn.Sequential(nn.Flatten(), nn.Dropout(dropout / 2), nn.Linear(80 * 16, hidden), nn.ReLU(),
                                     nn.Dropout(dropout), nn.Linear(hidden, 1))

        def forward(self, mel):
            return self.net(mel)[:, 0]

    return OpeningNet()


def build_mean_ensemble(make_member, members: int):
    """The mean of `members` networks made by make_member() (each independently initialised)."""
    import torch
    from torch import nn

    class MeanEnsemble(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.members = nn.ModuleList(make_member() for _ in range(members))

        def forward(self, mel):
            return torch.stack([m(mel) for m in self.members]).mean(0)

    return MeanEnsemble()


def build_opening_ensemble(members: int = 4, hidden: int = 128, dropout: float = 0.3):
    """The mean of `members` opening MLPs (independently seeded): [B, 1, 80, 16] -> [B]."""
    return build_mean_ensemble(lambda: build_opening_net(hidden, dropout), members)


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson r of two 1-D series."""
    return float(np.corrcoef(a, b)[0, 1])


def lagged_r(opening: np.ndarray, envelope: np.ndarray, lag: int) -> float:
    """Pearson r of opening[k + lag] with envelope[k] over the frames both cover (NaN openings left out; 0 if flat)."""
    n = min(len(opening), len(envelope))
    m = opening[max(lag, 0): n + min(lag, 0)]
    e = envelope[max(-lag, 0): n - max(lag, 0)]
    ok = np.isfinite(m)
    if ok.sum() < 3 or np.std(m[ok]) == 0 or np.std(e[ok]) == 0:
        return 0.0
    return pearson(m[ok], e[ok])


def clip_offset(opening: np.ndarray, envelope: np.ndarray, max_offset: int) -> int:
    """A clip's audio-video offset: the lag in -max_offset..max_offset where its opening best follows its loudness.

    Positive: the mouth moves after the sound. Speakers open the mouth before the sound starts and some
    recordings are cut out of sync, so labels are shifted by this before training: the served mouth then
    moves with the sound it hears, not a few frames ahead of it.
    """
    lags = range(-max_offset, max_offset + 1)
    return max(lags, key=lambda lag: (lagged_r(opening, envelope, lag), -abs(lag)))


def aligned_frames(labels_ok: np.ndarray, offset: int) -> tuple[np.ndarray, np.ndarray]:
    """(window frame k, label frame k + offset) pairs where the label frame exists and is usable."""
    n = len(labels_ok)
    k = np.arange(max(-offset, 0), n - max(offset, 0))
    src = k + offset
    keep = labels_ok[src]
    return k[keep], src[keep]


def train_opening_net(x: np.ndarray, y: np.ndarray, steps: int = 3000, batch: int = 256, lr: float = 1e-3,
                      weight_decay: float = 1e-3, seed: int = 0, hidden: int = 128, dropout: float = 0.3,
                      level_jitter: float = 0.5, members: int = 4):
    """Fit the opening ensemble on windows x [N, 80, 16] and z-scored targets y [N] (MSE, Adam).

    Each member sees its own seed; every window gets a random level offset of up to +-level_jitter
    (normalised log-mel units, 0.5 = 12.5 dB) so the recording level is not learned.

    Returns:
        the trained ensemble (eval mode).
    """
    return fit_ensemble(build_opening_ensemble(members, hidden, dropout), x, y, steps, batch, lr, weight_decay,
                        seed, level_jitter)


def fit_ensemble(ensemble, x: np.ndarray, y: np.ndarray, steps: int, batch: int, lr: float, weight_decay: float,
                 seed: int, level_jitter: float):
    """Train each member of a mean ensemble on windows x [N, 80, 16] and targets y (MSE, Adam, its own seed),
    every sampled window shifted by a random level offset of up to +-level_jitter.

    Returns:
        the ensemble (eval mode).
    """
    import torch

    xt = torch.from_numpy(np.ascontiguousarray(x[:, None], np.float32))
    yt = torch.from_numpy(y.astype(np.float32))
    for i, net in enumerate(ensemble.members):
        torch.manual_seed(seed + i)
        rng = np.random.default_rng(seed + i)
        opt = torch.optim.Adam(net.parameters(), lr=lr, weight_decay=weight_decay)
        for _ in range(steps):
            idx = torch.from_numpy(rng.integers(0, len(x), batch))
            xb = xt[idx]
            if level_jitter:
                xb = xb + torch.empty(len(idx), 1, 1, 1).uniform_(-level_jitter, level_jitter)
            loss = torch.nn.functional.mse_loss(net(xb), yt[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return ensemble.eval()


def predict(net, x: np.ndarray) -> np.ndarray:
    """Predicted normalised openings for windows x [N, 80, 16]."""
    import torch

    with torch.no_grad():
        return net(torch.from_numpy(x[:, None])).numpy()


def save_ensemble(net, path: Path, kind: str, hidden: int, dropout: float) -> None:
    """Write an MLP ensemble with the sizes needed to rebuild it, tagged with its kind."""
    import torch

    torch.save({"kind": kind, "members": len(net.members), "hidden": hidden, "dropout": dropout,
                "state_dict": net.state_dict()}, path)


def load_ensemble(path: Path, kind: str, build, what: str):
    """The ensemble of `kind` written by save_ensemble, rebuilt with build(members, hidden, dropout) (eval mode).

    `what` names it in the error ("an opening ensemble").

    Raises:
        ValueError: the file holds something else.
    """
    import torch

    saved = torch.load(path, map_location="cpu")
    if not isinstance(saved, dict) or saved.get("kind") != kind:
        raise ValueError(f"{path} is not {what} written by this training code")
    net = build(saved["members"], saved["hidden"], saved["dropout"])
    net.load_state_dict(saved["state_dict"])
    return net.eval()


def save_opening(net, path: Path, hidden: int, dropout: float) -> None:
    """Write an opening ensemble (see save_ensemble)."""
    save_ensemble(net, path, "opening_ensemble", hidden, dropout)


def load_opening(path: Path):
    """The opening ensemble written by save_opening (eval mode)."""
    return load_ensemble(path, "opening_ensemble", build_opening_ensemble, "an opening ensemble")


def build_served(generator, opening_net, mean_code: np.ndarray, direction: np.ndarray, gain: float):
    """The serving graph: face [B,6,S,S], mel [B,1,80,16] -> output [B,3,S,S]."""
    import torch
    from torch import nn

    class OpeningWarp(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.generator = generator
            self.opening = opening_net
            self.register_buffer("mean_code", torch.tensor(mean_code, dtype=torch.float32)[None])
            self.register_buffer("direction", torch.tensor(direction * gain, dtype=torch.float32)[None])

        def forward(self, face, mel):
            z = self.opening(mel)[:, None]
            return self.generator.render(face, (self.mean_code + z * self.direction).clamp(-3.0, 3.0))

    return OpeningWarp().eval()


def load_labels(path: Path) -> dict[str, np.ndarray]:
    """Labels written by mouth_labels.py: clip name -> raw openings."""
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


def export_served(renderer_path: Path, opening_path: Path, out: Path, gain: float = 1.0) -> Path:
    """Write the serving ONNX: the speech MLP's opening drives the 1-number-code renderer.

    Args:
        renderer_path: renderer.pt written by opening_render.finetune (code_dim 1).
        opening_path: the speech ensemble written by save_opening.
        out: the .onnx path.
        gain: served articulation gain on the predicted opening (the MLP's predictions are shrunk towards 0).

    Returns:
        out.
    """
    from lipsync_models.export import export_onnx
    from lipsync_models.training.export import load_generator
    from lipsync_models.training.warpnet import count_parameters

    renderer = load_generator(renderer_path)
    if renderer.config.code_dim != 1:
        raise ValueError(f"{renderer_path} has a {renderer.config.code_dim}-number code; expected the 1-number "
                         "opening renderer of opening_render.finetune")
    net = load_opening(opening_path)
    served = build_served(renderer, net, np.zeros(1, np.float32), np.ones(1, np.float32), gain)
    params = count_parameters(renderer) - count_parameters(renderer.audio) + count_parameters(net)
    description = (f"lipsync-opening-warp-s{renderer.config.face_size} ({params / 1e6:.2f} M params, speech MLP "
                   f"ensemble x{len(net.members)} -> "
                   f"mouth opening -> warp renderer, opening gain {gain:.2f}, trained weights)")
    # float16 storage keeps the shipped file small (the repository holds it); computation stays float32.
    return export_onnx(served, out, renderer.config.face_size, description=description, fp16_weights=True)
